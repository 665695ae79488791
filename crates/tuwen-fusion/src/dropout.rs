//! Dropout with fast masks on CPU backends.
//!
//! [`dropout`] applies a `burn::nn::Dropout` module (its probability and train/eval flag, so
//! records and `model.valid()` behave as before) with the same gate as Burn's own forward:
//! only in train mode, on an autodiff device, with a positive probability. On a CPU backend
//! (Flex, ndarray) the mask comes from [`tuwen_kernels::dropout_mask`], keyed by one draw from
//! the device's generator, so `device.seed(..)` still decides every mask and runs stay
//! reproducible; the mask is built on the host and multiplied in one pass. Burn's
//! `random_like(Bernoulli)` draws every element through a ChaCha stream and scales in two more
//! passes (~19 ns per element on the development machine, the largest non-matmul cost of a
//! training step with dropout: docs/benchmarks.md). GPU backends keep Burn's on-device draw
//! (no mask upload).

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
    if !is_host(&device) {
        return module.forward(x);
    }
    let keep = (1.0 - module.prob) as f32;
    let shape = x.shape();
    let mask = tuwen_kernels::dropout_mask(mask_key(&device), shape.num_elements(), keep);
    x * Tensor::<D>::from_data(TensorData::new(mask, shape), &device)
}

/// 48 random bits from the device's generator: the key of one mask.
fn mask_key(device: &Device) -> u64 {
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
}
