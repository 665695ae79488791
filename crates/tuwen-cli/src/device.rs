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

/// One device of a compiled-in backend, by name and optional index: `flex`, `ndarray`, `wgpu`
/// (the default adapter), `wgpu:N` (the N-th adapter `tuwen devices` lists), `cuda`, `cuda:N`,
/// and `wgpu:local` / `cuda:local`: the GPU whose index is this process's rank on its node in an
/// MPI job (`OMPI_COMM_WORLD_LOCAL_RANK`; 0 outside one), so `mpirun -np 4 tuwen train --device
/// cuda:local` gives each rank of a 4-GPU node its own GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The backend.
    pub backend: DeviceName,
    /// Which of its devices (`None`: the default one).
    pub index: Option<DeviceIndex>,
}

/// Which device of a backend `--device NAME:INDEX` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceIndex {
    /// That index.
    Number(usize),
    /// This process's rank on its node (`local`).
    LocalRank,
}

impl DeviceIndex {
    /// The index: `LocalRank` read from Open MPI's `OMPI_COMM_WORLD_LOCAL_RANK` (0 when the
    /// process was not started by mpirun).
    pub fn resolve(self) -> Result<usize> {
        match self {
            DeviceIndex::Number(i) => Ok(i),
            DeviceIndex::LocalRank => match std::env::var("OMPI_COMM_WORLD_LOCAL_RANK") {
                Err(_) => Ok(0),
                Ok(text) => text.trim().parse().map_err(|_| {
                    anyhow::anyhow!("OMPI_COMM_WORLD_LOCAL_RANK = {text:?} is not a rank")
                }),
            },
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, index) = match text.split_once(':') {
            Some((name, "local")) => (name, Some(DeviceIndex::LocalRank)),
            Some((name, index)) => {
                let index = index.parse::<usize>().map_err(|_| {
                    format!(
                        "{text:?}: the device index after ':' must be a number or `local` \
                         (e.g. wgpu:1, cuda:local)"
                    )
                })?;
                (name, Some(DeviceIndex::Number(index)))
            }
            None => (text, None),
        };
        let backend = DeviceName::from_str(name, true).map_err(|_| {
            format!(
                "unknown or not compiled-in device {name:?}; this build has: {} (with :N for \
                 a GPU's index; `tuwen devices` lists them)",
                available().join(", ")
            )
        })?;
        Ok(Self { backend, index })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .backend
            .to_possible_value()
            .map_or_else(String::new, |p| p.get_name().to_string());
        match self.index {
            Some(DeviceIndex::Number(i)) => write!(f, "{name}:{i}"),
            Some(DeviceIndex::LocalRank) => write!(f, "{name}:local"),
            None => write!(f, "{name}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device; an error naming what exists when the index does not.
    pub fn open(self) -> Result<Device> {
        let Some(index) = self.index else {
            return self.backend.open();
        };
        let local = match index {
            DeviceIndex::LocalRank => " (this process's local rank)",
            DeviceIndex::Number(_) => "",
        };
        let index = index.resolve()?;
        match self.backend {
            #[cfg(feature = "wgpu")]
            DeviceName::Wgpu => {
                let adapters = wgpu_adapters();
                match adapters.get(index) {
                    Some(device) => Ok(device.clone()),
                    None => bail!(
                        "no wgpu adapter {index}{local}: this machine has {} (`tuwen devices` \
                         lists them)",
                        adapters.len()
                    ),
                }
            }
            #[cfg(feature = "cuda")]
            DeviceName::Cuda => Ok(Device::cuda(index)),
            #[allow(unreachable_patterns)]
            _ => bail!("{self}: this backend has one device; name it without an index"),
        }
    }
}

/// The wgpu adapters of this machine, in the order `wgpu:N` counts them (none when wgpu finds
/// no adapter: it panics inside then, which is caught).
#[cfg(feature = "wgpu")]
fn wgpu_adapters() -> Vec<Device> {
    use burn::tensor::DeviceType;
    std::panic::catch_unwind(|| Device::enumerate(DeviceType::Wgpu).to_vec()).unwrap_or_default()
}

/// What `tuwen devices` prints: one line per device this build can train on.
pub fn list_devices() -> Vec<String> {
    let mut lines = Vec::new();
    #[cfg(feature = "flex")]
    lines.push(format!(
        "flex      CPU (Flex, the default; {} threads)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    #[cfg(feature = "ndarray")]
    lines.push("ndarray   CPU (ndarray)".to_string());
    #[cfg(feature = "wgpu")]
    {
        let adapters = wgpu_adapters();
        if adapters.is_empty() {
            lines.push(
                "wgpu      no adapter found (install a Vulkan driver, e.g. mesa-vulkan-drivers)"
                    .into(),
            );
        }
        for (i, device) in adapters.iter().enumerate() {
            let name = device
                .identity()
                .map_or_else(|| format!("{device:?}"), |id| id.name.to_string());
            lines.push(format!("{:<9} {name}", format!("wgpu:{i}")));
        }
    }
    #[cfg(feature = "cuda")]
    {
        use burn::tensor::DeviceType;
        let n = std::panic::catch_unwind(|| Device::enumerate(DeviceType::Cuda).len()).unwrap_or(0);
        if n == 0 {
            lines.push("cuda      no CUDA device found".into());
        }
        for i in 0..n {
            lines.push(format!("{:<9} CUDA device {i}", format!("cuda:{i}")));
        }
    }
    #[cfg(not(feature = "cuda"))]
    lines.push("cuda      not compiled in (build tuwen-cli with --features cuda)".into());
    lines
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

/// Precision of the Transformer's linear layers at inference (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 products with f32 accumulation (PyTorch's bf16 autocast for `nn.Linear`), on the
    /// CPU backends of a CPU with AVX512-BF16 (`tuwen_fusion::precision`).
    Bf16,
}

impl Precision {
    /// Whether this precision runs on `device`: bf16 is refused on a GPU backend (it would move
    /// every layer's data through host memory) and on a CPU without AVX512-BF16.
    pub fn check(self, device: DeviceName) -> Result<()> {
        if self == Precision::F32 {
            return Ok(());
        }
        let cpu = match device {
            #[cfg(feature = "flex")]
            DeviceName::Flex => true,
            #[cfg(feature = "ndarray")]
            DeviceName::Ndarray => true,
            #[allow(unreachable_patterns)]
            _ => false,
        };
        if !cpu {
            bail!(
                "--precision bf16 runs on the CPU backends (flex, ndarray); on {device:?} use \
                 --precision f32"
            );
        }
        if !tuwen_fusion::precision::cpu_has_bf16() {
            bail!(
                "--precision bf16 needs a CPU with AVX512-BF16 (this one lacks it; emulating \
                 bf16 would be slower than f32): use --precision f32"
            );
        }
        Ok(())
    }

    /// Runs `f` with the linear layers in this precision on `device` (after [`Self::check`]).
    pub fn run<R>(self, device: DeviceName, f: impl FnOnce() -> Result<R>) -> Result<R> {
        self.check(device)?;
        tuwen_fusion::precision::Precision::from(self).run(f)
    }
}

impl From<Precision> for tuwen_fusion::precision::Precision {
    fn from(precision: Precision) -> Self {
        match precision {
            Precision::F32 => Self::F32,
            Precision::Bf16 => Self::Bf16,
        }
    }
}
