//! The devices of a data-parallel step (`--device A --device B ...`) and the model's replicas on
//! all but the first, kept from one step to the next.
//!
//! The main device (the first) holds the model the optimiser updates. Each other device holds a
//! replica: made by `fork` at its first step; at every later step only its weights are refreshed,
//! from one flat tensor gathered on the main device and moved in one transfer
//! ([`crate::flat`]), into the replica it already has (module tree, parameter ids and
//! configuration kept). A device equal to the main one (`--device flex --device flex`) shares the
//! main weights: nothing is copied. Gradients come back the same way, one transfer per
//! micro-batch ([`crate::pretrain::step_gradients`]).

use burn::module::Module;
use burn::tensor::Device;

use crate::model::PretrainModel;

/// Autodiff devices of a step, and the replicas on the devices after the first.
pub struct DataParallel {
    devices: Vec<Device>,
    /// Device `d + 1`'s replica once made.
    replicas: Vec<Option<PretrainModel>>,
    refreshes: usize,
}

impl DataParallel {
    /// Data parallelism over `devices` (autodiff devices; the first holds the model). Panics on
    /// an empty list (a caller error).
    pub fn new(devices: &[Device]) -> Self {
        assert!(!devices.is_empty(), "data parallelism needs a device");
        Self {
            devices: devices.to_vec(),
            replicas: vec![None; devices.len() - 1],
            refreshes: 0,
        }
    }

    /// The devices, the main one first.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// How many times a kept replica's weights were refreshed in place (rather than forked).
    pub fn refreshes(&self) -> usize {
        self.refreshes
    }

    /// The model on every device, with `model`'s current weights: `model` itself on the main
    /// device, then the replicas (see the module docs).
    pub fn replicas(&mut self, model: &PretrainModel) -> Vec<PretrainModel> {
        let main = &self.devices[0];
        let mut flat = None;
        let mut all = vec![model.clone()];
        for (device, slot) in self.devices[1..].iter().zip(&mut self.replicas) {
            // A device equal to the main one never keeps a replica: forking there copies nothing.
            let replica = match slot.take() {
                None => model.clone().fork(device),
                Some(kept) => {
                    self.refreshes += 1;
                    let weights = flat.get_or_insert_with(|| crate::flat::gather_weights(model));
                    crate::flat::load_weights(kept, weights.clone())
                }
            };
            if device != main {
                *slot = Some(replica.clone());
            }
            all.push(replica);
        }
        all
    }
}
