//! Convolution + BatchNorm (+ activation), the unit both backbones are built from.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

/// Activation after a [`ConvBn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// None (projection convolutions).
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (MobileNetV2).
    Relu6,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Identity => x,
            Self::Relu => burn::tensor::activation::relu(x),
            Self::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// A bias-free convolution followed by BatchNorm (eps 1e-5, as torchvision) and an activation.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution (no bias: the BatchNorm shift replaces it).
    pub conv: Conv2d,
    /// BatchNorm; in eval mode (non-autodiff device) it uses the running statistics.
    pub bn: BatchNorm,
    #[module(skip)]
    activation: Activation,
}

impl ConvBn {
    /// `in_ch -> out_ch` with a square `kernel`, `stride`, `groups` and padding `(kernel-1)/2`.
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        activation: Activation,
        device: &Device,
    ) -> Self {
        let pad = (kernel - 1) / 2;
        Self {
            conv: Conv2dConfig::new([in_ch, out_ch], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_groups(groups)
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(out_ch).init(device),
            activation,
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.activation.apply(self.bn.forward(self.conv.forward(x)))
    }
}

/// Global average pooling `[B, C, H, W] -> [B, C]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([b, c])
}
