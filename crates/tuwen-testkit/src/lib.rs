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

/// Maximum absolute difference between two tensors of the same shape (read back as f32).
pub fn max_abs_diff<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f32 {
    let (da, db) = (a.to_data(), b.to_data());
    assert_eq!(da.shape(), db.shape(), "shape mismatch");
    let (va, vb) = (
        da.try_into_vec_as::<f32>().expect("f32 data"),
        db.try_into_vec_as::<f32>().expect("f32 data"),
    );
    va.iter()
        .zip(&vb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts that `actual` matches `expected` within `tol` (max absolute difference), naming `what`.
pub fn assert_close<const D: usize>(
    what: &str,
    actual: &Tensor<D>,
    expected: &Tensor<D>,
    tol: f32,
) {
    let diff = max_abs_diff(actual, expected);
    assert!(
        diff <= tol,
        "{what}: max |diff| = {diff:e} exceeds tolerance {tol:e}"
    );
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
