//! Training machinery for tuwen's step-based pretraining loop.
//!
//! * [`config`] — every hyper-parameter of a run, from TOML; saved resolved in the run directory.
//! * [`batch`] — host batches from the built-in scenes (MLM, ITM, masked regions), split into
//!   micro-batches for accumulation and data parallelism.
//! * [`corpus`] — real captions (COCO, Karpathy, CC TSV) with features from a feature store.
//! * [`caption`] — captioning fine-tuning (unified seq2seq encoder or encoder + decoder), held-out
//!   captions scored like pycocoevalcap, [`caption::Captioner`] for image files.
//! * [`matching`] — retrieval fine-tuning (ITC + ITM, selected on Recall@1).
//! * [`data`] — a run's data (scenes or corpus) behind one type.
//! * [`prefetch`] — loader threads that build batches ahead, in step order.
//! * [`model`] — VisualBERT, ViLBERT and LXMERT behind one type, with their objectives.
//! * [`features`] — CNN region features of the scenes.
//! * [`checkpoint`] — model + optimiser + training state, written atomically.
//! * [`guard`] — NaN/inf steps skipped and counted, abort after too many in a row.
//! * [`metrics`] — `metrics.jsonl` and SVG plots of every series.
//! * [`parallel`] — several devices in one process: the model's replicas, kept between steps.
//! * [`distributed`] — data parallelism across processes started by Open MPI's `mpirun`.
//! * [`pretrain`] — the pretraining loop (accumulation, data parallelism, evaluation, best/last
//!   checkpoints; resumable bit for bit).
//! * [`retrieval`] — Recall@1/5/10 with ITC ranking and ITM re-ranking of the top-k only.
//! * [`retrieve`] — a run ranking image files against texts (ITC top-k, ITM re-ranking) with a
//!   cached embedding index, and retrieval evaluation of a run.
//! * [`schedule`] — warmup then linear or cosine decay, as a pure function of the step.
//! * [`clip`] — clipping by the GLOBAL gradient norm over all parameters (Burn's
//!   `GradientClipping::Norm` clips each tensor separately).
//! * [`decay`] — decoupled weight decay that skips biases, LayerNorm and the ITC temperature (HF),
//!   applied next to an AdamW step configured without decay.

pub mod batch;
pub mod caption;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod corpus;
pub mod data;
pub mod decay;
pub mod distributed;
pub mod event;
pub mod features;
pub mod finetune;
mod flat;
pub mod guard;
pub mod images;
pub mod matching;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod params;
pub mod prefetch;
pub mod pretrain;
pub mod retrieval;
pub mod retrieve;
pub mod run_dir;
pub mod schedule;
pub mod trainer;
pub mod vqa;
