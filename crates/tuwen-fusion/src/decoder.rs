//! A Transformer caption decoder for encoder-decoder (T5-style Seq2Seq) captioning over a fused
//! vision-language encoder: token + position embeddings, then layers of causal self-attention,
//! cross-attention to the encoder states, and a feed-forward block (post-LN, as the encoders), and
//! an output projection tied to the token embeddings.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use tuwen_fusion::decoder::DecoderConfig;
//! let device = Device::default();
//! let decoder = DecoderConfig::new(30522, 384, 384).init(&device);
//! let encoded = Tensor::<3>::zeros([1, 40, 384], &device);
//! let caption = Tensor::<2, Int>::from_ints([[101, 1037]], &device);
//! let logits = decoder.forward(caption, encoded.clone(), None);
//! let ids = decoder.generate_greedy(encoded, 101, 102, 20);
//! ```

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::AttentionMask;
use crate::blocks::{AttentionBlock, FeedForward, LayerDims};
use crate::cross::{CrossAttentionBlock, CrossDims};
use crate::mask::HF_MASK_VALUE;

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
        let [_, _, h] = x.dims();
        let vocab = self.token_embeddings.weight.val();
        let v = vocab.dims()[0];
        x.reshape([b * t, h])
            .matmul(vocab.transpose())
            .reshape([b, t, v])
    }

    /// Greedy decoding from `bos` until `eos` or `max_len` tokens, one sequence per batch row;
    /// finished rows are padded with `eos`. Returns the generated ids (without `bos`).
    pub fn generate_greedy(
        &self,
        encoder: Tensor<3>,
        bos: i64,
        eos: i64,
        max_len: usize,
    ) -> Vec<Vec<i64>> {
        let [b, _, _] = encoder.dims();
        let device = encoder.device();
        let mut tokens: Vec<Vec<i64>> = vec![vec![bos]; b];
        let mut done = vec![false; b];
        let limit = max_len.min(self.position_embeddings.weight.dims()[0] - 1);
        for _ in 0..limit {
            let t = tokens[0].len();
            let flat: Vec<i64> = tokens.iter().flatten().copied().collect();
            let input = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &device);
            let logits = self.forward(input, encoder.clone(), None);
            let [_, _, v] = logits.dims();
            let next: Vec<i64> = tuwen_weights::host::computed(
                logits
                    .narrow(1, t - 1, 1)
                    .reshape([b, v])
                    .argmax(1)
                    .into_data(),
                "next-token predictions",
            );
            for (row, &id) in next.iter().enumerate() {
                let id = if done[row] { eos } else { id };
                done[row] |= id == eos;
                tokens[row].push(id);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        tokens.into_iter().map(|mut t| t.split_off(1)).collect()
    }
}
