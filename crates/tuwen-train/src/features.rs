//! CNN region features of the scenes: the ImageNet MobileNetV2 feature map of each image,
//! RoIAlign at the whole image and at every object's ground-truth box, averaged to one vector
//! per region (`tuwen_regions::RegionExtractor`). Each scene is extracted once and cached in
//! memory, so `data.train_scenes` bounds the extraction work and the memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::Device;
use tuwen_data::scene::{Scene, SceneConfig, Split};
use tuwen_regions::{BoxXyxy, ExtractorConfig, RegionExtractor};
use tuwen_vision::Backbone;

use crate::batch::RegionFeatures;
use crate::config::{Features, TrainConfig};
use crate::event::Event;

/// Region vectors per `(split, scene index)`.
type Cache = HashMap<(u8, u64), Arc<Vec<f32>>>;

/// Region vectors from a CNN backbone, cached per scene.
#[derive(Debug)]
pub struct CnnRegionFeatures {
    extractor: Mutex<RegionExtractor>,
    device: Device,
    dim: usize,
    cache: Mutex<Cache>,
}

fn split_key(split: Split) -> u8 {
    match split {
        Split::Train => 0,
        Split::Validation => 1,
        Split::Test => 2,
    }
}

impl CnnRegionFeatures {
    /// Features of `backbone` computed on `device`; the images are upscaled so their shorter
    /// side is `shorter_side` pixels (the scenes are small; ImageNet CNNs expect ~224).
    pub fn new(backbone: Backbone, shorter_side: u32, device: &Device, probe: &Scene) -> Self {
        let (extractor, dim) = cnn_extractor(backbone, shorter_side, device, &probe.image);
        Self {
            extractor: Mutex::new(extractor),
            device: device.clone(),
            dim,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl RegionFeatures for CnnRegionFeatures {
    fn dim(&self) -> usize {
        self.dim
    }

    fn features(&self, split: Split, index: u64, scene: &Scene, boxes: &[BoxXyxy]) -> Vec<f32> {
        let key = (split_key(split), index);
        // A panic elsewhere while a lock was held leaves a consistent map (inserts are
        // single calls), so a poisoned lock is recovered, never skipped.
        let cache = || self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache().get(&key).cloned() {
            return hit.as_ref().clone();
        }
        let regions = {
            let extractor = self
                .extractor
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            extractor.extract(&scene.image, Some(boxes), &self.device)
        };
        let features = Arc::new(regions.features);
        cache().insert(key, features.clone());
        features.as_ref().clone()
    }
}

/// The region-feature source `cfg.data.features` names (`None`: pooled pixels).
pub fn region_features(
    cfg: &TrainConfig,
    scenes: &SceneConfig,
    device: &Device,
    events: &mut impl FnMut(Event),
) -> Result<Option<Arc<dyn RegionFeatures>>, String> {
    match cfg.data.features {
        Features::Pixels => Ok(None),
        Features::MobilenetV2 => {
            let (backbone, weights) = mobilenet_v2(device)?;
            let probe = scenes.generate(cfg.run.seed, Split::Train, 0);
            let features = CnnRegionFeatures::new(backbone, 224, device, &probe);
            events(Event::Note(format!(
                "region features: ImageNet MobileNetV2 ({} weights), {}-d, RoIAlign at the \
                 ground-truth boxes; extracted once per scene",
                weights.display(),
                features.dim()
            )));
            Ok(Some(Arc::new(features)))
        }
    }
}

/// A region extractor over `backbone` for images upscaled to a shorter side of `shorter_side`
/// pixels, with the width of its region vectors (measured on `probe`'s whole image).
pub fn cnn_extractor(
    backbone: Backbone,
    shorter_side: u32,
    device: &Device,
    probe: &image::RgbImage,
) -> (RegionExtractor, usize) {
    let extractor = RegionExtractor::new(
        backbone,
        ExtractorConfig {
            shorter_side,
            ..ExtractorConfig::default()
        },
    );
    let (w, h) = probe.dimensions();
    let whole = [BoxXyxy::new(0.0, 0.0, w as f32, h as f32)];
    let dim = extractor.extract(probe, Some(&whole), device).dim;
    (extractor, dim)
}

/// The ImageNet MobileNetV2 of `cargo xtask assets` on `device`, with its weights file.
pub fn mobilenet_v2(device: &Device) -> Result<(Backbone, std::path::PathBuf), String> {
    let weights = tuwen_assets::locate("mobilenet_v2", "mobilenet_v2.safetensors")
        .map_err(|e| format!("data.features = \"mobilenet_v2\": {e}"))?;
    let backbone = Backbone::from_torchvision("mobilenet_v2", &weights, 1000, device)
        .map_err(|e| format!("{}: {e}", weights.display()))?;
    Ok((backbone, weights))
}
