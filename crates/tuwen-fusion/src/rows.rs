//! Helpers shared by the decoding steppers ([`crate::generate::StepModel`] implementations).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Checks one step's arguments against the `rows` a stepper holds; returns whether the cached
/// rows need reordering (`parents` is not `0..rows`).
///
/// # Panics
/// If `tokens` and `parents` differ in length or a parent is not a row.
pub(crate) fn check_step(tokens: &[i64], parents: &[usize], rows: usize) -> bool {
    assert_eq!(
        tokens.len(),
        parents.len(),
        "a step needs one parent per token"
    );
    if let Some(&p) = parents.iter().find(|&&p| p >= rows) {
        panic!("parent row {p} does not exist: the model holds {rows} rows");
    }
    parents.len() != rows || parents.iter().enumerate().any(|(i, &p)| i != p)
}

/// `rows` as an index tensor for `select`.
pub(crate) fn index(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let n = rows.len();
    Tensor::from_data(TensorData::new(rows, [n]), device)
}

/// Log-softmax of `logits` `[N, vocab]` over the vocabulary, read back row-major.
pub(crate) fn host_log_softmax(logits: Tensor<2>) -> Vec<f32> {
    tuwen_weights::host::computed(
        log_softmax(logits, 1).into_data(),
        "next-token log-probabilities",
    )
}
