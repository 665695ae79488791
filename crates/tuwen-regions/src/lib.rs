//! Regions for tuwen: box geometry and the location encodings fusion models consume
//! ([`boxes`]), RoIAlign on Burn tensors matching `torchvision.ops.roi_align` ([`roi_align`]),
//! detector-free proposals with NMS ([`proposals`]), pixels-to-region-features extraction
//! ([`extract`]), the sharded, memory-mapped feature store ([`store`]) and streaming BUTD TSV
//! import/export ([`tsv`]).

pub mod boxes;
pub mod extract;
pub mod proposals;
pub mod roi_align;
pub mod store;
pub mod tsv;

pub use boxes::{BoxXyxy, LocationEncoding};
pub use extract::{ExtractorConfig, RegionExtractor, RegionFeatures};
pub use roi_align::{RoiAlign, RoiAlignError};
pub use store::{StoreDtype, StoreError, StoreReader, StoreWriter};
