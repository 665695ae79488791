//! ViT-style patch embedding (Dosovitskiy et al., 2021) for detector-free, ViLT-style inputs:
//! non-overlapping patches projected by a strided convolution, a learned `[CLS]` token and
//! learned position embeddings.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Distribution, Tensor};

/// Patch embedding for `image_size` x `image_size` inputs.
#[derive(Module, Debug)]
pub struct PatchEmbedding {
    /// `patch x patch` convolution with stride `patch` (one output per patch).
    pub projection: Conv2d,
    /// The `[CLS]` token `[1, 1, dim]`.
    pub cls_token: Param<Tensor<3>>,
    /// Learned positions `[1, 1 + patches, dim]`.
    pub position_embeddings: Param<Tensor<3>>,
}

impl PatchEmbedding {
    /// `dim`-wide tokens for square images of `image_size` split into `patch` x `patch` patches.
    ///
    /// # Panics
    /// If `image_size` is not a multiple of `patch`.
    pub fn new(image_size: usize, patch: usize, dim: usize, device: &Device) -> Self {
        assert!(
            image_size.is_multiple_of(patch),
            "image size must be a multiple of the patch size"
        );
        let n = (image_size / patch).pow(2);
        let init = Distribution::Normal(0.0, 0.02);
        Self {
            projection: Conv2dConfig::new([3, dim], [patch, patch])
                .with_stride([patch, patch])
                .init(device),
            cls_token: Param::from_tensor(Tensor::random([1, 1, dim], init, device)),
            position_embeddings: Param::from_tensor(Tensor::random([1, n + 1, dim], init, device)),
        }
    }

    /// Tokens `[B, 1 + patches, dim]` for pixels `[B, 3, image_size, image_size]`; token 0 is
    /// `[CLS]`, patches follow in row-major order.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let x = self.projection.forward(pixels);
        let [b, d, h, w] = x.dims();
        let patches = x.reshape([b, d, h * w]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([b, 1, d]);
        Tensor::cat(vec![cls, patches], 1) + self.position_embeddings.val()
    }
}
