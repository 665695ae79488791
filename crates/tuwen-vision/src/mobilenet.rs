//! MobileNetV2 (Sandler et al., 2018) in torchvision's layout, loading torchvision checkpoints
//! (the ImageNet one comes with `cargo xtask assets`, asset `mobilenet_v2`).
//!
//! ```no_run
//! use burn::tensor::{Device, Tensor};
//! use tuwen_vision::mobilenet::MobileNetV2;
//! let device = Device::default();
//! let model = MobileNetV2::from_torchvision("mobilenet_v2.safetensors", 1000, &device).unwrap();
//! let logits = model.forward(Tensor::zeros([1, 3, 224, 224], &device));
//! assert_eq!(logits.dims(), [1, 1000]);
//! ```

use std::path::Path;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use tuwen_weights::LoadError;

use crate::FeatureMap;
use crate::layers::{Activation, ConvBn, global_avg_pool};

/// torchvision's inverted-residual settings: (expansion t, output channels c, repeats n, stride s).
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Channels of the last feature map.
pub const FEATURE_CHANNELS: usize = 1280;

/// One inverted residual block: 1x1 expansion (absent when t = 1), 3x3 depthwise, 1x1 linear
/// projection, residual when the shape is kept.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    /// 1x1 expansion + BN + ReLU6 (torchvision `conv.0` when t > 1).
    pub expand: Option<ConvBn>,
    /// 3x3 depthwise + BN + ReLU6.
    pub depthwise: ConvBn,
    /// 1x1 projection + BN, no activation.
    pub project: ConvBn,
    #[module(skip)]
    residual: bool,
}

impl InvertedResidual {
    fn new(inp: usize, out: usize, stride: usize, t: usize, device: &Device) -> Self {
        let hidden = inp * t;
        Self {
            expand: (t != 1).then(|| ConvBn::new(inp, hidden, 1, 1, 1, Activation::Relu6, device)),
            depthwise: ConvBn::new(hidden, hidden, 3, stride, hidden, Activation::Relu6, device),
            project: ConvBn::new(hidden, out, 1, 1, 1, Activation::Identity, device),
            residual: stride == 1 && inp == out,
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = x.clone();
        if let Some(expand) = &self.expand {
            h = expand.forward(h);
        }
        let h = self.project.forward(self.depthwise.forward(h));
        if self.residual { h + x } else { h }
    }
}

/// MobileNetV2 with width multiplier 1.0.
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    /// 3x3 stride-2 stem (torchvision `features.0`).
    pub stem: ConvBn,
    /// The 17 inverted residual blocks (`features.1` .. `features.17`).
    pub blocks: Vec<InvertedResidual>,
    /// 1x1 conv to 1280 channels (`features.18`).
    pub head: ConvBn,
    /// Dropout before the classifier (`classifier.0`).
    pub dropout: Dropout,
    /// Linear classifier (`classifier.1`).
    pub classifier: Linear,
}

impl MobileNetV2 {
    /// A randomly initialised network with `num_classes` outputs.
    pub fn new(num_classes: usize, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut inp = 32;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                blocks.push(InvertedResidual::new(
                    inp,
                    c,
                    if i == 0 { s } else { 1 },
                    t,
                    device,
                ));
                inp = c;
            }
        }
        Self {
            stem: ConvBn::new(3, 32, 3, 2, 1, Activation::Relu6, device),
            blocks,
            head: ConvBn::new(inp, FEATURE_CHANNELS, 1, 1, 1, Activation::Relu6, device),
            dropout: DropoutConfig::new(0.2).init(),
            classifier: LinearConfig::new(FEATURE_CHANNELS, num_classes).init(device),
        }
    }

    /// The last feature map `[B, 1280, H/32, W/32]` (stride 32), the input of region pooling.
    pub fn features(&self, pixels: Tensor<4>) -> FeatureMap {
        let mut x = self.stem.forward(pixels);
        for block in &self.blocks {
            x = block.forward(x);
        }
        FeatureMap {
            tensor: self.head.forward(x),
            stride: 32,
        }
    }

    /// Class logits `[B, num_classes]` for normalised pixels `[B, 3, H, W]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.classify(self.features(pixels).tensor)
    }

    /// Logits from a feature map (global average pool + classifier).
    pub fn classify(&self, features: Tensor<4>) -> Tensor<2> {
        self.classifier
            .forward(self.dropout.forward(global_avg_pool(features)))
    }

    /// Builds the network and loads a torchvision `mobilenet_v2` state dict (safetensors).
    pub fn from_torchvision(
        path: impl AsRef<Path>,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let model = Self::new(num_classes, device);
        let expands: Vec<bool> = model.blocks.iter().map(|b| b.expand.is_some()).collect();
        tuwen_weights::load_renamed(model, path.as_ref(), "torchvision.mobilenet_v2", |key| {
            torchvision_key(key, &expands)
        })
    }
}

/// torchvision `mobilenet_v2` key -> tuwen key (the weight mapping of this model, in one place).
/// `None` for `num_batches_tracked` counters, which inference does not use.
fn torchvision_key(key: &str, expands: &[bool]) -> Option<String> {
    if key.ends_with("num_batches_tracked") {
        return None;
    }
    let conv_bn = |part: &str| match part {
        "0" => Some("conv"),
        "1" => Some("bn"),
        _ => None,
    };
    let parts: Vec<&str> = key.split('.').collect();
    let renamed = match parts.as_slice() {
        ["classifier", "1", rest @ ..] => format!("classifier.{}", rest.join(".")),
        ["features", n, cb, rest @ ..] if conv_bn(cb).is_some() => {
            let n: usize = n.parse().ok()?;
            let stage = if n == 0 {
                "stem"
            } else if n == expands.len() + 1 {
                "head"
            } else {
                return Some(key.to_string());
            };
            format!("{stage}.{}.{}", conv_bn(cb)?, rest.join("."))
        }
        ["features", n, "conv", rest @ ..] => {
            let n: usize = n.parse().ok()?;
            let Some((block, &expand)) = n.checked_sub(1).and_then(|b| Some((b, expands.get(b)?)))
            else {
                return Some(key.to_string());
            };
            // With expansion: conv.0 expand, conv.1 depthwise, conv.2 project conv, conv.3 BN.
            // Without: conv.0 depthwise, conv.1 project conv, conv.2 BN.
            let (unit, tail): (&str, Vec<&str>) = match (expand, rest) {
                (true, ["0", cb, t @ ..]) => (
                    "expand",
                    [conv_bn(cb)?]
                        .into_iter()
                        .chain(t.iter().copied())
                        .collect(),
                ),
                (true, ["1", cb, t @ ..]) | (false, ["0", cb, t @ ..]) => (
                    "depthwise",
                    [conv_bn(cb)?]
                        .into_iter()
                        .chain(t.iter().copied())
                        .collect(),
                ),
                (true, ["2", t @ ..]) | (false, ["1", t @ ..]) => (
                    "project",
                    ["conv"].into_iter().chain(t.iter().copied()).collect(),
                ),
                (true, ["3", t @ ..]) | (false, ["2", t @ ..]) => (
                    "project",
                    ["bn"].into_iter().chain(t.iter().copied()).collect(),
                ),
                _ => return Some(key.to_string()),
            };
            format!("blocks.{block}.{unit}.{}", tail.join("."))
        }
        _ => key.to_string(),
    };
    Some(renamed)
}

#[cfg(test)]
mod tests {
    use super::torchvision_key;

    #[test]
    fn torchvision_keys_map_onto_stages() {
        let expands = [false, true, true];
        let map = |k| torchvision_key(k, &expands).unwrap();
        assert_eq!(map("features.0.0.weight"), "stem.conv.weight");
        assert_eq!(map("features.0.1.running_var"), "stem.bn.running_var");
        assert_eq!(
            map("features.1.conv.0.0.weight"),
            "blocks.0.depthwise.conv.weight"
        );
        assert_eq!(
            map("features.1.conv.1.weight"),
            "blocks.0.project.conv.weight"
        );
        assert_eq!(map("features.1.conv.2.bias"), "blocks.0.project.bn.bias");
        assert_eq!(
            map("features.2.conv.0.1.weight"),
            "blocks.1.expand.bn.weight"
        );
        assert_eq!(
            map("features.3.conv.1.0.weight"),
            "blocks.2.depthwise.conv.weight"
        );
        assert_eq!(
            map("features.3.conv.2.weight"),
            "blocks.2.project.conv.weight"
        );
        assert_eq!(
            map("features.3.conv.3.running_mean"),
            "blocks.2.project.bn.running_mean"
        );
        assert_eq!(map("features.4.0.weight"), "head.conv.weight");
        assert_eq!(map("classifier.1.weight"), "classifier.weight");
        assert_eq!(
            torchvision_key("features.0.1.num_batches_tracked", &expands),
            None
        );
        // Unknown keys pass through unchanged, so the strict loader reports them as unused.
        assert_eq!(
            map("features.9.conv.0.0.weight"),
            "features.9.conv.0.0.weight"
        );
    }
}
