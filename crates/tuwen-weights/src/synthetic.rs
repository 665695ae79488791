//! Synthetic state dicts: deterministic, seed-defined weights that Python and Rust generate
//! identically, so a parity fixture for a large model (a ResNet-50 has 25M parameters) needs only
//! its tensor list and a seed instead of a 100 MB checkpoint.
//!
//! The fixture file `model.synthetic.json` is `{"seed": u64, "tensors": [[name, dtype, shape],
//! ...]}` in state-dict order. Values come from one splitmix64 stream over all tensors in that
//! order, `u = (next() >> 40) / 2^24` in [0, 1), shaped per tensor so that deep networks keep
//! activations of order one:
//!
//! | tensor | value |
//! |---|---|
//! | `*running_var` | `0.5 + u` |
//! | `*running_mean`, other 1-d `*bias` | `0.2 (u - 0.5)` |
//! | other 1-d `*weight` (norm scales) | `0.8 + 0.4 u` |
//! | n-d (n >= 2) | `(2u - 1) sqrt(3 / fan_in)`, `fan_in` = product of all but the first dim |
//! | int64 (counters) | `0` |
//!
//! The Python twin is `crates/tuwen-cli/tests/fixtures/parity/synthetic_weights.py`.

use std::path::Path;

use serde::Deserialize;

use crate::LoadError;

#[derive(Deserialize)]
struct Spec {
    seed: u64,
    tensors: Vec<(String, String, Vec<usize>)>,
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn value(name: &str, shape: &[usize], u: f32) -> f32 {
    if name.ends_with("running_var") {
        0.5 + u
    } else if name.ends_with("running_mean") || (shape.len() == 1 && name.ends_with("bias")) {
        0.2 * (u - 0.5)
    } else if shape.len() == 1 {
        0.8 + 0.4 * u
    } else {
        // A 0-d tensor has fan-in 1, as in the Python twin.
        let fan_in: usize = shape.get(1..).unwrap_or_default().iter().product();
        (2.0 * u - 1.0) * (3.0 / fan_in.max(1) as f32).sqrt()
    }
}

/// Most values a synthetic state dict may hold (512 MiB of f32; ResNet-50 has 25.6M). Shapes
/// come from the file: a corrupt one must not overflow or ask for terabytes.
pub const MAX_VALUES: usize = 1 << 27;

/// Builds the safetensors bytes of the synthetic state dict described by `spec_path`.
pub fn materialize(spec_path: &Path) -> Result<Vec<u8>, LoadError> {
    let spec: Spec = crate::read_json(spec_path)?;
    let err = |reason: String| LoadError::Format {
        path: spec_path.to_path_buf(),
        reason,
    };
    let mut rng = SplitMix64(spec.seed);
    let mut buffers: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut total = 0usize;
    let mut seen = std::collections::HashSet::new();
    for (name, dtype, shape) in spec.tensors {
        // `safetensors::serialize` panics on a repeated name.
        if !seen.insert(name.clone()) {
            return Err(err(format!("tensor {name} is listed twice")));
        }
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        total = n.map_or(usize::MAX, |n| total.saturating_add(n));
        let Some(n) = n.filter(|_| total <= MAX_VALUES) else {
            return Err(err(format!(
                "tensor {name}: shape {shape:?} takes the state dict past {MAX_VALUES} values"
            )));
        };
        let (dtype, bytes) = match dtype.as_str() {
            "F32" => {
                let mut bytes = Vec::with_capacity(4 * n);
                for _ in 0..n {
                    bytes.extend_from_slice(&value(&name, &shape, rng.uniform()).to_le_bytes());
                }
                (safetensors::Dtype::F32, bytes)
            }
            "I64" => (safetensors::Dtype::I64, vec![0u8; 8 * n]),
            other => return Err(err(format!("tensor {name}: unsupported dtype {other}"))),
        };
        buffers.push((name, dtype, shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| err(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // First outputs of splitmix64 seeded with 0 (Vigna's reference implementation).
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn absurd_shapes_and_repeated_names_are_errors_not_panics() {
        let path = std::env::temp_dir().join(format!(
            "tuwen-synthetic-{}-absurd.json",
            std::process::id()
        ));
        for shape in [
            "[18446744073709551615, 2]",
            "[4294967296]",
            "[65536, 65536]",
        ] {
            let spec = format!(r#"{{"seed": 1, "tensors": [["w", "F32", {shape}]]}}"#);
            std::fs::write(&path, spec).unwrap();
            let err = materialize(&path).unwrap_err().to_string();
            assert!(
                err.contains("past") && err.contains("-absurd.json"),
                "{err}"
            );
        }
        let spec =
            r#"{"seed": 1, "tensors": [["w", "F32", [2]], ["b", "F32", [2]], ["w", "F32", [3]]]}"#;
        std::fs::write(&path, spec).unwrap();
        let err = materialize(&path).unwrap_err().to_string();
        assert!(err.contains("tensor w is listed twice"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn values_follow_the_documented_shapes() {
        assert_eq!(value("bn.running_var", &[4], 0.0), 0.5);
        assert_eq!(value("bn.bias", &[4], 1.0), 0.1);
        assert_eq!(value("bn.weight", &[4], 0.5), 1.0);
        // 0-d: fan-in 1 (`synthetic_weights.py`).
        assert_eq!(value("scale", &[], 1.0), 3.0f32.sqrt());
        let w = value("conv.weight", &[8, 3, 3, 3], 1.0);
        assert!((w - (3.0f32 / 27.0).sqrt()).abs() < 1e-7);
    }
}
