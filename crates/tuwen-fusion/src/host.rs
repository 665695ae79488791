//! Which devices compute in host memory, where tuwen's own CPU kernels replace slow backend
//! paths ([`crate::dropout`], [`crate::activation`]).

use burn::tensor::Device;

/// Whether `device` computes in host memory (Flex or ndarray, with or without autodiff).
/// Burn does not expose the backend of a `Device`; its `Debug` form names it (checked by a
/// test, so a change of that form fails the tests rather than slowing CPUs down silently).
pub(crate) fn is_host(device: &Device) -> bool {
    let name = format!("{:?}", device.clone().inner());
    name.starts_with("Device<Flex") || name.starts_with("Device<NdArray")
}

/// Whether `device` is Flex (with or without autodiff); see [`is_host`].
pub(crate) fn is_flex(device: &Device) -> bool {
    format!("{:?}", device.clone().inner()).starts_with("Device<Flex")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_and_ndarray_are_host_devices() {
        assert!(is_host(&Device::flex()));
        assert!(is_host(&Device::flex().autodiff()));
        assert!(is_flex(&Device::flex().autodiff()));
        #[allow(deprecated)]
        let ndarray = Device::ndarray();
        assert!(is_host(&ndarray));
        assert!(!is_flex(&ndarray));
    }
}
