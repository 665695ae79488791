//! Region features of the scenes other than pooled pixels.

use std::sync::Arc;

use burn::tensor::Device;
use tuwen_data::scene::SceneConfig;

use crate::batch::RegionFeatures;
use crate::config::{Features, TrainConfig};
use crate::pretrain::Event;

/// The region-feature source `cfg.data.features` names (`None`: pooled pixels).
pub fn region_features(
    cfg: &TrainConfig,
    _scenes: &SceneConfig,
    _device: &Device,
    _events: &mut impl FnMut(Event),
) -> Result<Option<Arc<dyn RegionFeatures>>, String> {
    match cfg.data.features {
        Features::Pixels => Ok(None),
        Features::MobilenetV2 => {
            Err("data.features = \"mobilenet_v2\" is not available yet".into())
        }
    }
}
