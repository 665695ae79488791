//! Dropout with fast, reproducible masks.
//!
//! [`dropout`] applies a `burn::nn::Dropout` module (its probability and train/eval flag, so
//! records and `model.valid()` behave as before) with the same gate as Burn's own forward:
//! only in train mode, on an autodiff device, with a positive probability.
//!
//! Where the mask comes from:
//! * Inside [`with_mask_seed`] (every training step: `tuwen_train::pretrain::step_gradients`
//!   runs each micro-batch in one), mask `n` of the scope is keyed by `(seed, n)` alone, on
//!   every backend. Nothing is drawn from a backend's global generator, so micro-batches on
//!   several devices run on their own threads at once and still give the same masks, whatever
//!   the interleaving. The mask is built on the host by [`tuwen_kernels::dropout_mask`] (a
//!   counter-based hash) and, on a GPU, uploaded (`4 x elements` bytes per call).
//! * Outside a scope, on a CPU backend (Flex, ndarray), the key is one draw from the device's
//!   generator (so `device.seed(..)` decides every mask); GPU backends keep Burn's on-device draw.
//!
//! Burn's `random_like(Bernoulli)` draws every element through a ChaCha stream and scales in two
//! more passes (~19 ns per element on the development machine, the largest non-matmul cost of a
//! training step with dropout: docs/benchmarks.md); the host mask is built and applied in one.

use std::cell::Cell;
use tuwen_kernels::splitmix64;

use burn::nn::Dropout;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use crate::host::is_host;

/// `module`'s dropout of `x` (see the module docs); `x` unchanged in eval mode, on a device
/// without autodiff, or with probability 0 — exactly when `Dropout::forward` is the identity.
pub fn dropout<const D: usize>(module: &Dropout, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !module.training.is_enabled() || !device.is_autodiff() || module.prob == 0.0 {
        return x;
    }
    let key = match scoped_key() {
        Some(key) => key,
        None if is_host(&device) => generator_key(&device),
        None => return module.forward(x),
    };
    let keep = (1.0 - module.prob) as f32;
    let shape = x.shape();
    let mask = tuwen_kernels::dropout_mask(key, shape.num_elements(), keep);
    x * Tensor::<D>::from_data(TensorData::new(mask, shape), &device)
}

/// The mask seed of this thread's innermost [`with_mask_seed`] scope and how many masks it has
/// keyed so far.
#[derive(Clone, Copy)]
struct MaskStream {
    seed: u64,
    drawn: u64,
}

thread_local! {
    static STREAM: Cell<Option<MaskStream>> = const { Cell::new(None) };
}

/// Runs `f` with the dropout masks of this thread keyed by `seed`: the `n`-th mask drawn inside
/// is a function of `(seed, n)` only (see the module docs). Scopes nest; the outer one continues
/// where it was when the inner one ends.
pub fn with_mask_seed<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<MaskStream>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STREAM.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(STREAM.with(|s| s.replace(Some(MaskStream { seed, drawn: 0 }))));
    f()
}

/// The key of the next mask of this thread's scope, if one is open.
fn scoped_key() -> Option<u64> {
    STREAM.with(|s| {
        let mut stream = s.get()?;
        let key = splitmix64(stream.seed ^ splitmix64(stream.drawn));
        stream.drawn += 1;
        s.set(Some(stream));
        Some(key)
    })
}

/// 48 random bits from the device's generator: the key of one mask outside a scope.
fn generator_key(device: &Device) -> u64 {
    let draw = Tensor::<1>::random([2], Distribution::Default, &device.clone().inner());
    let bits: Vec<u64> = draw
        .into_data()
        .iter::<f32>()
        // Default draws are uniform in [0, 1): 24 random bits each.
        .map(|v| (f64::from(v) * f64::from(1u32 << 24)) as u64)
        .collect();
    bits[0] | (bits[1] << 24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;

    #[test]
    fn drops_the_share_and_scales_the_rest() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let module = DropoutConfig::new(0.25).init();
        let x = Tensor::<2>::ones([256, 512], &device);
        let values: Vec<f32> = dropout(&module, x).into_data().iter::<f32>().collect();
        let kept: Vec<&f32> = values.iter().filter(|&&v| v != 0.0).collect();
        let share = kept.len() as f64 / values.len() as f64;
        assert!((share - 0.75).abs() < 5e-3, "{share}");
        assert!(kept.iter().all(|&&v| (v - 1.0 / 0.75).abs() < 1e-6));
    }

    #[test]
    fn the_device_seed_decides_the_mask_and_calls_differ() {
        let device = Device::flex().autodiff();
        let module = DropoutConfig::new(0.5).init();
        let draw = || -> Vec<f32> {
            let x = Tensor::<1>::ones([4096], &device);
            dropout(&module, x).into_data().iter::<f32>().collect()
        };
        device.seed(11);
        let (first, second) = (draw(), draw());
        device.seed(11);
        assert_eq!(draw(), first);
        assert_ne!(first, second);
    }

    #[test]
    fn identity_in_eval_mode_and_without_autodiff() {
        let module = DropoutConfig::new(0.5).init();
        let x = Tensor::<1>::ones([64], &Device::flex());
        let out: Vec<f32> = dropout(&module, x).into_data().iter::<f32>().collect();
        assert!(out.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn gradients_flow_through_kept_elements_only() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let module = DropoutConfig::new(0.5).init();
        let x = Tensor::<1>::ones([1024], &device).require_grad();
        let y = dropout(&module, x.clone());
        let out: Vec<f32> = y.clone().into_data().iter::<f32>().collect();
        let grads = y.sum().backward();
        let grad: Vec<f32> = x.grad(&grads).unwrap().into_data().iter::<f32>().collect();
        assert_eq!(grad, out);
    }

    /// Masks of a scope: a function of (seed, n) only — not of the device generator, the
    /// thread or the backend — and distinct for consecutive calls.
    #[test]
    fn a_scope_keys_its_masks_by_seed_and_count_alone() {
        let module = DropoutConfig::new(0.5).init();
        let draws = |device: Device| -> [Vec<f32>; 2] {
            let x = || Tensor::<1>::ones([2048], &device);
            let first = dropout(&module, x()).into_data().iter::<f32>().collect();
            let second = dropout(&module, x()).into_data().iter::<f32>().collect();
            [first, second]
        };
        let flex = Device::flex().autodiff();
        flex.seed(1);
        let reference = with_mask_seed(42, || draws(flex.clone()));
        assert_ne!(reference[0], reference[1]);
        flex.seed(2);
        assert_eq!(with_mask_seed(42, || draws(flex.clone())), reference);
        #[allow(deprecated)]
        let ndarray = Device::ndarray().autodiff();
        assert_eq!(with_mask_seed(42, || draws(ndarray.clone())), reference);
        assert_ne!(with_mask_seed(43, || draws(flex.clone()))[0], reference[0]);
        // Two threads at once, each in its own scope: the masks of sequential runs.
        let other = with_mask_seed(7, || draws(flex.clone()));
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| with_mask_seed(42, || draws(flex.clone())));
            let b = s.spawn(|| with_mask_seed(7, || draws(flex.clone())));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!((a, b), (reference.clone(), other));
        // A nested scope does not disturb the outer one's count.
        let nested = with_mask_seed(42, || {
            let x = || Tensor::<1>::ones([2048], &flex);
            let first: Vec<f32> = dropout(&module, x()).into_data().iter::<f32>().collect();
            with_mask_seed(9, || dropout(&module, x()));
            let second: Vec<f32> = dropout(&module, x()).into_data().iter::<f32>().collect();
            [first, second]
        });
        assert_eq!(nested, reference);
    }
}
