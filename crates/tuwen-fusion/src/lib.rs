//! Text and vision-language fusion Transformers for tuwen.
//!
//! Every model here is backend-free: it is built on a `&Device` chosen by the caller, and the
//! same weights give the same outputs on every backend (tests check Flex, ndarray and wgpu).
//!
//! * [`bert`] — the BERT text encoder (post-LN, GELU, eps 1e-12), loading HF `BertModel`
//!   safetensors with or without a `bert.` prefix.
//! * [`visual_bert`] — single-stream fusion (VisualBERT; UNITER/VL-BERT-style box encodings),
//!   with HF `VisualBertModel` / `VisualBertForPreTraining` import and BERT initialisation.
//! * [`vilbert`] — two-stream co-attention fusion (ViLBERT), loading the reference checkpoints;
//!   [`cross`] holds the cross-attention block it shares with LXMERT.
//! * [`lxmert`] — the cross-modality encoder (LXMERT) with HF `LxmertModel` /
//!   `LxmertForPreTraining` import.
//! * [`decoder`] — a Transformer caption decoder over fused encoder states (T5-style Seq2Seq),
//!   with tied output projection and a KV-cached decoding stepper.
//! * [`generate`] — batched greedy and beam-search caption decoding with HF `generate`
//!   semantics over any [`generate::StepModel`]: the caption decoder, or VisualBERT as the
//!   unified-VLP captioner ([`VisualBertForPreTraining::caption_stepper`]).
//! * [`heads`] — pretraining heads (MLM with a decoder tied to the word embeddings, pair heads).
//! * [`activation`] — the exact GELU through tuwen's vectorised kernel on CPU backends.
//! * [`dropout`] — dropout with counter-based masks built on the host on CPU backends.
//! * [`init`] — HF BERT's weight initialisation for models trained from scratch.
//! * [`precision`] — bf16 linear layers for CPU inference (AVX512-BF16), as PyTorch's autocast.
//! * [`mask`] — attention masks as values (HF convention in, additive bias out).
//! * [`blocks`] — the Transformer pieces shared by all encoders.
//! * [`weights`] — strict checkpoint loading: every missing, unused or mis-shaped tensor is an error.

pub mod activation;
pub mod attention;
pub mod bert;
#[cfg(feature = "flex")]
mod bf16_op;
pub mod blocks;
pub mod cross;
pub mod decoder;
pub mod dropout;
pub mod generate;
pub mod heads;
mod host;
pub mod init;
mod input;
pub mod lxmert;
pub mod mask;
pub mod precision;
mod rows;
pub mod vilbert;
pub mod visual_bert;
pub mod weights;

pub use attention::Attention;
pub use bert::{BertConfig, BertModel, BertOutput};
pub use generate::{Generated, GenerationConfig, StepModel};
pub use input::InputError;
pub use lxmert::{LxmertConfig, LxmertForPreTraining, LxmertInput, LxmertModel};
pub use mask::{AttentionMask, UnifiedMode};
pub use vilbert::{ViLBertConfig, ViLBertForPreTraining, ViLBertInput, ViLBertModel};
pub use visual_bert::{
    CaptionRegions, VisualBertConfig, VisualBertForPreTraining, VisualBertInput, VisualBertModel,
};
pub use weights::LoadError;
