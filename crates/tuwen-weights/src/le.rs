//! Little-endian element bytes (safetensors data, BUTD base64 features, feature-store shards)
//! read as values: the one decoder of the workspace, by `bytemuck` slice casts (copied, so the
//! bytes need no alignment). A byte count that is not a whole number of
//! elements is an error, never a truncated or zero-padded result.

use burn::tensor::f16;

// The casts read the host's byte order; every tensor file tuwen reads is little-endian.
#[cfg(not(target_endian = "little"))]
compile_error!(
    "tuwen reads little-endian tensor data by casting: big-endian hosts are unsupported"
);

/// A byte count that is not a whole number of elements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{bytes} bytes is not a whole number of {element}-byte elements")]
pub struct LengthError {
    /// Bytes given.
    pub bytes: usize,
    /// Element size.
    pub element: usize,
}

fn cast<T: bytemuck::AnyBitPattern + bytemuck::NoUninit>(
    bytes: &[u8],
) -> Result<Vec<T>, LengthError> {
    let element = size_of::<T>();
    if !bytes.len().is_multiple_of(element) {
        return Err(LengthError {
            bytes: bytes.len(),
            element,
        });
    }
    Ok(bytemuck::pod_collect_to_vec(bytes))
}

/// f32 values.
pub fn f32s(bytes: &[u8]) -> Result<Vec<f32>, LengthError> {
    cast(bytes)
}

/// f16 values widened to f32 (read as their 16-bit patterns: `half`'s own `bytemuck` support
/// is a feature Burn's build does not enable).
pub fn f16s_to_f32(bytes: &[u8]) -> Result<Vec<f32>, LengthError> {
    Ok(cast::<u16>(bytes)?
        .into_iter()
        .map(|bits| f16::from_bits(bits).to_f32())
        .collect())
}

/// i64 values.
pub fn i64s(bytes: &[u8]) -> Result<Vec<i64>, LengthError> {
    cast(bytes)
}

/// i32 values.
pub fn i32s(bytes: &[u8]) -> Result<Vec<i32>, LengthError> {
    cast(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_odd_lengths_are_errors() {
        let v = [1.5f32, -2.0, 3.25];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(f32s(&bytes).unwrap(), v);
        // Unaligned input is fine (copied).
        let mut shifted = vec![0u8];
        shifted.extend(&bytes);
        assert_eq!(f32s(&shifted[1..]).unwrap(), v);
        assert!(f32s(&bytes[..5]).is_err());
        let h: Vec<u8> = [f16::from_f32(0.5), f16::from_f32(-4.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(f16s_to_f32(&h).unwrap(), vec![0.5, -4.0]);
        assert_eq!(i64s(&(-7i64).to_le_bytes()).unwrap(), vec![-7]);
        assert_eq!(i32s(&9i32.to_le_bytes()).unwrap(), vec![9]);
    }
}
