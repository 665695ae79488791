//! Image files to regions, the way a run was trained: the whole image, up to
//! `finetune.object_boxes` foreground boxes and a `grid x grid` tiling, each box turned into a
//! region vector by the run's feature kind (pooled pixels, or MobileNetV2 RoIAlign features).
//! The built-in scenes use their objects' ground-truth boxes; an image file has none, so the
//! pipeline proposes them without a detector (the same regions in training and at inference):
//!
//! * foreground boxes: the pixels that differ from the background colour (the median of the
//!   border pixels), split into 4-connected components, the largest first. They find the
//!   objects of synthetic images on a plain background (easy-VQA, the scenes); on a photo they
//!   degenerate to large boxes, which the grid complements;
//! * the grid: fixed cells, whatever the image.

use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::Device;
use image::RgbImage;
use tuwen_objectives::mlm::IGNORE;
use tuwen_regions::{BoxXyxy, LocationEncoding, RegionExtractor};

use crate::batch::{ImageRegions, pooled_pixels};
use crate::config::{Features, Source, TrainConfig};

/// Foreground boxes of runs without a `[finetune]` section (pretraining runs used for
/// inference): as many as a built-in scene has objects, and no grid, so an image file gets the
/// regions pretraining saw (the whole image, then one box per object).
pub const PRETRAINING_OBJECT_BOXES: usize = 4;

/// A pixel is foreground when one of its channels differs from the background colour by more
/// than this (of 255).
pub const FOREGROUND_THRESHOLD: u8 = 40;

/// Components smaller than this fraction of the image are noise, not objects.
pub const MIN_OBJECT_FRACTION: f32 = 0.002;

/// Bounding boxes of the `max` largest 4-connected foreground components of `image` (pixels
/// differing from the median border colour by more than [`FOREGROUND_THRESHOLD`]), largest
/// first. Written by hand: a flood fill over one small image on the host; burn-vision's
/// connected components run on device tensors and not on every backend.
pub fn foreground_boxes(image: &RgbImage, max: usize) -> Vec<BoxXyxy> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if max == 0 || w < 3 || h < 3 {
        return Vec::new();
    }
    let mut border: [Vec<u8>; 3] = Default::default();
    for (x, y, p) in image.enumerate_pixels() {
        if x == 0 || y == 0 || x as usize == w - 1 || y as usize == h - 1 {
            for (channel, &value) in border.iter_mut().zip(&p.0) {
                channel.push(value);
            }
        }
    }
    let background: Vec<u8> = border
        .iter_mut()
        .map(|v| {
            v.sort_unstable();
            v[v.len() / 2]
        })
        .collect();
    let foreground: Vec<bool> = image
        .pixels()
        .map(|p| (0..3).any(|c| p.0[c].abs_diff(background[c]) > FOREGROUND_THRESHOLD))
        .collect();
    let mut seen = vec![false; w * h];
    let mut components: Vec<(usize, BoxXyxy)> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !foreground[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x1, mut y1, mut x2, mut y2, mut area) = (w, h, 0, 0, 0usize);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            (x1, y1, x2, y2, area) = (x1.min(x), y1.min(y), x2.max(x), y2.max(y), area + 1);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for n in neighbours.into_iter().flatten() {
                if foreground[n] && !seen[n] {
                    seen[n] = true;
                    stack.push(n);
                }
            }
        }
        if area as f32 >= MIN_OBJECT_FRACTION * (w * h) as f32 {
            let b = BoxXyxy::new(x1 as f32, y1 as f32, (x2 + 1) as f32, (y2 + 1) as f32);
            components.push((area, b));
        }
    }
    components.sort_by_key(|&(area, _)| std::cmp::Reverse(area));
    components.into_iter().take(max).map(|(_, b)| b).collect()
}

/// How region vectors are computed from a box.
#[derive(Clone, Debug)]
enum Kind {
    /// `pool x pool` average RGB cells.
    Pixels { pool: usize },
    /// MobileNetV2 feature map + RoIAlign.
    Cnn {
        extractor: Arc<Mutex<RegionExtractor>>,
        device: Device,
        dim: usize,
    },
    /// The run read a feature store: its extractor is not recorded in the run.
    Store { store: String },
}

/// The image pipeline of a run.
#[derive(Clone, Debug)]
pub struct ImagePipeline {
    kind: Kind,
    grid: usize,
    objects: usize,
}

impl ImagePipeline {
    /// The pipeline `cfg` trained with (MobileNetV2 weights from `cargo xtask assets`).
    pub fn new(cfg: &TrainConfig, device: &Device) -> Result<Self, String> {
        let grid = cfg.finetune.as_ref().map_or(0, |f| f.grid);
        let objects = cfg
            .finetune
            .as_ref()
            .map_or(PRETRAINING_OBJECT_BOXES, |f| f.object_boxes);
        let kind = match (cfg.data.source, cfg.data.features) {
            (Source::Store, _) => Kind::Store {
                store: cfg.data.store.clone().unwrap_or_default(),
            },
            (Source::Scenes, Features::Pixels) => Kind::Pixels {
                pool: cfg.data.pool,
            },
            (Source::Scenes, Features::MobilenetV2) => {
                let (backbone, _) = crate::features::mobilenet_v2(device)?;
                // The scenes' CNN features: 224-pixel shorter side.
                let (extractor, dim) =
                    crate::features::cnn_extractor(backbone, 224, device, &RgbImage::new(32, 32));
                Kind::Cnn {
                    extractor: Arc::new(Mutex::new(extractor)),
                    device: device.clone(),
                    dim,
                }
            }
        };
        Ok(Self {
            kind,
            grid,
            objects,
        })
    }

    /// Width of a region vector (0 for a feature-store run).
    pub fn feature_dim(&self) -> usize {
        match &self.kind {
            Kind::Pixels { pool } => 3 * pool * pool,
            Kind::Cnn { dim, .. } => *dim,
            Kind::Store { .. } => 0,
        }
    }

    /// One line for logs: what the regions are.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            Kind::Pixels { pool } => format!("{pool}x{pool} pooled RGB cells"),
            Kind::Cnn { dim, .. } => format!("MobileNetV2 RoIAlign features ({dim}-d)"),
            Kind::Store { store } => return format!("regions from the feature store {store}"),
        };
        format!(
            "the whole image + up to {} foreground boxes + a {1}x{1} grid, {what}",
            self.objects, self.grid
        )
    }

    /// The boxes of `image`: the whole image, its foreground boxes (up to
    /// `finetune.object_boxes`, largest first), then the grid cells row by row.
    pub fn boxes(&self, image: &RgbImage) -> Vec<BoxXyxy> {
        let (width, height) = image.dimensions();
        let (w, h, g) = (width as f32, height as f32, self.grid as f32);
        let whole = BoxXyxy::new(0.0, 0.0, w, h);
        let objects = foreground_boxes(image, self.objects);
        let cells = (0..self.grid).flat_map(|row| {
            (0..self.grid).map(move |col| {
                BoxXyxy::new(
                    w * col as f32 / g,
                    h * row as f32 / g,
                    w * (col + 1) as f32 / g,
                    h * (row + 1) as f32 / g,
                )
            })
        });
        std::iter::once(whole).chain(objects).chain(cells).collect()
    }

    /// The regions of `image` (no region labels: nothing to classify).
    pub fn regions(&self, image: &RgbImage) -> Result<ImageRegions, String> {
        let (w, h) = image.dimensions();
        let boxes = self.boxes(image);
        let features = match &self.kind {
            Kind::Pixels { pool } => boxes
                .iter()
                .flat_map(|b| pooled_pixels(image, *b, *pool))
                .collect(),
            Kind::Cnn {
                extractor, device, ..
            } => {
                let extractor = extractor.lock().unwrap_or_else(PoisonError::into_inner);
                extractor.extract(image, Some(&boxes), device).features
            }
            Kind::Store { store } => {
                return Err(format!(
                    "the run read its regions from the feature store {store}, whose extractor \
                     settings it does not record; images cannot be turned into the same regions"
                ));
            }
        };
        let locations = boxes
            .iter()
            .flat_map(|b| b.encode(LocationEncoding::XyxyArea5, w as f32, h as f32))
            .collect();
        Ok(ImageRegions {
            features,
            locations,
            labels: vec![IGNORE; boxes.len()],
            class_probs: Vec::new(),
        })
    }
}

/// One image of a COCO caption file.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoImage {
    /// The image file.
    pub path: std::path::PathBuf,
    /// Its id in the file.
    pub image_id: String,
    /// Its non-empty captions (possibly none).
    pub captions: Vec<String>,
}

/// The first `max_images` images of COCO caption file `annotations` (`images[].file_name` under
/// `dir`, `annotations[].{image_id, caption}`) in record order, with their captions. Errors name
/// a missing image file and the caption file.
pub fn coco_images(
    dir: &std::path::Path,
    annotations: &std::path::Path,
    max_images: usize,
) -> Result<Vec<CocoImage>, String> {
    let records = tuwen_data::formats::coco_captions(annotations).map_err(|e| e.to_string())?;
    let mut slot = std::collections::HashMap::new();
    let mut images: Vec<CocoImage> = Vec::new();
    for r in records {
        let at = match slot.get(&r.image_id) {
            Some(&at) => at,
            None if images.len() < max_images => {
                let path = dir.join(&r.image);
                if !path.is_file() {
                    return Err(format!(
                        "{}: image {} of {} is missing",
                        path.display(),
                        r.image_id,
                        annotations.display()
                    ));
                }
                slot.insert(r.image_id.clone(), images.len());
                images.push(CocoImage {
                    path,
                    image_id: r.image_id.clone(),
                    captions: Vec::new(),
                });
                images.len() - 1
            }
            None => continue,
        };
        if !r.caption.trim().is_empty() {
            images[at].captions.push(r.caption);
        }
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreground_boxes_find_the_objects_on_a_plain_background_largest_first() {
        let mut image = RgbImage::from_pixel(40, 30, image::Rgb([240, 230, 230]));
        for y in 5..15 {
            for x in 4..12 {
                image.put_pixel(x, y, image::Rgb([200, 0, 0]));
            }
        }
        for y in 20..24 {
            for x in 30..33 {
                image.put_pixel(x, y, image::Rgb([0, 0, 255]));
            }
        }
        // A speck below the noise floor.
        image.put_pixel(20, 2, image::Rgb([0, 0, 0]));
        let boxes = foreground_boxes(&image, 4);
        assert_eq!(
            boxes,
            vec![
                BoxXyxy::new(4.0, 5.0, 12.0, 15.0),
                BoxXyxy::new(30.0, 20.0, 33.0, 24.0)
            ]
        );
        assert_eq!(foreground_boxes(&image, 1).len(), 1);
        assert!(foreground_boxes(&RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9])), 4).is_empty());
    }
}
