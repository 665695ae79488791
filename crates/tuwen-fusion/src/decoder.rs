//! A Transformer caption decoder for encoder-decoder (T5-style Seq2Seq) captioning over a fused
//! vision-language encoder: token + position embeddings, then layers of causal self-attention,
//! cross-attention to the encoder states, and a feed-forward block (post-LN, as the encoders), and
//! an output projection tied to the token embeddings.
//!
//! Captions are decoded with [`crate::generate`] (greedy or beam search with HF `generate`
//! semantics) through [`CaptionDecoder::stepper`], which caches every layer's self-attention
//! keys/values and the encoder's cross-attention keys/values, and masks encoder padding.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use tuwen_fusion::decoder::DecoderConfig;
//! use tuwen_fusion::generate::GenerationConfig;
//! let device = Device::default();
//! let decoder = DecoderConfig::new(30522, 384, 384).init(&device);
//! let encoded = Tensor::<3>::zeros([2, 40, 384], &device);
//! let encoder_mask = Tensor::<2, Int>::ones([2, 40], &device); // 1 = real position
//! // Training: logits [B, T, vocab], position i predicting token i + 1.
//! let caption = Tensor::<2, Int>::from_ints([[101, 1037], [101, 3899]], &device);
//! let logits = decoder.forward(caption, encoded.clone(), Some(encoder_mask.clone()));
//! // Inference: beam search over cached keys/values, [CLS] = 101 starts, [SEP] = 102 ends.
//! let config = GenerationConfig {
//!     num_beams: 3,
//!     max_length: 20,
//!     no_repeat_ngram_size: 3,
//!     ..GenerationConfig::new(101, 102)
//! };
//! let captions = decoder.generate(encoded, Some(encoder_mask), &config);
//! println!("{:?} (score {})", captions[0].tokens, captions[0].score);
//! ```

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::AttentionMask;
use crate::attention::KeyValues;
use crate::blocks::{AttentionBlock, FeedForward, LayerDims};
use crate::cross::{CrossAttentionBlock, CrossDims};
use crate::generate::{Generated, GenerationConfig, StepModel, generate};
use crate::mask::HF_MASK_VALUE;
use crate::rows::{check_step, host_log_softmax, index};

/// Decoder sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Decoder width.
    pub hidden: usize,
    /// Width of the encoder states it attends to.
    pub encoder_width: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub intermediate: usize,
    /// Longest caption.
    pub max_positions: usize,
    /// Dropout.
    pub dropout: f64,
}

impl DecoderConfig {
    /// A 2-layer decoder of `hidden` width with BERT-like proportions.
    pub fn new(vocab_size: usize, hidden: usize, encoder_width: usize) -> Self {
        Self {
            vocab_size,
            hidden,
            encoder_width,
            layers: 2,
            heads: (hidden / 64).max(1),
            intermediate: 4 * hidden,
            max_positions: 64,
            dropout: 0.1,
        }
    }

    /// A randomly initialised decoder.
    pub fn init(&self, device: &Device) -> CaptionDecoder {
        let dims = LayerDims {
            hidden: self.hidden,
            heads: self.heads,
            intermediate: self.intermediate,
            layer_norm_eps: 1e-12,
            hidden_dropout: self.dropout,
            attention_dropout: self.dropout,
        };
        let cross = CrossDims {
            query_width: self.hidden,
            context_width: self.encoder_width,
            attention_width: self.hidden,
            heads: self.heads,
            attention_dropout: self.dropout,
            hidden_dropout: self.dropout,
            layer_norm_eps: 1e-12,
        };
        CaptionDecoder {
            token_embeddings: EmbeddingConfig::new(self.vocab_size, self.hidden).init(device),
            position_embeddings: EmbeddingConfig::new(self.max_positions, self.hidden).init(device),
            layer_norm: LayerNormConfig::new(self.hidden)
                .with_epsilon(1e-12)
                .init(device),
            layers: (0..self.layers)
                .map(|_| DecoderLayer {
                    self_attention: AttentionBlock::new(&dims, device),
                    cross_attention: CrossAttentionBlock::new(&cross, device),
                    ffn: FeedForward::new(&dims, device),
                })
                .collect(),
        }
    }
}

/// Causal self-attention, cross-attention to the encoder, feed-forward.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Causal self-attention over the caption so far.
    pub self_attention: AttentionBlock,
    /// Attention to the fused encoder states.
    pub cross_attention: CrossAttentionBlock,
    /// Feed-forward block.
    pub ffn: FeedForward,
}

/// The caption decoder; its output projection is the (tied) token embedding matrix.
#[derive(Module, Debug)]
pub struct CaptionDecoder {
    /// Token embeddings, also the output projection.
    pub token_embeddings: Embedding,
    /// Learned positions.
    pub position_embeddings: Embedding,
    /// LayerNorm on the embeddings.
    pub layer_norm: LayerNorm,
    /// The layers.
    pub layers: Vec<DecoderLayer>,
}

/// `[B, T, T]` allowed-matrix of causal attention over real tokens (`mask` 1 = real).
fn causal(mask: Tensor<2, Int>) -> AttentionMask {
    let [b, t] = mask.dims();
    let device = mask.device();
    let tril: Vec<bool> = (0..t * t).map(|i| i % t <= i / t).collect();
    let structure =
        Tensor::<3, Bool>::from_data(TensorData::new(tril, [1, t, t]), &device).expand([b, t, t]);
    let keys = mask.equal_elem(1).reshape([b, 1, t]).expand([b, t, t]);
    AttentionMask::from_allowed(structure.bool_and(keys), HF_MASK_VALUE)
}

impl CaptionDecoder {
    /// Vocabulary logits `[B, T, vocab]` for captions `[B, T]` (position `i` predicts token
    /// `i + 1`), attending to `encoder` states `[B, S, encoder_width]`. `encoder_mask` `[B, S]`
    /// (1 = real) defaults to all real; caption padding is handled by the loss.
    pub fn forward(
        &self,
        captions: Tensor<2, Int>,
        encoder: Tensor<3>,
        encoder_mask: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        let [b, t] = captions.dims();
        let device = captions.device();
        let [_, s, _] = encoder.dims();
        let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        let mut x = self.layer_norm.forward(
            self.token_embeddings.forward(captions.clone())
                + self.position_embeddings.forward(positions),
        );
        let self_mask = causal(captions.ones_like());
        let enc_mask = AttentionMask::padding(
            encoder_mask.unwrap_or_else(|| Tensor::ones([b, s], &device)),
            HF_MASK_VALUE,
        );
        for layer in &self.layers {
            x = layer.self_attention.forward(x, &self_mask);
            x = layer.cross_attention.forward(x, encoder.clone(), &enc_mask);
            x = layer.ffn.forward(x);
        }
        let v = self.token_embeddings.weight.dims()[0];
        self.project(x).reshape([b, t, v])
    }

    /// Tied output projection of hidden states `[N, T, hidden]` to logits `[N * T, vocab]`.
    fn project(&self, x: Tensor<3>) -> Tensor<2> {
        let [n, t, h] = x.dims();
        let vocab = self.token_embeddings.weight.val();
        x.reshape([n * t, h]).matmul(vocab.transpose())
    }

    /// A [`StepModel`] decoding captions for `encoder` states `[B, S, encoder_width]` with
    /// padding `encoder_mask` `[B, S]` (1 = real; `None` = all real), for
    /// [`crate::generate::generate`].
    ///
    /// With `use_cache` each step runs only the new token: every layer's self-attention
    /// keys/values are cached (one position appended per step, rows reordered by the step's
    /// parents) and the encoder's cross-attention keys/values are computed once. Without it each
    /// step recomputes the whole prefix with [`CaptionDecoder::forward`] (the reference the cache
    /// is tested against).
    ///
    /// # Panics
    /// If `encoder` is not `encoder_width` wide or `encoder_mask` is not `[B, S]`.
    pub fn stepper(
        &self,
        encoder: Tensor<3>,
        encoder_mask: Option<Tensor<2, Int>>,
        use_cache: bool,
    ) -> DecoderStepper<'_> {
        let [b, s, w] = encoder.dims();
        let device = encoder.device();
        let width = self
            .layers
            .first()
            .map_or(w, |l| l.cross_attention.attention.key.weight.dims()[0]);
        assert_eq!(
            w, width,
            "encoder states are {w} wide, the decoder expects {width}"
        );
        let mask = encoder_mask.unwrap_or_else(|| Tensor::ones([b, s], &device));
        assert_eq!(
            mask.dims(),
            [b, s],
            "encoder_mask must be [batch, encoder length]"
        );
        let mode = if use_cache {
            let padding = AttentionMask::padding(mask.clone(), HF_MASK_VALUE);
            let cross: Vec<KeyValues> = self
                .layers
                .iter()
                .map(|l| l.cross_attention.attention.key_values(encoder.clone()))
                .collect();
            DecoderMode::Cached(Box::new(DecoderCache {
                self_kv: vec![None; self.layers.len()],
                selected: RowSelection {
                    items: (0..b).collect(),
                    cross: cross.clone(),
                    padding: padding.clone(),
                },
                cross,
                padding,
            }))
        } else {
            DecoderMode::Full {
                prefixes: vec![Vec::new(); b],
            }
        };
        DecoderStepper {
            decoder: self,
            encoder,
            encoder_mask: mask,
            items: (0..b).collect(),
            len: 0,
            mode,
        }
    }

    /// Decodes captions for `encoder` states (greedy or beam search per `config`, with the KV
    /// cache): [`crate::generate::generate`] over [`CaptionDecoder::stepper`].
    ///
    /// # Panics
    /// As [`crate::generate::generate`] and [`CaptionDecoder::stepper`], and if
    /// `config.max_length - 1` exceeds the decoder's positions.
    pub fn generate(
        &self,
        encoder: Tensor<3>,
        encoder_mask: Option<Tensor<2, Int>>,
        config: &GenerationConfig,
    ) -> Vec<Generated> {
        let positions = self.position_embeddings.weight.dims()[0];
        assert!(
            config.max_length <= positions + 1,
            "max_length {} needs {} positions, the decoder has {positions}",
            config.max_length,
            config.max_length - 1
        );
        let batch = encoder.dims()[0];
        generate(
            &mut self.stepper(encoder, encoder_mask, true),
            batch,
            config,
        )
    }

    /// Greedy decoding from `bos` until `eos` or `max_len` tokens, one sequence per batch row,
    /// attending to every encoder position; finished rows are padded with `eos`. Returns the
    /// generated ids (without `bos`, with `eos`). A shorthand for [`CaptionDecoder::generate`]
    /// with greedy settings.
    pub fn generate_greedy(
        &self,
        encoder: Tensor<3>,
        bos: i64,
        eos: i64,
        max_len: usize,
    ) -> Vec<Vec<i64>> {
        let [b, _, _] = encoder.dims();
        let limit = max_len.min(self.position_embeddings.weight.dims()[0] - 1);
        if limit == 0 {
            return vec![Vec::new(); b];
        }
        let config = GenerationConfig {
            max_length: limit + 1,
            ..GenerationConfig::new(bos, eos)
        };
        let out = self.generate(encoder, None, &config);
        let width = out
            .iter()
            .map(|g| g.tokens.len() + usize::from(g.finished))
            .max()
            .unwrap_or(0);
        out.into_iter()
            .map(|g| {
                let mut tokens = g.tokens;
                tokens.resize(width, eos);
                tokens
            })
            .collect()
    }
}

/// Cross-attention state for the current rows (recomputed only when the rows' batch items
/// change: beams stay within their item, so only when an item finishes).
struct RowSelection {
    items: Vec<usize>,
    cross: Vec<KeyValues>,
    padding: AttentionMask,
}

/// The decoder's keys/values.
struct DecoderCache {
    /// Per layer, `[rows, heads, len, head_dim]`.
    self_kv: Vec<Option<KeyValues>>,
    /// Per layer, the encoder's keys/values `[B, heads, S, head_dim]`.
    cross: Vec<KeyValues>,
    /// Encoder padding `[B, 1, 1, S]`.
    padding: AttentionMask,
    selected: RowSelection,
}

enum DecoderMode {
    Cached(Box<DecoderCache>),
    Full { prefixes: Vec<Vec<i64>> },
}

/// [`StepModel`] over a [`CaptionDecoder`] and fixed encoder states; see
/// [`CaptionDecoder::stepper`].
pub struct DecoderStepper<'a> {
    decoder: &'a CaptionDecoder,
    encoder: Tensor<3>,
    encoder_mask: Tensor<2, Int>,
    /// Batch item of each row.
    items: Vec<usize>,
    /// Tokens fed per row so far.
    len: usize,
    mode: DecoderMode,
}

impl StepModel for DecoderStepper<'_> {
    fn rows(&self) -> usize {
        self.items.len()
    }

    fn vocab(&self) -> usize {
        self.decoder.token_embeddings.weight.dims()[0]
    }

    fn step(&mut self, tokens: &[i64], parents: &[usize]) -> Vec<f32> {
        let device = self.encoder.device();
        let n = tokens.len();
        let reorder = check_step(tokens, parents, self.items.len());
        self.items = parents.iter().map(|&p| self.items[p]).collect();
        let positions = self.decoder.position_embeddings.weight.dims()[0];
        let pos = self.len;
        assert!(
            pos < positions,
            "caption position {pos} is beyond the decoder's {positions} positions"
        );
        self.len += 1;
        if n == 0 {
            return Vec::new();
        }
        let decoder = self.decoder;
        let logits = match &mut self.mode {
            DecoderMode::Cached(cache) => {
                let DecoderCache {
                    self_kv,
                    cross,
                    padding,
                    selected,
                } = cache.as_mut();
                if selected.items != self.items {
                    let rows = index(&self.items, &device);
                    selected.cross = cross.iter().map(|kv| kv.select(rows.clone())).collect();
                    selected.padding = padding.select_rows(rows);
                    selected.items = self.items.clone();
                }
                let parents = reorder.then(|| index(parents, &device));
                let ids =
                    Tensor::<2, Int>::from_data(TensorData::new(tokens.to_vec(), [n, 1]), &device);
                let position = Tensor::<2, Int>::full([n, 1], pos as i64, &device);
                let mut x = decoder.layer_norm.forward(
                    decoder.token_embeddings.forward(ids)
                        + decoder.position_embeddings.forward(position),
                );
                for (l, layer) in decoder.layers.iter().enumerate() {
                    let past = self_kv[l].take().map(|kv| match &parents {
                        Some(rows) => kv.select(rows.clone()),
                        None => kv,
                    });
                    let (y, kv) = layer.self_attention.forward_cached(x, past, None);
                    self_kv[l] = Some(kv);
                    x = layer
                        .cross_attention
                        .forward_kv(y, &selected.cross[l], &selected.padding);
                    x = layer.ffn.forward(x);
                }
                decoder.project(x)
            }
            DecoderMode::Full { prefixes } => {
                *prefixes = parents
                    .iter()
                    .zip(tokens)
                    .map(|(&p, &t)| {
                        let mut prefix = prefixes[p].clone();
                        prefix.push(t);
                        prefix
                    })
                    .collect();
                let t = pos + 1;
                let flat: Vec<i64> = prefixes.iter().flatten().copied().collect();
                let captions = Tensor::<2, Int>::from_data(TensorData::new(flat, [n, t]), &device);
                let rows = index(&self.items, &device);
                let logits = decoder.forward(
                    captions,
                    self.encoder.clone().select(0, rows.clone()),
                    Some(self.encoder_mask.clone().select(0, rows)),
                );
                let v = logits.dims()[2];
                logits.narrow(1, t - 1, 1).reshape([n, v])
            }
        };
        host_log_softmax(logits)
    }
}
