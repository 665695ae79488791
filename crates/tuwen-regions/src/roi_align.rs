//! RoIAlign (He et al., 2017) matching `torchvision.ops.roi_align`, differentiable with respect
//! to the feature map, on any Burn backend.
//!
//! Burn has no RoIAlign. Written here as: for each image, the sampling points and bilinear weights
//! of all its boxes are computed on the host (boxes are data, not parameters) into one
//! interpolation matrix `M` of shape `[boxes * out_h * out_w, H * W]`; the pooled features are then
//! `M @ X` with `X` the image's feature map as `[H * W, C]`. A matmul is exact (same products and
//! sums as the reference), runs on every backend, and its gradient flows to `X`.
//!
//! Sampling follows torchvision exactly: `aligned` shifts box corners by -0.5 pixel and allows
//! boxes smaller than one cell; `sampling_ratio <= 0` picks `ceil(box / bin)` points per bin
//! (adaptive); points outside `[-1, H] x [-1, W]` contribute zero; points inside are clamped to
//! the map.

use burn::tensor::{Device, Tensor, TensorData};

/// Errors of RoIAlign inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoiAlignError {
    /// `boxes` is not `[K, 5]`.
    #[error("boxes must be [K, 5] (batch_index, x1, y1, x2, y2), got {0:?}")]
    BoxShape(Vec<usize>),
    /// A batch index is outside the feature batch.
    #[error("box {index} has batch index {batch} but the feature map holds {images} images")]
    BatchIndex {
        /// The box.
        index: usize,
        /// Its batch index.
        batch: f32,
        /// Images in the feature map.
        images: usize,
    },
    /// A box coordinate is NaN or infinite.
    #[error("box {0} has a non-finite coordinate")]
    NonFinite(usize),
    /// The boxes' values cannot be read (a dtype without an f32 reading).
    #[error("boxes: {0}")]
    Read(#[from] tuwen_weights::host::ReadBackError),
}

/// RoIAlign parameters, as `torchvision.ops.roi_align`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiAlign {
    /// Output `[height, width]` per box.
    pub output_size: [usize; 2],
    /// Feature cells per input pixel (`1 / stride`).
    pub spatial_scale: f32,
    /// Sampling points per bin side; `<= 0` for adaptive (`ceil(box / bin)`).
    pub sampling_ratio: i32,
    /// Half-pixel-corrected coordinates (Detectron2 `ROIAlignV2`).
    pub aligned: bool,
}

impl RoiAlign {
    /// Pools `features` `[N, C, H, W]` over `boxes` `[K, 5]` rows `(batch_index, x1, y1, x2, y2)`
    /// in input-pixel coordinates. Returns `[K, C, out_h, out_w]`.
    pub fn forward(
        &self,
        features: Tensor<4>,
        boxes: Tensor<2>,
    ) -> Result<Tensor<4>, RoiAlignError> {
        let dims = boxes.dims();
        if dims[1] != 5 {
            return Err(RoiAlignError::BoxShape(dims.to_vec()));
        }
        let rows: Vec<f32> = tuwen_weights::host::values(boxes.into_data(), "boxes")?;
        let rows: Vec<[f32; 5]> = rows
            .chunks_exact(5)
            .map(|r| [r[0], r[1], r[2], r[3], r[4]])
            .collect();
        self.forward_boxes(features, &rows)
    }

    /// [`RoiAlign::forward`] with boxes already on the host.
    pub fn forward_boxes(
        &self,
        features: Tensor<4>,
        boxes: &[[f32; 5]],
    ) -> Result<Tensor<4>, RoiAlignError> {
        let [images, channels, height, width] = features.dims();
        let [out_h, out_w] = self.output_size;
        let device = features.device();
        for (index, b) in boxes.iter().enumerate() {
            if b.iter().any(|v| !v.is_finite()) {
                return Err(RoiAlignError::NonFinite(index));
            }
            if b[0] < 0.0 || b[0] as usize >= images || b[0].fract() != 0.0 {
                return Err(RoiAlignError::BatchIndex {
                    index,
                    batch: b[0],
                    images,
                });
            }
        }
        if boxes.is_empty() {
            return Ok(Tensor::zeros([0, channels, out_h, out_w], &device));
        }
        let bins = out_h * out_w;
        let mut pooled: Vec<Option<Tensor<2>>> = vec![None; boxes.len()];
        for image in 0..images {
            let members: Vec<usize> = (0..boxes.len())
                .filter(|&k| boxes[k][0] as usize == image)
                .collect();
            if members.is_empty() {
                continue;
            }
            let matrix = self.interpolation_matrix(
                members.iter().map(|&k| &boxes[k]),
                height,
                width,
                &device,
            );
            let x = features
                .clone()
                .narrow(0, image, 1)
                .reshape([channels, height * width])
                .swap_dims(0, 1);
            let out = matrix.matmul(x); // [members * bins, C]
            for (slot, &k) in members.iter().enumerate() {
                pooled[k] = Some(out.clone().narrow(0, slot * bins, bins));
            }
        }
        let rows: Vec<Tensor<2>> = pooled
            .into_iter()
            .map(|p| p.expect("every box pooled"))
            .collect();
        Ok(Tensor::cat(rows, 0)
            .reshape([boxes.len(), out_h, out_w, channels])
            .permute([0, 3, 1, 2]))
    }

    /// `[boxes * out_h * out_w, H * W]` bilinear sampling weights, averaged over each bin.
    fn interpolation_matrix<'a>(
        &self,
        boxes: impl ExactSizeIterator<Item = &'a [f32; 5]>,
        height: usize,
        width: usize,
        device: &Device,
    ) -> Tensor<2> {
        let [out_h, out_w] = self.output_size;
        let n = boxes.len();
        let cols = height * width;
        let mut m = vec![0.0f32; n * out_h * out_w * cols];
        let offset = if self.aligned { 0.5 } else { 0.0 };
        for (slot, b) in boxes.enumerate() {
            let start_w = b[1] * self.spatial_scale - offset;
            let start_h = b[2] * self.spatial_scale - offset;
            let mut roi_w = b[3] * self.spatial_scale - offset - start_w;
            let mut roi_h = b[4] * self.spatial_scale - offset - start_h;
            if !self.aligned {
                roi_w = roi_w.max(1.0);
                roi_h = roi_h.max(1.0);
            }
            let bin_h = roi_h / out_h as f32;
            let bin_w = roi_w / out_w as f32;
            let (grid_h, grid_w) = if self.sampling_ratio > 0 {
                (self.sampling_ratio as usize, self.sampling_ratio as usize)
            } else {
                (
                    (roi_h / out_h as f32).ceil().max(0.0) as usize,
                    (roi_w / out_w as f32).ceil().max(0.0) as usize,
                )
            };
            let count = (grid_h * grid_w).max(1) as f32;
            for ph in 0..out_h {
                for pw in 0..out_w {
                    let row = ((slot * out_h + ph) * out_w + pw) * cols;
                    for iy in 0..grid_h {
                        let y =
                            start_h + ph as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                        for ix in 0..grid_w {
                            let x = start_w
                                + pw as f32 * bin_w
                                + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                            for (cell, weight) in bilinear(y, x, height, width) {
                                m[row + cell] += weight / count;
                            }
                        }
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(m, [n * out_h * out_w, cols]), device)
    }
}

/// torchvision's `bilinear_interpolate`: up to four `(cell index, weight)` pairs, none when the
/// point is more than one cell outside the map.
fn bilinear(y: f32, x: f32, height: usize, width: usize) -> Vec<(usize, f32)> {
    if y < -1.0 || y > height as f32 || x < -1.0 || x > width as f32 {
        return Vec::new();
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let mut y_low = y as usize;
    let mut x_low = x as usize;
    let y_high;
    let x_high;
    if y_low >= height - 1 {
        y_low = height - 1;
        y_high = y_low;
        y = y_low as f32;
    } else {
        y_high = y_low + 1;
    }
    if x_low >= width - 1 {
        x_low = width - 1;
        x_high = x_low;
        x = x_low as f32;
    } else {
        x_high = x_low + 1;
    }
    let (ly, lx) = (y - y_low as f32, x - x_low as f32);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    vec![
        (y_low * width + x_low, hy * hx),
        (y_low * width + x_high, hy * lx),
        (y_high * width + x_low, ly * hx),
        (y_high * width + x_high, ly * lx),
    ]
}
