//! Typed command-line choices (`clap::ValueEnum`): `--device` names -> Burn devices (only
//! backends compiled into this binary are offered), `--backbone`, `--dtype`.

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;
use tuwen_regions::StoreDtype;

/// A backend compiled into this binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceName {
    /// Flex, the default CPU backend.
    #[cfg(feature = "flex")]
    Flex,
    /// ndarray (CPU).
    #[cfg(feature = "ndarray")]
    Ndarray,
    /// wgpu (Vulkan, Metal, DX12; Mesa's lavapipe on a CPU-only machine).
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// CUDA device 0.
    #[cfg(feature = "cuda")]
    Cuda,
}

/// Backend names this binary was built with.
pub fn available() -> Vec<String> {
    DeviceName::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
        .collect()
}

impl DeviceName {
    /// Opens the device (a wgpu device only when an adapter exists).
    pub fn open(self) -> Result<Device> {
        Ok(match self {
            #[cfg(feature = "flex")]
            DeviceName::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            DeviceName::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            DeviceName::Wgpu => {
                use burn::tensor::{DeviceKind, DeviceType};
                // Opening an adapter that does not exist panics inside wgpu; enumerate first.
                let adapters =
                    std::panic::catch_unwind(|| Device::enumerate(DeviceType::Wgpu).len())
                        .unwrap_or(0);
                if adapters == 0 {
                    bail!(
                        "no wgpu adapter found (on a machine without a GPU install \
                         mesa-vulkan-drivers)"
                    );
                }
                Device::wgpu(DeviceKind::DefaultDevice)
            }
            #[cfg(feature = "cuda")]
            DeviceName::Cuda => Device::cuda(0),
        })
    }
}

/// The device called `name` (`flex`, `ndarray`, `wgpu`, `cuda`; those compiled in).
pub fn parse(name: &str) -> Result<Device> {
    match DeviceName::from_str(name, true) {
        Ok(d) => d.open(),
        Err(_) => bail!(
            "unknown or not compiled-in device {name:?}; this build has: {}",
            available().join(", ")
        ),
    }
}

/// An ImageNet backbone with torchvision weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackboneName {
    /// MobileNetV2 (weights bundled with the assets).
    #[value(name = "mobilenet_v2")]
    MobileNetV2,
    /// ResNet-18.
    Resnet18,
    /// ResNet-34.
    Resnet34,
    /// ResNet-50.
    Resnet50,
    /// ResNet-101.
    Resnet101,
}

impl BackboneName {
    /// torchvision's name of the architecture.
    pub fn as_str(self) -> &'static str {
        match self {
            BackboneName::MobileNetV2 => "mobilenet_v2",
            BackboneName::Resnet18 => "resnet18",
            BackboneName::Resnet34 => "resnet34",
            BackboneName::Resnet50 => "resnet50",
            BackboneName::Resnet101 => "resnet101",
        }
    }
}

/// Feature store precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeName {
    /// Half precision.
    F16,
    /// Single precision.
    F32,
}

impl From<DtypeName> for StoreDtype {
    fn from(d: DtypeName) -> Self {
        match d {
            DtypeName::F16 => StoreDtype::F16,
            DtypeName::F32 => StoreDtype::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for b in BackboneName::value_variants() {
            let name = b.to_possible_value().unwrap();
            assert_eq!(name.get_name(), b.as_str());
        }
        assert!(available().contains(&"flex".to_string()));
        assert!(parse("tpu").unwrap_err().to_string().contains("flex"));
    }
}
