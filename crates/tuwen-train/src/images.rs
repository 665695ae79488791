//! Image files to regions, the way a run was trained: the whole image and a `grid x grid`
//! tiling of it, each box turned into a region vector by the run's feature kind (pooled pixels,
//! or MobileNetV2 RoIAlign features). The built-in scenes use their objects' boxes instead; a
//! user's photo has no boxes, and a fixed grid needs no detector (the same regions in training
//! and at inference).

use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::Device;
use image::RgbImage;
use tuwen_objectives::mlm::IGNORE;
use tuwen_regions::{BoxXyxy, ExtractorConfig, LocationEncoding, RegionExtractor};

use crate::batch::{ImageRegions, pooled_pixels};
use crate::config::{Features, Source, TrainConfig};

/// Grid side for runs without a `[finetune]` section (pretraining runs used for inference).
pub const DEFAULT_GRID: usize = 3;

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
}

impl ImagePipeline {
    /// The pipeline `cfg` trained with (MobileNetV2 weights from `cargo xtask assets`).
    pub fn new(cfg: &TrainConfig, device: &Device) -> Result<Self, String> {
        let grid = cfg.finetune.as_ref().map_or(DEFAULT_GRID, |f| f.grid);
        let kind = match (cfg.data.source, cfg.data.features) {
            (Source::Store, _) => Kind::Store {
                store: cfg.data.store.clone().unwrap_or_default(),
            },
            (Source::Scenes, Features::Pixels) => Kind::Pixels {
                pool: cfg.data.pool,
            },
            (Source::Scenes, Features::MobilenetV2) => {
                let (backbone, _) = crate::features::mobilenet_v2(device)?;
                let extractor = RegionExtractor::new(
                    backbone,
                    ExtractorConfig {
                        shorter_side: 224,
                        ..ExtractorConfig::default()
                    },
                );
                let probe = RgbImage::new(32, 32);
                let dim = extractor
                    .extract(&probe, Some(&[BoxXyxy::new(0.0, 0.0, 32.0, 32.0)]), device)
                    .dim;
                Kind::Cnn {
                    extractor: Arc::new(Mutex::new(extractor)),
                    device: device.clone(),
                    dim,
                }
            }
        };
        Ok(Self { kind, grid })
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
        format!("the whole image + a {0}x{0} grid, {what}", self.grid)
    }

    /// The boxes of an image of `width x height` pixels: the whole image, then the grid cells
    /// row by row.
    pub fn boxes(&self, width: u32, height: u32) -> Vec<BoxXyxy> {
        let (w, h, g) = (width as f32, height as f32, self.grid as f32);
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
        std::iter::once(BoxXyxy::new(0.0, 0.0, w, h))
            .chain(cells)
            .collect()
    }

    /// The regions of `image` (no region labels: nothing to classify).
    pub fn regions(&self, image: &RgbImage) -> Result<ImageRegions, String> {
        let (w, h) = image.dimensions();
        let boxes = self.boxes(w, h);
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
        })
    }
}
