//! Reduced precision: inside [`with_bf16`], the Transformer's position-wise linear layers
//! ([`crate::blocks::linear_positions`]: attention projections, outputs, feed-forward, and
//! VisualBERT's visual projection) multiply in bfloat16 with f32 accumulation, as PyTorch's
//! `torch.autocast(dtype=bfloat16)` runs `nn.Linear`: inputs and weights rounded to bf16
//! (nearest even), products summed in f32, the bias added in f32. Everything else (embeddings,
//! LayerNorm, softmax, the per-head attention products, GELU, the loss, the optimiser's master
//! weights) stays f32, so masks and softmax need no half-precision care.
//!
//! Where it applies: CPU backends of a CPU with AVX512-BF16 (`tuwen_kernels::bf16`). Training
//! (autodiff, Flex: `[run] precision = "bf16"`) goes through a Burn backend extension of
//! tuwen's own whose backward runs its two products in bf16 as well; it needs tuwen-fusion's
//! `flex` feature (on in the `tuwen` CLI). Inference (Flex, ndarray) multiplies in host memory;
//! on Flex each weight is packed for the kernel once and kept while the thread's bf16 scope
//! lasts (keyed by the weight's buffer: the server's workers and `tuwen vqa` answer every
//! request in one scope). Only the Transformer's linear layers: the pooler and the task heads
//! (`Linear::forward`) stay f32. Elsewhere — a GPU backend (Burn's own dtypes are the way there), ndarray under
//! autodiff, a CPU without the instruction set — the scope changes nothing and the layers run in
//! f32; [`bf16_supported`] says which (`tuwen vqa --precision bf16` and `tuwen train` with bf16
//! refuse those cases).

use std::cell::Cell;
use std::rc::Rc;

use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use tuwen_kernels::bf16::{Operand, PackedB};

thread_local! {
    static BF16: Cell<bool> = const { Cell::new(false) };
}

/// Precision of the Transformer's linear layers (`[run] precision` of a training run, and
/// `--precision` of the inference commands).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 products with f32 accumulation ([`with_bf16`]).
    Bf16,
}

impl Precision {
    /// Its name in configurations and on the command line (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The precision of this thread's current scope.
    pub fn current() -> Self {
        if BF16.with(Cell::get) {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// Runs `f` in this precision: bf16 inside a [`with_bf16`] scope; f32 with the linear
    /// layers in f32 even inside an outer bf16 scope (restored when `f` ends).
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        scoped(self == Precision::Bf16, f)
    }

    /// Whether this precision runs on `device` ([`bf16_supported`]); the error says why not.
    pub fn check(self, device: &Device) -> Result<(), String> {
        if self == Precision::F32 || bf16_supported(device) {
            return Ok(());
        }
        let name = format!("{:?}", device.clone().inner());
        Err(if !cpu_has_bf16() {
            "bf16 needs a CPU with AVX512-BF16 (this one lacks it; emulating bf16 would be \
             slower than f32): use f32"
                .to_string()
        } else if device.is_autodiff() {
            format!(
                "bf16 training runs on Flex (this build: {}); {name} trains in f32",
                if cfg!(feature = "flex") {
                    "on"
                } else {
                    "tuwen-fusion's flex feature off"
                }
            )
        } else {
            format!("bf16 runs on the CPU backends (flex, ndarray), not on {name}: use f32")
        })
    }
}

/// Runs `f` with this thread's linear layers in bf16 where supported (see the module docs).
/// Scopes nest; the previous setting returns when `f` ends (or panics).
pub fn with_bf16<R>(f: impl FnOnce() -> R) -> R {
    scoped(true, f)
}

/// Runs `f` with this thread's bf16 flag set to `bf16`, restored when `f` ends (or panics);
/// the weights packed in a bf16 scope go when the thread leaves its last one.
fn scoped<R>(bf16: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16.with(|s| s.set(self.0));
            #[cfg(feature = "flex")]
            if !self.0 {
                crate::bf16_op::forget_packed_weights();
            }
        }
    }
    let _restore = Restore(BF16.with(|s| s.replace(bf16)));
    f()
}

/// Whether this CPU has the bf16 kernel's instructions (AVX512-F and AVX512-BF16).
pub fn cpu_has_bf16() -> bool {
    tuwen_kernels::bf16::available()
}

/// Whether a [`with_bf16`] scope runs tensors of `device` in bf16: Flex (with or without
/// autodiff, when tuwen-fusion's `flex` feature is on) or ndarray without autodiff, on a CPU with
/// AVX512-BF16.
pub fn bf16_supported(device: &Device) -> bool {
    let backend = if crate::host::is_flex(device) {
        cfg!(feature = "flex") || !device.is_autodiff()
    } else {
        crate::host::is_host(device) && !device.is_autodiff()
    };
    backend && cpu_has_bf16()
}

/// Whether this thread is inside a [`with_bf16`] scope and `device` supports it: the linear
/// layers on it run through [`linear_bf16`].
pub(crate) fn bf16_active(device: &Device) -> bool {
    BF16.with(Cell::get) && bf16_supported(device)
}

/// `a b` for `a` `[m, k]` and `b` `[k, n]` in bf16 with f32 sums: the one call of
/// `tuwen_kernels::bf16` (the Flex extension and the host path both come here).
pub(crate) fn bf16_product(a: Operand<'_>, m: usize, b: &PackedB) -> Vec<f32> {
    let mut out = vec![0.0; m * b.n()];
    tuwen_kernels::bf16::matmul(a, m, b, &mut out);
    out
}

/// `linear(x)` for `x` `[rows, d_in]` in bf16 (when [`bf16_active`]). Training (autodiff, Flex)
/// goes through the differentiable Flex operation; inference through host memory, the weight
/// packed once per scope ([`packed_weight`]).
pub(crate) fn linear_bf16(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if x.device().is_autodiff() {
        let out = crate::bf16_op::bf16_matmul(x, linear.weight.val());
        return match &linear.bias {
            Some(bias) => out + bias.val().unsqueeze_dim(0),
            None => out,
        };
    }
    linear_bf16_host(linear, x)
}

/// The f32 values of `data`, borrowed (no copy).
fn f32s<'a>(data: &'a TensorData, what: &str) -> &'a [f32] {
    data.as_slice()
        .unwrap_or_else(|e| panic!("{what}: the backend returned no f32 values: {e:?}"))
}

/// `linear`'s weight packed for the kernel: on Flex packed once per scope and kept
/// (`bf16_op::packed_weight`), elsewhere (ndarray) packed for this product.
fn packed_weight(linear: &Linear) -> Rc<PackedB> {
    let weight = linear.weight.val();
    #[cfg(feature = "flex")]
    if crate::host::is_flex(&weight.device()) {
        return crate::bf16_op::packed_weight(weight);
    }
    let [d_in, d_out] = weight.dims();
    let weight = weight.into_data();
    let w = f32s(&weight, "linear weight");
    Rc::new(PackedB::new(Operand::Rows(w), d_in, d_out))
}

/// [`linear_bf16`] for inference: `x` is taken by value (a tensor nothing else holds reads back
/// to the host without a copy), multiplied on the host and sent back with the f32 bias added.
fn linear_bf16_host(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    let device = x.device();
    let rows = x.dims()[0];
    let packed = packed_weight(linear);
    let d_out = packed.n();
    let input = x.into_data();
    let mut out = bf16_product(Operand::Rows(f32s(&input, "linear input")), rows, &packed);
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

    /// `device` when it runs bf16 here; `None`, said on stderr, on a CPU without AVX512-BF16.
    fn bf16_device(device: Device) -> Option<Device> {
        let supported = bf16_supported(&device);
        if !supported {
            eprintln!("this CPU lacks AVX512-BF16 (or the flex feature is off): nothing to check");
        }
        supported.then_some(device)
    }

    /// `a b` in f64 for row-major `a` `[m, k]`, `b` `[k, n]`.
    fn exact(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|t| f64::from(a[i * k + t]) * f64::from(b[t * n + j]))
                    .sum();
            }
        }
        out
    }

    fn rounded(t: Tensor<2>) -> Vec<f32> {
        let v: Vec<f32> = tuwen_weights::host::computed(t.into_data(), "test");
        v.into_iter().map(tuwen_kernels::bf16::round).collect()
    }

    /// `linear`'s exact bf16 output for `x` `[14, 48]`: the rounded operands' product in f64
    /// plus the f32 bias.
    fn exact_output(linear: &Linear, x: Tensor<2>) -> Vec<f64> {
        let mut out = exact(
            &rounded(x),
            &rounded(linear.weight.val().inner()),
            14,
            48,
            40,
        );
        let bias = linear.bias.as_ref().unwrap().val().inner().into_data();
        let bias: Vec<f32> = tuwen_weights::host::computed(bias, "bias");
        out.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += f64::from(bias[i % 40]));
        out
    }

    /// The largest difference of `got` from `want`, after checking each is within `tol`.
    fn check(got: Tensor<2>, want: &[f64], tol: f64, what: &str) -> f64 {
        let got: Vec<f32> = tuwen_weights::host::computed(got.into_data(), "test");
        assert_eq!(got.len(), want.len(), "{what}: sizes");
        let mut worst = 0.0f64;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let d = (f64::from(*g) - w).abs();
            assert!(d < tol, "{what}[{i}]: {g} vs {w}");
            worst = worst.max(d);
        }
        worst
    }

    /// In a scope the layer is `bf16(x) bf16(W)` summed in f32, plus the f32 bias.
    #[test]
    fn a_scope_multiplies_the_rounded_operands() {
        let Some(device) = bf16_device(Device::flex()) else {
            return;
        };
        let (linear, x) = layer_and_input(&device);
        let f32_out = linear_positions(&linear, x.clone()).reshape([14, 40]);
        let bf16_out = with_bf16(|| linear_positions(&linear, x.clone())).reshape([14, 40]);
        let want = exact_output(&linear, x.clone().reshape([14, 48]));
        check(bf16_out.clone(), &want, 1e-5, "y");
        let f32_values: Vec<f32> = tuwen_weights::host::computed(f32_out.into_data(), "f32");
        let f32_values: Vec<f64> = f32_values.into_iter().map(f64::from).collect();
        let worst_f32 = check(bf16_out, &f32_values, 1.0, "bf16 vs f32");
        assert!(worst_f32 > 1e-4, "the scope ran in f32 ({worst_f32})");
        // The scope ends with its closure.
        let after = values(linear_positions(&linear, x))
            .into_iter()
            .map(f64::from);
        assert_eq!(after.collect::<Vec<f64>>(), f32_values);
    }

    /// Training in bf16 on Flex: the forward is `bf16(x) bf16(W) + b`, and the backward's two
    /// products are bf16 too: `dx = bf16(dy) bf16(W)ᵀ`, `dW = bf16(x)ᵀ bf16(dy)` (sums in f32),
    /// as PyTorch's autocast differentiates `nn.Linear`. The f32 gradients differ.
    #[test]
    fn training_in_a_scope_differentiates_in_bf16() {
        let Some(device) = bf16_device(Device::flex().autodiff()) else {
            return;
        };
        let (linear, x) = layer_and_input(&device);
        let x = x.require_grad();
        let upstream = Tensor::<3>::random([2, 7, 40], Distribution::Normal(0.0, 1.0), &device);
        let grads_of = |bf16: bool| {
            let forward = || linear_positions(&linear, x.clone());
            let y = if bf16 { with_bf16(forward) } else { forward() };
            let out = y.clone().inner();
            let grads = (y * upstream.clone()).sum().backward();
            let dx = x.grad(&grads).expect("x has a gradient").reshape([14, 48]);
            let dw = linear.weight.val().grad(&grads).expect("W has a gradient");
            (out.reshape([14, 40]), dx, dw)
        };
        let (y16, dx16, dw16) = grads_of(true);
        let (y32, dx32, dw32) = grads_of(false);
        let x_rows = x.clone().inner().reshape([14, 48]);
        let want_y = exact_output(&linear, x_rows.clone());
        check(y16, &want_y, 1e-5, "y");
        let dy = rounded(upstream.inner().reshape([14, 40]));
        let w_t = rounded(linear.weight.val().inner().transpose());
        let x_t = rounded(x_rows.transpose());
        let want_dx = exact(&dy, &w_t, 14, 40, 48);
        let want_dw = exact(&x_t, &dy, 48, 14, 40);
        check(dx16, &want_dx, 1e-5, "dx");
        check(dw16, &want_dw, 1e-5, "dW");
        // The f32 run's gradients are not the bf16 ones.
        assert!(
            check(dx32, &want_dx, 1.0, "f32 dx") > 1e-4,
            "the f32 run's dx came out bf16"
        );
        assert!(
            check(dw32, &want_dw, 1.0, "f32 dW") > 1e-4,
            "the f32 run's dW came out bf16"
        );
        assert!(
            check(y32, &want_y, 1.0, "f32 y") > 1e-4,
            "the f32 run's y came out bf16"
        );
    }

    /// Packed weights follow the weights, not the parameter ids: two layers with one id and
    /// different weights (runs fine-tuned from one pretraining run) in one scope each multiply
    /// by their own, and a layer changed between two scopes by its new one.
    #[test]
    fn packed_weights_follow_the_weights_not_the_parameter_ids() {
        let Some(device) = bf16_device(Device::flex()) else {
            return;
        };
        let (linear, x) = layer_and_input(&device);
        let mut doubled = linear.clone();
        doubled.weight = doubled.weight.map(|w| w.mul_scalar(2.0));
        assert_eq!(doubled.weight.id, linear.weight.id, "the same parameter id");
        let bias: Vec<f32> =
            tuwen_weights::host::computed(linear.bias.as_ref().unwrap().val().into_data(), "bias");
        let check = |once: &[f32], twice: &[f32]| {
            for (i, (a, b)) in once.iter().zip(twice).enumerate() {
                let want = 2.0 * (a - bias[i % 40]) + bias[i % 40];
                assert!((b - want).abs() < 1e-4, "[{i}]: {b} vs {want}");
            }
        };
        let (once, twice) = with_bf16(|| {
            let once = values(linear_positions(&linear, x.clone()));
            (once, values(linear_positions(&doubled, x.clone())))
        });
        check(&once, &twice);
        let again = values(with_bf16(|| linear_positions(&doubled, x.clone())));
        check(&once, &again);
    }

    /// `Precision::F32.run` leaves an outer bf16 scope for its closure.
    #[test]
    fn an_f32_scope_inside_a_bf16_one_runs_f32() {
        let device = Device::flex();
        let (linear, x) = layer_and_input(&device);
        let f32_out = values(linear_positions(&linear, x.clone()));
        let inner = with_bf16(|| Precision::F32.run(|| linear_positions(&linear, x.clone())));
        assert_eq!(values(inner), f32_out);
        assert_eq!(Precision::current(), Precision::F32);
    }

    /// ndarray under autodiff has no bf16 operation: the scope runs the layer in f32.
    #[test]
    fn ndarray_training_stays_f32() {
        #[allow(deprecated)]
        let device = Device::ndarray().autodiff();
        assert!(!bf16_supported(&device));
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
            let packed = tuwen_kernels::bf16::PackedB::new(Operand::Rows(&w), d_in, d_out);
            let mut out = vec![0.0; 2176 * d_out];
            let start = Instant::now();
            for _ in 0..10 {
                tuwen_kernels::bf16::matmul(Operand::Rows(&host), 2176, &packed, &mut out);
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
