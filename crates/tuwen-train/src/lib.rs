//! Training machinery for tuwen's step-based pretraining loop.
//!
//! * [`batch`] — MLM + ITM batches from the built-in scenes (GT-box regions, 5-d locations).
//! * [`checkpoint`] — model + optimiser + training state, written atomically.
//! * [`guard`] — NaN/inf steps skipped and counted, abort after too many in a row.
//! * [`metrics`] — `metrics.jsonl` and SVG plots of every series.
//! * [`pretrain`] — the MLM + ITM pretraining loop on the built-in scenes (resumable, exact).
//! * [`retrieval`] — Recall@1/5/10 with ITC ranking and ITM re-ranking of the top-k only.
//! * [`schedule`] — warmup then linear or cosine decay, as a pure function of the step.
//! * [`clip`] — clipping by the GLOBAL gradient norm over all parameters (Burn's
//!   `GradientClipping::Norm` clips each tensor separately).
//! * [`decay`] — decoupled weight decay that skips LayerNorm parameters, biases and embeddings,
//!   applied next to an AdamW step configured without decay.

pub mod batch;
pub mod checkpoint;
pub mod clip;
pub mod decay;
pub mod guard;
pub mod metrics;
pub mod pretrain;
pub mod retrieval;
pub mod schedule;
