//! Image decoding and the torchvision-style preprocessing every backbone expects.
//!
//! Images are decoded with the `image` crate and always converted to RGB (never BGR). The
//! ImageNet recipe is: resize the SHORTER side to 256 (bilinear with antialiasing, as PIL), crop
//! the central 224x224, scale to [0, 1], normalise with the backbone's mean/std, CHW layout.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

/// Errors of image loading.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read image {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a decodable JPEG/PNG (corrupt, truncated or another format).
    #[error("cannot decode image {path}: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
}

/// Per-channel normalisation constants (RGB order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Channel means, applied after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Channel standard deviations.
    pub std: [f32; 3],
}

impl Normalization {
    /// torchvision's ImageNet constants.
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

/// How images become network input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// Length the shorter side is resized to.
    pub resize_shorter: u32,
    /// Side of the central square crop.
    pub crop: u32,
    /// Normalisation.
    pub normalization: Normalization,
}

impl Default for Preprocess {
    /// torchvision's ImageNet evaluation recipe: resize 256, centre crop 224.
    fn default() -> Self {
        Self {
            resize_shorter: 256,
            crop: 224,
            normalization: Normalization::IMAGENET,
        }
    }
}

/// Decodes an image file to RGB, naming the file on any error.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage, ImageError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let image = image::load_from_memory(&bytes).map_err(|e| ImageError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(image.to_rgb8())
}

impl Preprocess {
    /// Resizes and crops one RGB image (no normalisation yet).
    pub fn resize_crop(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let scale = self.resize_shorter as f64 / w.min(h) as f64;
        // Round like torchvision: the shorter side is exact, the longer one truncated.
        let (nw, nh) = if w <= h {
            (self.resize_shorter, ((h as f64) * scale) as u32)
        } else {
            (((w as f64) * scale) as u32, self.resize_shorter)
        };
        let resized = DynamicImage::ImageRgb8(image.clone())
            .resize_exact(nw.max(1), nh.max(1), FilterType::Triangle)
            .to_rgb8();
        let crop = self.crop.min(nw).min(nh);
        // torchvision: int(round((size - crop) / 2.0)), Python rounding (ties to even).
        let left = ((nw - crop) as f64 / 2.0).round_ties_even() as u32;
        let top = ((nh - crop) as f64 / 2.0).round_ties_even() as u32;
        image::imageops::crop_imm(&resized, left, top, crop, crop).to_image()
    }

    /// Resizes so the shorter side is `shorter` pixels, keeping the aspect ratio, without cropping
    /// (region extraction needs the whole image).
    pub fn resize_shorter(image: &RgbImage, shorter: u32) -> RgbImage {
        let (w, h) = image.dimensions();
        let scale = shorter as f64 / w.min(h).max(1) as f64;
        let (nw, nh) = (
            ((w as f64 * scale).round() as u32).max(1),
            ((h as f64 * scale).round() as u32).max(1),
        );
        DynamicImage::ImageRgb8(image.clone())
            .resize_exact(nw, nh, FilterType::Triangle)
            .to_rgb8()
    }

    /// One image as a normalised `[1, 3, H, W]` tensor, without resizing.
    pub fn tensor(&self, image: &RgbImage, device: &Device) -> Tensor<4> {
        let (w, h) = image.dimensions();
        Tensor::from_data(
            TensorData::new(self.normalize(image), [1, 3, h as usize, w as usize]),
            device,
        )
    }

    /// Normalised CHW values of an already resized/cropped image.
    pub fn normalize(&self, image: &RgbImage) -> Vec<f32> {
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                let v = pixel.0[c] as f32 / 255.0;
                out[c * plane + i] = (v - self.normalization.mean[c]) / self.normalization.std[c];
            }
        }
        out
    }

    /// Preprocesses images into one `[B, 3, crop, crop]` tensor.
    pub fn batch(&self, images: &[RgbImage], device: &Device) -> Tensor<4> {
        let side = self.crop as usize;
        let mut data = Vec::with_capacity(images.len() * 3 * side * side);
        for image in images {
            data.extend(self.normalize(&self.resize_crop(image)));
        }
        Tensor::from_data(TensorData::new(data, [images.len(), 3, side, side]), device)
    }

    /// Loads and preprocesses image files into one batch; the first unreadable file is an error
    /// naming it.
    pub fn load_batch(
        &self,
        paths: &[impl AsRef<Path>],
        device: &Device,
    ) -> Result<Tensor<4>, ImageError> {
        let images = paths.iter().map(load_rgb).collect::<Result<Vec<_>, _>>()?;
        Ok(self.batch(&images, device))
    }
}
