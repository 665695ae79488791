//! `--device` names -> Burn devices. Only backends compiled into this binary are accepted.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// Backend names this binary was built with.
pub fn available() -> Vec<&'static str> {
    [
        cfg!(feature = "flex").then_some("flex"),
        cfg!(feature = "ndarray").then_some("ndarray"),
        cfg!(feature = "wgpu").then_some("wgpu"),
        cfg!(feature = "cuda").then_some("cuda"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The device called `name` (`flex`, `ndarray`, `wgpu`, `cuda`).
pub fn parse(name: &str) -> Result<Device> {
    let device = match name {
        #[cfg(feature = "flex")]
        "flex" => Device::flex(),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            use burn::tensor::{DeviceKind, DeviceType};
            let adapters = std::panic::catch_unwind(|| Device::enumerate(DeviceType::Wgpu).len())
                .unwrap_or_default();
            if adapters == 0 {
                bail!(
                    "no wgpu adapter found (on a machine without a GPU install mesa-vulkan-drivers)"
                );
            }
            Device::wgpu(DeviceKind::DefaultDevice)
        }
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        other => bail!(
            "unknown or not compiled-in device {other:?}; this build has: {}",
            available().join(", ")
        ),
    };
    Ok(device)
}
