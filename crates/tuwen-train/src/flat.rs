//! A model's weights, or its gradients, as one flat tensor in the module's visiting order: one
//! transfer between devices (or to the host) instead of one per parameter. Data parallelism uses
//! it three ways: the weights of a device's replica are refreshed from the main device
//! ([`gather_weights`] then [`load_weights`]), a replica's gradients go back to the main device
//! ([`gather_grads`] then [`scatter_grads`]), and an MPI rank reads its gradients for the
//! all-reduce ([`crate::distributed`]).
//!
//! Written by hand: Burn moves a module, or a `GradientsParams`, one tensor at a time.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::model::PretrainModel;

/// Gradients of some of a model's parameters, flattened.
pub(crate) struct FlatGrads {
    /// The present gradients, concatenated in visiting order (without autodiff); `None` when
    /// no parameter has one.
    pub values: Option<Tensor<1>>,
    /// Whether each float parameter, in visiting order, has a gradient in `values`.
    pub present: Vec<bool>,
}

impl FlatGrads {
    /// The same gradients on `device` (one transfer).
    pub fn into_device(self, device: &Device) -> Self {
        Self {
            values: self.values.map(|v| v.to_device(device)),
            present: self.present,
        }
    }
}

/// Element count of every float parameter of `model`, in visiting order.
pub(crate) fn sizes(model: &PretrainModel) -> Vec<usize> {
    struct Sizes(Vec<usize>);
    impl ModuleVisitor for Sizes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().dims().iter().product());
        }
    }
    let mut sizes = Sizes(Vec::new());
    model.visit(&mut sizes);
    sizes.0
}

/// `grads` (of `model`'s parameters) as one tensor on their device.
pub(crate) fn gather_grads(model: &PretrainModel, grads: &GradientsParams) -> FlatGrads {
    struct Gather<'a> {
        grads: &'a GradientsParams,
        parts: Vec<Tensor<1>>,
        present: Vec<bool>,
    }
    impl ModuleVisitor for Gather<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let grad = self.grads.get::<D>(param.id);
            self.present.push(grad.is_some());
            self.parts.extend(grad.map(|g| {
                let n: usize = g.dims().iter().product();
                g.reshape([n])
            }));
        }
    }
    let mut gather = Gather {
        grads,
        parts: Vec::new(),
        present: Vec::new(),
    };
    model.visit(&mut gather);
    FlatGrads {
        values: (!gather.parts.is_empty()).then(|| Tensor::cat(gather.parts, 0)),
        present: gather.present,
    }
}

/// `flat` as the gradients of `model`'s parameters (each a slice of `flat.values`, on its
/// device).
pub(crate) fn scatter_grads(model: &PretrainModel, flat: FlatGrads) -> GradientsParams {
    struct Scatter {
        values: Option<Tensor<1>>,
        present: std::vec::IntoIter<bool>,
        offset: usize,
        grads: GradientsParams,
    }
    impl ModuleVisitor for Scatter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !self.present.next().unwrap_or(false) {
                return;
            }
            let shape = param.val().dims();
            let n: usize = shape.iter().product();
            if let Some(values) = &self.values {
                let grad = values.clone().narrow(0, self.offset, n).reshape(shape);
                self.grads.register::<D>(param.id, grad);
            }
            self.offset += n;
        }
    }
    let mut scatter = Scatter {
        values: flat.values,
        present: flat.present.into_iter(),
        offset: 0,
        grads: GradientsParams::new(),
    };
    model.visit(&mut scatter);
    scatter.grads
}

/// Every float parameter of `model`, concatenated in visiting order (without autodiff).
pub(crate) fn gather_weights(model: &PretrainModel) -> Tensor<1> {
    struct Gather(Vec<Tensor<1>>);
    impl ModuleVisitor for Gather {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val().inner();
            let n: usize = value.dims().iter().product();
            self.0.push(value.reshape([n]));
        }
    }
    let mut gather = Gather(Vec::new());
    model.visit(&mut gather);
    Tensor::cat(gather.0, 0)
}

/// `model` (a replica of the model `weights` was gathered from, any device) with its weights
/// replaced by slices of `weights` (moved to the replica's device first: one transfer). The
/// parameters keep their ids and whether they require a gradient.
pub(crate) fn load_weights(model: PretrainModel, weights: Tensor<1>) -> PretrainModel {
    struct Load {
        weights: Option<Tensor<1>>,
        offset: usize,
    }
    impl ModuleMapper for Load {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|old| {
                let shape = old.dims();
                let n: usize = shape.iter().product();
                let device = old.device();
                let all = self.weights.as_mut().expect("weights are set");
                if all.device() != device.clone().inner() {
                    *all = all.clone().to_device(&device.clone().inner());
                }
                let value = all.clone().narrow(0, self.offset, n).reshape(shape);
                self.offset += n;
                let value = if device.is_autodiff() {
                    value.autodiff()
                } else {
                    value
                };
                if old.is_require_grad() {
                    value.require_grad()
                } else {
                    value
                }
            })
        }
    }
    model.map(&mut Load {
        weights: Some(weights),
        offset: 0,
    })
}
