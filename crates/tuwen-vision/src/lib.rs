//! Vision backbones for tuwen: from pixels to feature maps and class scores.
//!
//! * [`preprocess`] — decoding (JPEG/PNG, always RGB) and the torchvision ImageNet recipe;
//! * [`mobilenet`] — MobileNetV2, torchvision layout, real ImageNet weights via the assets;
//! * [`resnet`] — ResNet-18/34/50/101, torchvision layout, any torchvision state dict;
//! * [`patch`] — a ViT-style patch embedding for detector-free (ViLT-style) inputs;
//! * [`Backbone`] — one interface over the CNNs: feature map (stride and channels known) for
//!   region pooling, and classification.
//!
//! Every model is backend-free (`&Device`) and evaluates BatchNorm with its running statistics on
//! non-autodiff devices.

pub mod layers;
pub mod mobilenet;
pub mod patch;
pub mod preprocess;
pub mod resnet;

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
pub use preprocess::{
    ImageError, MAX_DECODE_BYTES, MAX_IMAGE_SIDE, Normalization, Preprocess, decode_rgb,
    image_dimensions, load_rgb,
};
pub use tuwen_weights::LoadError;

use crate::mobilenet::MobileNetV2;
use crate::resnet::{ResNet, ResNetDepth};

/// A backbone feature map with its geometry.
#[derive(Clone, Debug)]
pub struct FeatureMap {
    /// `[B, C, H / stride, W / stride]`.
    pub tensor: Tensor<4>,
    /// Input pixels per feature cell (the RoIAlign `spatial_scale` is `1 / stride`).
    pub stride: usize,
}

impl FeatureMap {
    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.tensor.dims()[1]
    }
}

/// The 1,000 ImageNet class names in torchvision's index order.
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("imagenet_classes.txt").lines().collect()
}

/// The `k` most probable classes of each row of `logits` `[B, classes]`: `(index, probability)`.
pub fn top_k(logits: Tensor<2>, k: usize) -> Vec<Vec<(usize, f32)>> {
    let [batch, classes] = logits.dims();
    let probs: Vec<f32> =
        tuwen_weights::host::computed(softmax(logits, 1).into_data(), "class probabilities");
    (0..batch)
        .map(|b| {
            let row = &probs[b * classes..(b + 1) * classes];
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
            order.into_iter().take(k).map(|i| (i, row[i])).collect()
        })
        .collect()
}

/// The CNN backbones behind one interface.
#[derive(Debug)]
pub enum Backbone {
    /// MobileNetV2 (1280 channels, stride 32).
    MobileNetV2(Box<MobileNetV2>),
    /// A ResNet (512 or 2048 channels, stride 32).
    ResNet(Box<ResNet>),
}

impl Backbone {
    /// Loads a torchvision checkpoint for `name`: `mobilenet_v2`, `resnet18`, `resnet34`,
    /// `resnet50`, `resnet101` (optionally prefixed `torchvision.`).
    pub fn from_torchvision(
        name: &str,
        path: impl AsRef<Path>,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let unknown = || LoadError::Config {
            path: path.as_ref().to_path_buf(),
            reason: format!(
                "unknown backbone {name:?} (mobilenet_v2, resnet18, resnet34, resnet50, resnet101)"
            ),
        };
        match name.trim_start_matches("torchvision.") {
            "mobilenet_v2" => Ok(Self::MobileNetV2(Box::new(MobileNetV2::from_torchvision(
                path,
                num_classes,
                device,
            )?))),
            other => {
                let depth = ResNetDepth::parse(other).ok_or_else(unknown)?;
                Ok(Self::ResNet(Box::new(ResNet::from_torchvision(
                    depth,
                    path,
                    num_classes,
                    device,
                )?)))
            }
        }
    }

    /// The last feature map (stride 32).
    pub fn features(&self, pixels: Tensor<4>) -> FeatureMap {
        match self {
            Self::MobileNetV2(m) => m.features(pixels),
            Self::ResNet(m) => m.features(pixels),
        }
    }

    /// Class logits from a feature map produced by [`Backbone::features`].
    pub fn classify(&self, features: Tensor<4>) -> Tensor<2> {
        match self {
            Self::MobileNetV2(m) => m.classify(features),
            Self::ResNet(m) => m.classify(features),
        }
    }

    /// Class logits `[B, classes]` for normalised pixels.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.classify(self.features(pixels).tensor)
    }
}
