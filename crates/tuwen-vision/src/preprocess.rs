//! Image decoding and the torchvision-style preprocessing every backbone expects.
//!
//! Images are decoded with the `image` crate within fixed limits ([`MAX_IMAGE_SIDE`],
//! [`MAX_DECODE_BYTES`]), turned upright by their EXIF orientation, and always converted to RGB
//! (never BGR). The ImageNet recipe is: resize the SHORTER side to 256 (bilinear with
//! antialiasing, as PIL), crop the central 224x224, scale to [0, 1], normalise with the
//! backbone's mean/std, CHW layout.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

/// Largest width or height [`load_rgb`] decodes, in pixels.
///
/// A JPEG header may declare up to 65535 x 65535 pixels in a few hundred bytes, and the decoder
/// allocates and decodes whatever is declared (a 700-byte file declaring 2064 x 65535 cost
/// 400 MB and ~8 s). No camera writes a longer side than 16384 (a 200-megapixel phone sensor is
/// 16320 x 12240), and the images of vision-language datasets (COCO, Visual Genome, Conceptual
/// Captions) are about 1000 px a side at most, which preprocessing shrinks to 256 px anyway.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Largest decoded pixel buffer [`load_rgb`] allocates, in bytes (256 MiB).
///
/// That is ~89 megapixels of 8-bit RGB: more than the 12-50 megapixels phones and cameras write
/// by default (a full-resolution 200-megapixel capture must be downscaled first), while a corrupt
/// or hostile header cannot make one image cost gigabytes. Loader
/// threads decode several images at once and one image briefly holds up to three buffers of this
/// size (decoded, RGB-converted, rotated), so the limit bounds memory per thread. The `image`
/// crate's own default is 512 MiB.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Errors of image loading.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read (the error names it).
    #[error(transparent)]
    Io(#[from] tuwen_io::IoError),
    /// The file declares more pixels than [`load_rgb`] decodes.
    #[error(
        "image {path} declares {width} x {height} pixels ({bytes} bytes decoded), over the \
         decoding limits of at most {} pixels a side and {} MiB decoded",
        MAX_IMAGE_SIDE,
        MAX_DECODE_BYTES >> 20
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Size of the decoded pixel buffer.
        bytes: u64,
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

/// Decodes an image file (JPEG or PNG, told by its content) to upright RGB, naming the file on
/// any error.
///
/// An image whose header declares a side over [`MAX_IMAGE_SIDE`] or a decoded buffer over
/// [`MAX_DECODE_BYTES`] is refused before any pixel is decoded ([`ImageError::TooLarge`]). The
/// EXIF orientation (JPEG APP1, PNG eXIf) is applied, so a phone photo taken upright comes out
/// upright whatever way the sensor stored it.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage, ImageError> {
    let path = path.as_ref();
    let bytes = tuwen_io::read(path)?;
    decode_rgb(&bytes, path)
}

/// Decodes an image held in memory (an upload, an archive member) exactly as [`load_rgb`]
/// decodes a file, within the same limits; `name` names the image in errors.
pub fn decode_rgb(bytes: &[u8], name: &Path) -> Result<RgbImage, ImageError> {
    let decode = decode_error(name);
    let mut reader = reader(bytes, name)?;
    // While reading the header, only the allocation budget (the PNG decoder's own buffers):
    // the size checks below name the declared dimensions.
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode)?;
    let (width, height) = decoder.dimensions();
    let decoded = decoder.total_bytes();
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || decoded > MAX_DECODE_BYTES {
        return Err(ImageError::TooLarge {
            path: name.to_path_buf(),
            width,
            height,
            bytes: decoded,
        });
    }
    let mut limits = Limits::no_limits();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES - decoded);
    decoder.set_limits(limits).map_err(decode)?;
    let orientation = decoder.orientation().map_err(decode)?;
    let image = DynamicImage::from_decoder(decoder).map_err(decode)?;
    // Convert first (RGBA and 16-bit buffers are larger), then rotate / flip.
    let mut image = DynamicImage::ImageRgb8(image.into_rgb8());
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// The width and height an in-memory JPEG/PNG declares, read from its header without decoding
/// any pixel (for a caller's own size limit before [`decode_rgb`]); `name` names it in errors.
pub fn image_dimensions(bytes: &[u8], name: &Path) -> Result<(u32, u32), ImageError> {
    reader(bytes, name)?
        .into_dimensions()
        .map_err(decode_error(name))
}

/// An image reader over `bytes` with its format guessed from the content.
fn reader<'b>(bytes: &'b [u8], name: &Path) -> Result<ImageReader<Cursor<&'b [u8]>>, ImageError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_error(name)(e.into()))
}

/// A decoder error about the image `name`.
fn decode_error(name: &Path) -> impl Fn(image::ImageError) -> ImageError + Copy + '_ {
    |e| ImageError::Decode {
        path: name.to_path_buf(),
        reason: e.to_string(),
    }
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
