//! Element-wise comparison of two tensors' values, shared by `tuwen parity` and every test that
//! compares outputs (`tuwen-testkit`).
//!
//! A non-finite value never hides: `f32::max` ignores NaN, so a fold with it lets an all-NaN
//! output pass any tolerance. Here a position where either side is non-finite counts as an
//! infinite difference, unless [`NonFinite::MustMatch`] allows the same non-finite value on
//! both sides (NaN vs NaN, +inf vs +inf).

use burn::tensor::TensorData;

/// What a non-finite value in either input means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinite {
    /// Any NaN or infinity is an infinite difference (the default).
    #[default]
    Reject,
    /// The same non-finite value on both sides is equal; any other is an infinite difference.
    MustMatch,
}

/// How two sequences of values differ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Difference {
    /// Largest absolute difference; `f32::INFINITY` when a non-finite value was rejected.
    pub max_abs: f32,
    /// Flat index where `max_abs` was first reached (`None` for empty inputs).
    pub at: Option<usize>,
    /// The two values at `at`.
    pub values: Option<(f32, f32)>,
}

impl Difference {
    /// Whether the values agree within `tol` (false whenever a non-finite value was rejected).
    pub fn within(&self, tol: f32) -> bool {
        self.max_abs <= tol
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.at, self.values) {
            (Some(i), Some((a, b))) => {
                write!(
                    f,
                    "max |diff| = {:e} at index {i} ({a} vs {b})",
                    self.max_abs
                )
            }
            _ => write!(f, "max |diff| = {:e}", self.max_abs),
        }
    }
}

/// Inputs that cannot be compared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    /// Different shapes.
    #[error("shape {actual:?}, expected {expected:?}")]
    Shape {
        /// Shape of the first input.
        actual: Vec<usize>,
        /// Shape of the second input.
        expected: Vec<usize>,
    },
    /// Values that cannot be read as f32 (quantized data, misaligned bytes).
    #[error("cannot read values as f32: {0}")]
    Read(String),
}

/// Compares `actual` with `expected` value by value.
pub fn slices(actual: &[f32], expected: &[f32], non_finite: NonFinite) -> Difference {
    assert_eq!(
        actual.len(),
        expected.len(),
        "compare::slices: inputs of different lengths"
    );
    let mut out = Difference {
        max_abs: 0.0,
        at: None,
        values: None,
    };
    for (i, (&a, &b)) in actual.iter().zip(expected).enumerate() {
        let d = element(a, b, non_finite);
        if out.at.is_none() || d > out.max_abs {
            out = Difference {
                max_abs: d,
                at: Some(i),
                values: Some((a, b)),
            };
        }
    }
    out
}

fn element(a: f32, b: f32, non_finite: NonFinite) -> f32 {
    if a.is_finite() && b.is_finite() {
        // Two huge finite values may differ by more than f32::MAX: that is an infinite
        // difference, which is right.
        return (a - b).abs();
    }
    let same = (a.is_nan() && b.is_nan()) || a == b;
    if same && non_finite == NonFinite::MustMatch {
        0.0
    } else {
        f32::INFINITY
    }
}

/// Compares two tensors' data (read back as f32), shapes first.
pub fn tensor_data(
    actual: &TensorData,
    expected: &TensorData,
    non_finite: NonFinite,
) -> Result<Difference, CompareError> {
    if actual.shape() != expected.shape() {
        return Err(CompareError::Shape {
            actual: actual.shape().to_vec(),
            expected: expected.shape().to_vec(),
        });
    }
    let read = |d: &TensorData| {
        d.clone()
            .try_into_vec_as::<f32>()
            .map_err(|e| CompareError::Read(format!("{e:?}")))
    };
    Ok(slices(&read(actual)?, &read(expected)?, non_finite))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_infinity_are_infinite_differences() {
        let nan = slices(&[f32::NAN, f32::NAN], &[1.0, 2.0], NonFinite::Reject);
        assert!(!nan.within(1e9), "{nan}");
        assert_eq!(nan.at, Some(0));
        let both_nan = slices(&[0.0, f32::NAN], &[0.0, f32::NAN], NonFinite::Reject);
        assert!(!both_nan.within(f32::MAX));
        let inf = slices(&[f32::INFINITY], &[f32::INFINITY], NonFinite::Reject);
        assert!(!inf.within(f32::MAX));
    }

    #[test]
    fn the_same_non_finite_value_matches_only_when_asked() {
        let a = [1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        assert!(slices(&a, &a, NonFinite::MustMatch).within(0.0));
        let b = [1.0, f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY];
        assert!(!slices(&a, &b, NonFinite::MustMatch).within(f32::MAX));
        let c = [1.0, 0.0, f32::INFINITY, f32::NEG_INFINITY];
        assert!(!slices(&a, &c, NonFinite::MustMatch).within(f32::MAX));
    }

    #[test]
    fn finite_values_give_the_largest_absolute_difference() {
        let d = slices(&[1.0, 2.0, 3.0], &[1.5, 2.0, 0.0], NonFinite::Reject);
        assert_eq!(d.max_abs, 3.0);
        assert_eq!(d.at, Some(2));
        assert!(d.within(3.0) && !d.within(2.9));
        let huge = slices(&[f32::MAX], &[-f32::MAX], NonFinite::Reject);
        assert!(!huge.within(f32::MAX));
    }

    #[test]
    fn shapes_must_agree() {
        let a = TensorData::new(vec![1.0f32; 6], [2, 3]);
        let b = TensorData::new(vec![1.0f32; 6], [3, 2]);
        assert!(matches!(
            tensor_data(&a, &b, NonFinite::Reject),
            Err(CompareError::Shape { .. })
        ));
        assert!(tensor_data(&a, &a, NonFinite::Reject).unwrap().within(0.0));
    }
}
