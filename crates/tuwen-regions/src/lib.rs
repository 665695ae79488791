//! Regions for tuwen: box geometry and the location encodings fusion models consume
//! ([`boxes`]), and RoIAlign on Burn tensors ([`roi_align`]) matching `torchvision.ops.roi_align`.

pub mod boxes;
pub mod roi_align;

pub use boxes::{BoxXyxy, LocationEncoding};
pub use roi_align::{RoiAlign, RoiAlignError};
