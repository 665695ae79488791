//! BERT's initialisation (HF `BertPreTrainedModel._init_weights`) for everything trained from
//! scratch: Linear and Embedding weights from `N(0, initializer_range)`, biases zero, LayerNorm
//! scale 1 and shift 0, the padding row of the word embeddings zero. Burn's own defaults
//! (Kaiming-uniform Linear, `N(0, 1)` embeddings) differ from what BERT-family models train with.
//!
//! Written by hand: Burn has no "initialise by module type" helper; this is a `ModuleMapper`.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Distribution, Tensor};

/// HF's `initializer_range` default.
pub const INITIALIZER_RANGE: f64 = 0.02;

/// The initialisation of [`bert_init`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BertInit {
    /// Standard deviation of Linear and Embedding weights.
    pub initializer_range: f64,
    /// Row of `word_embeddings` set to zero (HF: `padding_idx = pad_token_id`).
    pub padding_idx: Option<usize>,
}

impl Default for BertInit {
    fn default() -> Self {
        Self {
            initializer_range: INITIALIZER_RANGE,
            // Every tuwen vocabulary and BERT's own put `[PAD]` at id 0.
            padding_idx: Some(0),
        }
    }
}

/// Re-initialises every parameter of `module` as HF BERT's `_init_weights` does (see the module
/// docs); parameters of other kinds (a contrastive temperature) keep their value. Draws from
/// the device's generator: seed it first for a reproducible model.
pub fn bert_init<M: Module>(module: M, init: BertInit) -> M {
    module.map(&mut Mapper {
        init,
        stack: Vec::new(),
    })
}

struct Mapper {
    init: BertInit,
    /// `(field, container type)` pairs; at a parameter the top is its own field and owner.
    stack: Vec<(String, String)>,
}

impl ModuleMapper for Mapper {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((field, container)) = self.stack.last() else {
            return param;
        };
        let kind = kind(field, container);
        let owner = self.stack.iter().rev().nth(1).map(|(f, _)| f.as_str());
        let pad = match (kind, owner) {
            (Kind::Normal, Some("word_embeddings")) => self.init.padding_idx,
            _ => None,
        };
        let std = self.init.initializer_range;
        param.map(|t| {
            let tracked = t.is_require_grad();
            let (shape, device) = (t.shape(), t.device());
            let fresh = match kind {
                Kind::Keep => return t,
                Kind::Zeros => Tensor::zeros(shape, &device),
                Kind::Ones => Tensor::ones(shape, &device),
                Kind::Normal => {
                    let w = Tensor::random(shape, Distribution::Normal(0.0, std), &device);
                    match pad {
                        Some(row) if D == 2 && row < t.dims()[0] => {
                            let width = t.dims()[1];
                            w.slice_assign(
                                [row..row + 1, 0..width],
                                Tensor::zeros([1, width], &device),
                            )
                        }
                        _ => w,
                    }
                }
            };
            if tracked { fresh.require_grad() } else { fresh }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Normal,
    Zeros,
    Ones,
    Keep,
}

fn kind(field: &str, container: &str) -> Kind {
    if container.ends_with("LayerNorm") {
        return if field == "gamma" {
            Kind::Ones
        } else {
            Kind::Zeros
        };
    }
    match field {
        "bias" | "beta" => Kind::Zeros,
        "weight" if container.ends_with(":Linear") || container.ends_with(":Embedding") => {
            Kind::Normal
        }
        _ => Kind::Keep,
    }
}
