//! Decoupled weight decay (Loshchilov & Hutter) restricted to the parameters BERT-style training
//! decays: HF's convention (`no_decay = ["bias", "LayerNorm.weight"]`) — everything except biases
//! and normalisation scales/shifts, plus the contrastive temperature (a scalar that sets the
//! softmax sharpness, not a weight). Embedding tables and Linear projections whose path merely
//! contains "embeddings" (visual projection, location encoders) are decayed, as in HF. Run the AdamW
//! (or Adam) step with weight decay 0 after [`apply_weight_decay`] with the same learning rate
//! (PyTorch's AdamW order: decay, then the Adam update).

use std::collections::HashSet;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::Tensor;

/// Whether a parameter at `path` inside a module of type `container` is exempt from decay.
pub fn exempt(path: &[String], container: &str) -> bool {
    let name = path.last().map(String::as_str).unwrap_or_default();
    container.ends_with("LayerNorm")
        || container.ends_with("BatchNorm")
        || name == "bias"
        || (container.ends_with(":ItcHead") && name == "temperature")
}

/// Ids of the parameters that are decayed.
pub fn decayed_params<M: Module>(module: &M) -> HashSet<ParamId> {
    crate::params::param_entries(module)
        .into_iter()
        .filter(|p| !exempt(&p.path, &p.container))
        .map(|p| p.id)
        .collect()
}

struct Decay<'a> {
    ids: &'a HashSet<ParamId>,
    factor: f64,
}

impl ModuleMapper for Decay<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.ids.contains(&param.id) {
            let factor = self.factor;
            // A new leaf: the decayed value must not link back into the last step's graph.
            param.map(|t| {
                let tracked = t.is_require_grad();
                let t = t.mul_scalar(factor).detach();
                if tracked { t.require_grad() } else { t }
            })
        } else {
            param
        }
    }
}

/// `p <- p (1 - lr * weight_decay)` for the parameters in `ids` (see [`decayed_params`]).
pub fn apply_weight_decay<M: Module>(
    module: M,
    ids: &HashSet<ParamId>,
    lr: f64,
    weight_decay: f64,
) -> M {
    if weight_decay == 0.0 {
        return module;
    }
    let mut d = Decay {
        ids,
        factor: 1.0 - lr * weight_decay,
    };
    module.map(&mut d)
}
