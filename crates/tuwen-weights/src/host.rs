//! Reading tensor values back to the host: the one place that turns a [`TensorData`] into a
//! `Vec`, so a failed conversion is never mistaken for zeros or an empty result.

use burn::tensor::{Element, TensorData};

/// Tensor values that cannot be read as the requested element type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {what} ({dtype:?}, shape {shape:?}) as {target}: {reason}")]
pub struct ReadBackError {
    /// What was read.
    pub what: String,
    /// Stored element type.
    pub dtype: burn::tensor::DType,
    /// Shape of the tensor.
    pub shape: Vec<usize>,
    /// Requested element type.
    pub target: &'static str,
    /// Burn's reason.
    pub reason: String,
}

/// The values of `data` as `T` (converting between element types as Burn does).
pub fn values<T: Element>(data: TensorData, what: &str) -> Result<Vec<T>, ReadBackError> {
    let (dtype, shape) = (data.dtype(), data.shape().to_vec());
    data.try_into_vec_as::<T>().map_err(|e| ReadBackError {
        what: what.to_string(),
        dtype,
        shape,
        target: std::any::type_name::<T>(),
        reason: format!("{e:?}"),
    })
}

/// [`values`] for tensors the caller computed itself (an `argmax`, a `softmax` of its own
/// logits), where a failure is a backend defect, not bad input.
///
/// # Panics
/// With the [`ReadBackError`] message when the backend returned values that cannot be read.
pub fn computed<T: Element>(data: TensorData, what: &str) -> Vec<T> {
    values(data, what).unwrap_or_else(|e| panic!("backend returned unreadable values: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_between_element_types() {
        let data = TensorData::new(vec![1i64, 2, 3], [3]);
        assert_eq!(values::<f32>(data, "ids").unwrap(), vec![1.0, 2.0, 3.0]);
    }
}
