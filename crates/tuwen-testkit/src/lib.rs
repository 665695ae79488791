//! Test support shared by tuwen's crates.
//!
//! * [`devices`] lists the backends a cross-backend test must agree on: Flex (the default CPU
//!   backend), ndarray (kept as an independent CPU reference) and wgpu (software Vulkan on a
//!   CPU-only machine).
//! * Strict mode (`TUWEN_STRICT_TESTS=1`, set by `cargo xtask test` and therefore by CI) turns
//!   every "this test needs X and X is missing" into a failure. Outside strict mode such a test is
//!   skipped with a printed reason, never silently passed.
//! * [`assert_close`] compares tensors with a stated tolerance and reports where they differ.

use burn::Tensor;
use burn::tensor::Device;
pub use tuwen_weights::compare::{self, Difference, NonFinite};

/// Environment variable that makes missing prerequisites (wgpu adapter, assets) test failures.
pub const STRICT_ENV: &str = "TUWEN_STRICT_TESTS";

/// Whether tests run in strict (CI) mode.
pub fn strict() -> bool {
    std::env::var(STRICT_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A missing prerequisite: panics in strict mode, otherwise prints why the test is skipped.
///
/// Returns normally only outside strict mode; callers then `return` from the test.
pub fn skip_or_fail(test: &str, reason: &str) {
    if strict() {
        panic!("{test}: {reason} ({STRICT_ENV} is set, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {reason} (set {STRICT_ENV}=1 to make this a failure)");
}

/// A backend under test.
#[derive(Clone, Debug)]
pub struct NamedDevice {
    /// Short backend name (`flex`, `ndarray`, `wgpu`).
    pub name: &'static str,
    /// The device.
    pub device: Device,
}

/// The Flex CPU device, tuwen's default backend.
#[cfg(feature = "flex")]
pub fn flex() -> Device {
    Device::flex()
}

/// The wgpu device, if an adapter exists. `None` when this machine has no usable adapter (on a
/// CPU-only Linux machine install `mesa-vulkan-drivers` for lavapipe).
#[cfg(feature = "wgpu")]
pub fn wgpu() -> Option<Device> {
    use burn::tensor::{DeviceKind, DeviceType};
    // Opening an adapter that does not exist panics inside wgpu; enumerate first.
    let found =
        std::panic::catch_unwind(|| Device::enumerate(DeviceType::Wgpu).len()).unwrap_or_default();
    (found > 0).then(|| Device::wgpu(DeviceKind::DefaultDevice))
}

/// Every backend compiled into this test binary that is usable on this machine.
///
/// A compiled-in backend that cannot be opened (no wgpu adapter) is reported through
/// [`skip_or_fail`]: a failure in strict mode.
#[allow(unused_mut)]
pub fn devices(test: &str) -> Vec<NamedDevice> {
    let mut out = Vec::new();
    #[cfg(feature = "flex")]
    out.push(NamedDevice {
        name: "flex",
        device: flex(),
    });
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    out.push(NamedDevice {
        name: "ndarray",
        device: Device::ndarray(),
    });
    #[cfg(feature = "wgpu")]
    match wgpu() {
        Some(device) => out.push(NamedDevice {
            name: "wgpu",
            device,
        }),
        None => skip_or_fail(
            test,
            "no wgpu adapter on this machine (install mesa-vulkan-drivers)",
        ),
    }
    out
}

/// How `a` differs from `b` (same shape; read back as f32). A position where either side is
/// NaN or infinite is an infinite difference (`f32::max` would ignore a NaN: an all-NaN output
/// must never pass); see [`assert_close_non_finite_equal`] for outputs that legitimately hold
/// the same non-finite values.
pub fn difference<const D: usize>(
    a: &Tensor<D>,
    b: &Tensor<D>,
    non_finite: NonFinite,
) -> Difference {
    compare::tensor_data(&a.to_data(), &b.to_data(), non_finite)
        .unwrap_or_else(|e| panic!("cannot compare tensors: {e}"))
}

/// Maximum absolute difference between two tensors of the same shape (read back as f32);
/// `f32::INFINITY` when either holds a NaN or an infinity.
pub fn max_abs_diff<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f32 {
    difference(a, b, NonFinite::Reject).max_abs
}

/// Maximum absolute difference between two sequences of values (same length); `f32::INFINITY`
/// when either holds a NaN or an infinity.
pub fn max_abs_diff_slices(a: &[f32], b: &[f32]) -> f32 {
    compare::slices(a, b, NonFinite::Reject).max_abs
}

/// Asserts that `actual` matches `expected` within `tol` (max absolute difference), naming
/// `what`. Fails on any NaN or infinity in either tensor.
pub fn assert_close<const D: usize>(
    what: &str,
    actual: &Tensor<D>,
    expected: &Tensor<D>,
    tol: f32,
) {
    let diff = difference(actual, expected, NonFinite::Reject);
    assert!(diff.within(tol), "{what}: {diff} exceeds tolerance {tol:e}");
}

/// [`assert_close`] for outputs that hold non-finite values by design (a fully masked softmax
/// row, an `f32::MIN` fill): the same non-finite value on both sides is equal; any other
/// non-finite value still fails.
pub fn assert_close_non_finite_equal<const D: usize>(
    what: &str,
    actual: &Tensor<D>,
    expected: &Tensor<D>,
    tol: f32,
) {
    let diff = difference(actual, expected, NonFinite::MustMatch);
    assert!(diff.within(tol), "{what}: {diff} exceeds tolerance {tol:e}");
}

/// `relative` under the directory of the package whose test is running, read from
/// `CARGO_MANIFEST_DIR` at run time (cargo sets it for tests): unlike `env!`, this does not bake
/// the checkout's path into a test binary that another checkout sharing the target directory
/// may reuse.
pub fn package_path(relative: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .expect("CARGO_MANIFEST_DIR is set by cargo when it runs tests");
    std::path::PathBuf::from(dir).join(relative)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;

    fn tensor(values: &[f32]) -> Tensor<1> {
        Tensor::from_floats(values, &flex())
    }

    #[test]
    #[should_panic(expected = "exceeds tolerance")]
    fn an_all_nan_output_fails() {
        let nan = tensor(&[f32::NAN; 4]);
        assert_close("nan", &nan, &tensor(&[0.0; 4]), 1e-4);
    }

    #[test]
    #[should_panic(expected = "exceeds tolerance")]
    fn nan_on_both_sides_fails_by_default() {
        let nan = tensor(&[1.0, f32::NAN]);
        assert_close("nan", &nan, &nan, 1e-4);
    }

    #[test]
    #[should_panic(expected = "exceeds tolerance")]
    fn an_infinity_against_a_finite_value_fails() {
        let inf = tensor(&[1.0, f32::INFINITY]);
        assert_close_non_finite_equal("inf", &inf, &tensor(&[1.0, 3.0]), 1e-4);
    }

    #[test]
    fn the_same_non_finite_values_pass_only_where_a_test_says_so() {
        let a = tensor(&[1.0, f32::NAN, f32::NEG_INFINITY]);
        assert_close_non_finite_equal("same", &a, &a.clone(), 0.0);
        assert_eq!(max_abs_diff(&a, &a), f32::INFINITY);
        assert_eq!(max_abs_diff_slices(&[f32::NAN], &[f32::NAN]), f32::INFINITY);
    }

    #[test]
    fn finite_differences_are_measured() {
        let d = max_abs_diff(&tensor(&[1.0, 2.0]), &tensor(&[1.0, 2.5]));
        assert_eq!(d, 0.5);
        assert_close("ok", &tensor(&[1.0]), &tensor(&[1.00001]), 1e-4);
    }
}
