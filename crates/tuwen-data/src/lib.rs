//! Datasets for tuwen.
//!
//! * [`scene`] — the built-in scene generator, the embedded default dataset: deterministic by
//!   seed, no network. Images with 1-4 coloured shapes, captions with attributes, counts and
//!   spatial relations, ground-truth boxes and labels, phrase -> box links and VQA pairs, in
//!   disjoint train / validation / held-out test splits.
//! * [`formats`] — loaders for COCO captions / instances, Karpathy splits (Flickr30k, COCO),
//!   Conceptual-Captions TSV, VQA v2 and easy-VQA, with errors naming file and line.

pub mod formats;
pub mod scene;
