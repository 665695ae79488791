//! Multi-objective mixing: a weighted sum of every loss each step, or one task per step sampled
//! by ratio (UNITER's task mix). Every loss is reported separately for logging; empty losses
//! (nothing to learn from in this batch) are left out of the sum, never NaN.

use burn::tensor::Tensor;
use rand::Rng;

use crate::LossOutput;

/// A named loss term with its weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Weighted {
    /// Objective name (`mlm`, `itm`, ...).
    pub name: String,
    /// Weight in the sum (or sampling ratio).
    pub weight: f32,
}

/// The combined loss and the per-objective values for logging.
#[derive(Clone, Debug)]
pub struct Mixed {
    /// Weighted sum of the non-empty losses `[1]`.
    pub total: Tensor<1>,
    /// `(name, unweighted value, empty)` per objective, in the given order.
    pub parts: Vec<(String, f32, bool)>,
}

/// Weighted sum of `losses` (`(name, loss)`), each weighted by its entry in `weights` (1 when
/// absent).
///
/// # Panics
/// If `losses` is empty.
pub fn weighted_sum(losses: Vec<(&str, LossOutput)>, weights: &[Weighted]) -> Mixed {
    assert!(!losses.is_empty(), "no losses to mix");
    let device = losses[0].1.loss.device();
    let mut total = Tensor::<1>::zeros([1], &device);
    let mut parts = Vec::with_capacity(losses.len());
    for (name, loss) in losses {
        let value: f32 = loss.loss.clone().into_scalar();
        parts.push((name.to_string(), value, loss.empty));
        if loss.empty {
            continue;
        }
        let w = weights
            .iter()
            .find(|w| w.name == name)
            .map_or(1.0, |w| w.weight);
        total = total + loss.loss.mul_scalar(w);
    }
    Mixed { total, parts }
}

/// Samples one task name with probability proportional to its ratio.
///
/// # Panics
/// If `ratios` is empty or sums to zero.
pub fn sample_task<'a>(ratios: &'a [Weighted], rng: &mut impl Rng) -> &'a str {
    let total: f32 = ratios.iter().map(|w| w.weight.max(0.0)).sum();
    assert!(total > 0.0, "task ratios must sum to a positive value");
    let mut target = rng.random::<f32>() * total;
    for w in ratios {
        let r = w.weight.max(0.0);
        if target < r {
            return &w.name;
        }
        target -= r;
    }
    &ratios.last().expect("non-empty").name
}
