//! Reduced precision for inference: inside [`with_bf16`], the Transformer's position-wise linear
//! layers ([`crate::blocks::linear_positions`]: attention projections, outputs, feed-forward, and
//! VisualBERT's visual projection) multiply in bfloat16 with f32 accumulation, as PyTorch's `torch.autocast(dtype=bfloat16)`
//! runs `nn.Linear`: inputs and weights rounded to bf16 (nearest even), products summed in f32,
//! the bias added in f32. Everything else (embeddings, LayerNorm, softmax, the per-head
//! attention products, GELU) stays f32, so masks and softmax need no half-precision care.
//!
//! Where it applies: inference (tensors not tracked by autodiff) on a CPU backend (Flex,
//! ndarray) of a CPU with AVX512-BF16 (`tuwen_kernels::bf16`): the layer's input and weight are
//! read to the host, multiplied there, and the result is a tensor on the input's device.
//! Elsewhere — under autodiff (training), on a GPU backend (Burn's own dtypes are the way there),
//! on a CPU without the instruction set — the scope changes nothing and the layers run in f32;
//! [`bf16_supported`] says which (`tuwen vqa --precision bf16` refuses those cases).

use std::cell::Cell;

use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};

thread_local! {
    static BF16: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's linear layers in bf16 where supported (see the module docs).
/// Scopes nest; the previous setting returns when `f` ends (or panics).
pub fn with_bf16<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(BF16.with(|s| s.replace(true)));
    f()
}

/// Whether this CPU has the bf16 kernel's instructions (AVX512-F and AVX512-BF16).
pub fn cpu_has_bf16() -> bool {
    tuwen_kernels::bf16::available()
}

/// Whether a [`with_bf16`] scope runs tensors of `device` in bf16: a CPU backend (Flex,
/// ndarray) without autodiff, on a CPU with AVX512-BF16.
pub fn bf16_supported(device: &Device) -> bool {
    !device.is_autodiff() && crate::host::is_host(device) && cpu_has_bf16()
}

/// Whether this thread is inside a [`with_bf16`] scope and `device` supports it: the linear
/// layers on it run through [`linear_bf16`].
pub(crate) fn bf16_active(device: &Device) -> bool {
    BF16.with(Cell::get) && bf16_supported(device)
}

/// The f32 values of `data`, borrowed (no copy).
fn f32s<'a>(data: &'a TensorData, what: &str) -> &'a [f32] {
    data.as_slice()
        .unwrap_or_else(|e| panic!("{what}: the backend returned no f32 values: {e:?}"))
}

/// `linear(x)` for `x` `[rows, d_in]` in bf16 (when [`bf16_active`]). `x` is taken by value:
/// a tensor nothing else holds reads back to the host without a copy.
pub(crate) fn linear_bf16(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    let device = x.device();
    let [rows, d_in] = x.dims();
    let weight = linear.weight.val().into_data();
    let d_out = weight.shape()[1];
    let packed = tuwen_kernels::bf16::PackedB::new(f32s(&weight, "linear weight"), d_in, d_out);
    let input = x.into_data();
    let mut out = vec![0.0; rows * d_out];
    tuwen_kernels::bf16::matmul(f32s(&input, "linear input"), rows, &packed, &mut out);
    if let Some(bias) = &linear.bias {
        let bias = bias.val().into_data();
        let bias = f32s(&bias, "linear bias");
        out.chunks_mut(d_out)
            .for_each(|row| row.iter_mut().zip(bias).for_each(|(o, b)| *o += b));
    }
    Tensor::from_data(TensorData::new(out, [rows, d_out]), &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::linear_positions;
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    fn layer_and_input(device: &Device) -> (Linear, Tensor<3>) {
        device.seed(3);
        let linear = LinearConfig::new(48, 40).init(device);
        let x = Tensor::<3>::random([2, 7, 48], Distribution::Normal(0.0, 1.0), device);
        (linear, x)
    }

    fn values(t: Tensor<3>) -> Vec<f32> {
        tuwen_weights::host::computed(t.into_data(), "test")
    }

    /// In a scope the layer is `bf16(x) bf16(W)` summed in f32, plus the f32 bias.
    #[test]
    fn a_scope_multiplies_the_rounded_operands() {
        let device = Device::flex();
        if !bf16_supported(&device) {
            eprintln!("this CPU lacks AVX512-BF16: nothing to compare");
            return;
        }
        let (linear, x) = layer_and_input(&device);
        let f32_out = values(linear_positions(&linear, x.clone()));
        let bf16_out = values(with_bf16(|| linear_positions(&linear, x.clone())));
        let round = |t: Tensor<2>| -> Vec<f32> {
            let v: Vec<f32> = tuwen_weights::host::computed(t.into_data(), "test");
            v.into_iter().map(tuwen_kernels::bf16::round).collect()
        };
        let xs = round(x.clone().reshape([14, 48]));
        let w = round(linear.weight.val());
        let bias = linear.bias.as_ref().unwrap().val().into_data();
        let b: Vec<f32> = tuwen_weights::host::computed(bias, "test");
        let mut worst_f32 = 0.0f32;
        for i in 0..14 {
            for j in 0..40 {
                let exact: f64 = (0..48)
                    .map(|t| f64::from(xs[i * 48 + t]) * f64::from(w[t * 40 + j]))
                    .sum::<f64>()
                    + f64::from(b[j]);
                let got = bf16_out[i * 40 + j];
                assert!(
                    (f64::from(got) - exact).abs() < 1e-5,
                    "({i}, {j}): {got} vs {exact}"
                );
                worst_f32 = worst_f32.max((got - f32_out[i * 40 + j]).abs());
            }
        }
        assert!(worst_f32 > 1e-4, "the scope ran in f32 ({worst_f32})");
        // The scope ends with its closure.
        assert_eq!(values(linear_positions(&linear, x)), f32_out);
    }

    /// Training is untouched: under autodiff the scope runs the layer in f32.
    #[test]
    fn autodiff_tensors_stay_f32() {
        let device = Device::flex().autodiff();
        let (linear, x) = layer_and_input(&device);
        let f32_out = values(linear_positions(&linear, x.clone()));
        let scoped = values(with_bf16(|| linear_positions(&linear, x)));
        assert_eq!(scoped, f32_out);
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::blocks::linear_positions;
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;
    use std::time::Instant;

    /// Timing, not a check: `cargo test --workspace --lib -- --ignored --nocapture linear_timing`.
    #[test]
    #[ignore = "timing: prints figures"]
    fn linear_timing() {
        let device = Device::flex();
        for (d_in, d_out) in [(384, 384), (384, 1536), (1536, 384)] {
            let linear = LinearConfig::new(d_in, d_out).init(&device);
            let x = Tensor::<3>::random([32, 68, d_in], Distribution::Normal(0.0, 1.0), &device);
            let time = |f: &dyn Fn() -> Tensor<3>| {
                let _ = f().into_data();
                let start = Instant::now();
                for _ in 0..10 {
                    let _ = f().into_data();
                }
                start.elapsed().as_secs_f64() * 100.0
            };
            let f32_ms = time(&|| linear_positions(&linear, x.clone()));
            let bf16_ms = time(&|| with_bf16(|| linear_positions(&linear, x.clone())));
            let start = Instant::now();
            for _ in 0..10 {
                let _: Vec<f32> = tuwen_weights::host::computed(x.clone().into_data(), "x");
            }
            let read_ms = start.elapsed().as_secs_f64() * 100.0;
            let host: Vec<f32> = tuwen_weights::host::computed(x.clone().into_data(), "x");
            let w: Vec<f32> = tuwen_weights::host::computed(linear.weight.val().into_data(), "w");
            let packed = tuwen_kernels::bf16::PackedB::new(&w, d_in, d_out);
            let mut out = vec![0.0; 2176 * d_out];
            let start = Instant::now();
            for _ in 0..10 {
                tuwen_kernels::bf16::matmul(&host, 2176, &packed, &mut out);
            }
            let kernel_ms = start.elapsed().as_secs_f64() * 100.0;
            let start = Instant::now();
            for _ in 0..10 {
                let t =
                    Tensor::<2>::from_data(TensorData::new(out.clone(), [2176, d_out]), &device);
                let _ = t.into_data();
            }
            let write_ms = start.elapsed().as_secs_f64() * 100.0;
            println!(
                "2176 x {d_in} -> {d_out}: f32 {f32_ms:.2} ms, bf16 {bf16_ms:.2} ms (read x {read_ms:.2}, kernel {kernel_ms:.2}, clone+upload+read out {write_ms:.2})"
            );
        }
    }
}
