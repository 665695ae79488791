//! GELU computed by tuwen's own kernel on CPU backends.
//!
//! Burn's CPU backends evaluate GELU and its derivative one element at a time on one thread
//! (libm `erff`, ~13 ns per element on the development machine), which cost a MiniLM-size
//! training step more than its feed-forward matrix products. [`gelu`] reads the values to the
//! host and evaluates them with [`tuwen_kernels::gelu`] (vectorised, multithreaded, within a
//! few ulp of the exact erf form; in place for inference). Under autodiff it builds `x * slope + offset` from two
//! constants ([`tuwen_kernels::gelu::GeluLine`]): the same value, and the gradient
//! `grad * gelu'(x)` that Burn's GELU backward computes, with one multiplication. GPU
//! backends and other dtypes keep Burn's GELU.

use burn::tensor::activation;
use burn::tensor::{DType, Tensor, TensorData};

use crate::host::is_host;

/// The exact (erf) GELU `x Φ(x)` of every element of `x` (HF's `gelu`, Burn's `Gelu`).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !is_host(&device) || x.dtype() != DType::F32 {
        return activation::gelu(x);
    }
    let shape = x.shape();
    let constant =
        |values: Vec<f32>| Tensor::<D>::from_data(TensorData::new(values, shape.clone()), &device);
    if device.is_autodiff() {
        // The graph keeps `x`: its values are read back as a copy.
        let line = tuwen_kernels::gelu::gelu_line(&host_values(x.clone()));
        x * constant(line.slope) + constant(line.offset)
    } else {
        // A tensor nothing else holds reads back without a copy, is updated in place and goes
        // back without one either.
        let mut values = host_values(x);
        tuwen_kernels::gelu::gelu_in_place(&mut values);
        constant(values)
    }
}

/// The values of an F32 tensor on a host device, reusing its buffer when `x` holds the only
/// reference to it.
fn host_values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data()
        .try_into_vec::<f32>()
        .unwrap_or_else(|err| unreachable!("an F32 tensor reads back as f32: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    }

    #[test]
    fn matches_burns_gelu_value_and_gradient() {
        let device = Device::flex().autodiff();
        device.seed(1);
        let x = Tensor::<2>::random([64, 96], Distribution::Normal(0.0, 3.0), &device);
        let ours_x = x.clone().require_grad();
        let burns_x = x.require_grad();
        let ours = gelu(ours_x.clone());
        let burns = activation::gelu(burns_x.clone());
        let weights = Tensor::<2>::random([64, 96], Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (values(ours.clone()), values(burns.clone()));
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-6 + 1e-6 * b.abs(), "{a} vs {b}");
        }
        let ours_grad = (ours * weights.clone()).sum().backward();
        let burns_grad = (burns * weights).sum().backward();
        let a = values(ours_x.grad(&ours_grad).unwrap());
        let b = values(burns_x.grad(&burns_grad).unwrap());
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-5 + 1e-5 * b.abs(), "{a} vs {b}");
        }
    }

    #[test]
    fn inference_matches_burns_gelu() {
        let device = Device::flex();
        device.seed(2);
        let x = Tensor::<3>::random([4, 17, 33], Distribution::Normal(0.0, 2.0), &device);
        let a = values(gelu(x.clone()));
        let b = values(activation::gelu(x));
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-6 + 1e-6 * b.abs(), "{a} vs {b}");
        }
    }
}
