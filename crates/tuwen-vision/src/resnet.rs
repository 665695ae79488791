//! ResNet-18/34/50/101 (He et al., 2016) in torchvision's layout (v1.5: the stride of a
//! bottleneck sits on its 3x3 convolution). Loads any torchvision ResNet state dict a user supplies
//! (converted to safetensors).
//!
//! ```no_run
//! use burn::tensor::{Device, Tensor};
//! use tuwen_vision::resnet::{ResNet, ResNetDepth};
//! let device = Device::default();
//! let model = ResNet::from_torchvision(ResNetDepth::R50, "resnet50.safetensors", 1000, &device).unwrap();
//! let maps = model.stages(Tensor::zeros([1, 3, 224, 224], &device));
//! assert_eq!(maps[3].tensor.dims(), [1, 2048, 7, 7]);
//! ```

use std::path::Path;

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use tuwen_weights::LoadError;

use crate::FeatureMap;
use crate::layers::{Activation, ConvBn, global_avg_pool};

/// The supported depths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResNetDepth {
    /// BasicBlock x [2, 2, 2, 2].
    R18,
    /// BasicBlock x [3, 4, 6, 3].
    R34,
    /// Bottleneck x [3, 4, 6, 3].
    R50,
    /// Bottleneck x [3, 4, 23, 3].
    R101,
}

impl ResNetDepth {
    fn blocks(self) -> [usize; 4] {
        match self {
            Self::R18 => [2, 2, 2, 2],
            Self::R34 | Self::R50 => [3, 4, 6, 3],
            Self::R101 => [3, 4, 23, 3],
        }
    }

    fn bottleneck(self) -> bool {
        matches!(self, Self::R50 | Self::R101)
    }

    /// Channels of the last stage (512 or 2048).
    pub fn feature_channels(self) -> usize {
        if self.bottleneck() { 2048 } else { 512 }
    }

    /// Parses `resnet18` .. `resnet101` (also `torchvision.resnet50` and bare `50`).
    pub fn parse(name: &str) -> Option<Self> {
        let name = name
            .trim_start_matches("torchvision.")
            .trim_start_matches("resnet");
        match name {
            "18" => Some(Self::R18),
            "34" => Some(Self::R34),
            "50" => Some(Self::R50),
            "101" => Some(Self::R101),
            _ => None,
        }
    }
}

/// A BasicBlock (two 3x3 units) or Bottleneck (1x1, 3x3, 1x1 x4) with optional projection
/// shortcut; ReLU after the residual sum.
#[derive(Module, Debug)]
pub struct ResidualBlock {
    /// First unit (torchvision `conv1`/`bn1`).
    pub unit1: ConvBn,
    /// Second unit (`conv2`/`bn2`).
    pub unit2: ConvBn,
    /// Third unit of a bottleneck (`conv3`/`bn3`).
    pub unit3: Option<ConvBn>,
    /// Projection shortcut (`downsample.0`/`downsample.1`).
    pub downsample: Option<ConvBn>,
}

impl ResidualBlock {
    fn new(inp: usize, planes: usize, stride: usize, bottleneck: bool, device: &Device) -> Self {
        let (units, out) = if bottleneck {
            let out = planes * 4;
            (
                (
                    ConvBn::new(inp, planes, 1, 1, 1, Activation::Relu, device),
                    ConvBn::new(planes, planes, 3, stride, 1, Activation::Relu, device),
                    Some(ConvBn::new(
                        planes,
                        out,
                        1,
                        1,
                        1,
                        Activation::Identity,
                        device,
                    )),
                ),
                out,
            )
        } else {
            (
                (
                    ConvBn::new(inp, planes, 3, stride, 1, Activation::Relu, device),
                    ConvBn::new(planes, planes, 3, 1, 1, Activation::Identity, device),
                    None,
                ),
                planes,
            )
        };
        Self {
            unit1: units.0,
            unit2: units.1,
            unit3: units.2,
            downsample: (stride != 1 || inp != out)
                .then(|| ConvBn::new(inp, out, 1, stride, 1, Activation::Identity, device)),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.unit2.forward(self.unit1.forward(x.clone()));
        if let Some(unit3) = &self.unit3 {
            h = unit3.forward(h);
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x),
            None => x,
        };
        burn::tensor::activation::relu(h + shortcut)
    }
}

/// A torchvision ResNet.
#[derive(Module, Debug)]
pub struct ResNet {
    /// 7x7 stride-2 conv + BN + ReLU (`conv1`/`bn1`).
    pub stem: ConvBn,
    /// 3x3 stride-2 max pool.
    pub maxpool: MaxPool2d,
    /// Stage 1 (stride 4).
    pub layer1: Vec<ResidualBlock>,
    /// Stage 2 (stride 8).
    pub layer2: Vec<ResidualBlock>,
    /// Stage 3 (stride 16).
    pub layer3: Vec<ResidualBlock>,
    /// Stage 4 (stride 32).
    pub layer4: Vec<ResidualBlock>,
    /// Classifier.
    pub fc: Linear,
}

impl ResNet {
    /// A randomly initialised network.
    pub fn new(depth: ResNetDepth, num_classes: usize, device: &Device) -> Self {
        let bottleneck = depth.bottleneck();
        let expansion = if bottleneck { 4 } else { 1 };
        let mut inp = 64;
        let mut stage = |planes: usize, n: usize, stride: usize| {
            (0..n)
                .map(|i| {
                    let block = ResidualBlock::new(
                        inp,
                        planes,
                        if i == 0 { stride } else { 1 },
                        bottleneck,
                        device,
                    );
                    inp = planes * expansion;
                    block
                })
                .collect::<Vec<_>>()
        };
        let [n1, n2, n3, n4] = depth.blocks();
        let (layer1, layer2, layer3, layer4) = (
            stage(64, n1, 1),
            stage(128, n2, 2),
            stage(256, n3, 2),
            stage(512, n4, 2),
        );
        Self {
            stem: ConvBn::new(3, 64, 7, 2, 1, Activation::Relu, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: LinearConfig::new(512 * expansion, num_classes).init(device),
        }
    }

    /// The four stage outputs (strides 4, 8, 16, 32) for normalised pixels `[B, 3, H, W]`.
    pub fn stages(&self, pixels: Tensor<4>) -> Vec<FeatureMap> {
        let mut x = self.maxpool.forward(self.stem.forward(pixels));
        let mut out = Vec::with_capacity(4);
        for (layer, stride) in [
            (&self.layer1, 4),
            (&self.layer2, 8),
            (&self.layer3, 16),
            (&self.layer4, 32),
        ] {
            for block in layer {
                x = block.forward(x);
            }
            out.push(FeatureMap {
                tensor: x.clone(),
                stride,
            });
        }
        out
    }

    /// The last feature map (stride 32).
    pub fn features(&self, pixels: Tensor<4>) -> FeatureMap {
        self.stages(pixels).pop().expect("four stages")
    }

    /// Class logits `[B, num_classes]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.classify(self.features(pixels).tensor)
    }

    /// Logits from the last feature map.
    pub fn classify(&self, features: Tensor<4>) -> Tensor<2> {
        self.fc.forward(global_avg_pool(features))
    }

    /// Builds the network and loads a torchvision ResNet state dict (safetensors).
    pub fn from_torchvision(
        depth: ResNetDepth,
        path: impl AsRef<Path>,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self, LoadError> {
        tuwen_weights::load_renamed(
            Self::new(depth, num_classes, device),
            path.as_ref(),
            "torchvision.resnet",
            torchvision_key,
        )
    }
}

/// torchvision ResNet key -> tuwen key (the weight mapping of this model, in one place).
fn torchvision_key(key: &str) -> Option<String> {
    if key.ends_with("num_batches_tracked") {
        return None;
    }
    let parts: Vec<&str> = key.split('.').collect();
    let unit = |name: &str| -> Option<String> {
        let (kind, n) = name.split_at(name.len().checked_sub(1)?);
        match kind {
            "conv" => Some(format!("unit{n}.conv")),
            "bn" => Some(format!("unit{n}.bn")),
            _ => None,
        }
    };
    let renamed = match parts.as_slice() {
        ["conv1", rest @ ..] => format!("stem.conv.{}", rest.join(".")),
        ["bn1", rest @ ..] => format!("stem.bn.{}", rest.join(".")),
        [layer, i, "downsample", "0", rest @ ..] => {
            format!("{layer}.{i}.downsample.conv.{}", rest.join("."))
        }
        [layer, i, "downsample", "1", rest @ ..] => {
            format!("{layer}.{i}.downsample.bn.{}", rest.join("."))
        }
        [layer, i, name, rest @ ..] if layer.starts_with("layer") => match unit(name) {
            Some(u) => format!("{layer}.{i}.{u}.{}", rest.join(".")),
            None => key.to_string(),
        },
        _ => key.to_string(),
    };
    Some(renamed)
}

#[cfg(test)]
mod tests {
    use super::torchvision_key;

    #[test]
    fn torchvision_keys_map_onto_units() {
        let map = |k| torchvision_key(k).unwrap();
        assert_eq!(map("conv1.weight"), "stem.conv.weight");
        assert_eq!(map("bn1.running_mean"), "stem.bn.running_mean");
        assert_eq!(map("layer1.0.conv2.weight"), "layer1.0.unit2.conv.weight");
        assert_eq!(map("layer3.5.bn3.bias"), "layer3.5.unit3.bn.bias");
        assert_eq!(
            map("layer2.0.downsample.0.weight"),
            "layer2.0.downsample.conv.weight"
        );
        assert_eq!(
            map("layer2.0.downsample.1.running_var"),
            "layer2.0.downsample.bn.running_var"
        );
        assert_eq!(map("fc.weight"), "fc.weight");
        assert_eq!(torchvision_key("layer1.0.bn1.num_batches_tracked"), None);
    }
}
