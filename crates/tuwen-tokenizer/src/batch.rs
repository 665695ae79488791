use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::Encoded;

/// A padded batch of encoded texts, as Burn tensors of shape `[batch, seq_len]`.
///
/// `attention_mask` follows the HF convention: 1 = real token (attend), 0 = padding.
#[derive(Clone, Debug)]
pub struct TextBatch {
    /// Token ids, padded with `[PAD]`.
    pub input_ids: Tensor<2, Int>,
    /// Segment ids (0 / 1), padded with 0.
    pub token_type_ids: Tensor<2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor<2, Int>,
    /// Unpadded length of each sequence.
    pub lengths: Vec<usize>,
}

impl TextBatch {
    /// Pads `encoded` to `len` tokens (sequences are assumed already truncated to `len`).
    pub fn from_encoded(encoded: &[Encoded], len: usize, pad_id: u32, device: &Device) -> Self {
        let batch = encoded.len();
        let mut ids = vec![i64::from(pad_id); batch * len];
        let mut types = vec![0i64; batch * len];
        let mut mask = vec![0i64; batch * len];
        let mut lengths = Vec::with_capacity(batch);
        for (row, enc) in encoded.iter().enumerate() {
            let n = enc.len().min(len);
            let base = row * len;
            for j in 0..n {
                ids[base + j] = i64::from(enc.ids[j]);
                types[base + j] = i64::from(enc.type_ids[j]);
                mask[base + j] = 1;
            }
            lengths.push(n);
        }
        let tensor =
            |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [batch, len]), device);
        Self {
            input_ids: tensor(ids),
            token_type_ids: tensor(types),
            attention_mask: tensor(mask),
            lengths,
        }
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    /// Padded sequence length.
    pub fn seq_len(&self) -> usize {
        self.input_ids.dims()[1]
    }
}
