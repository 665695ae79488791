//! The parameters of a module with their paths: the one walk that weight decay (which exempts
//! biases and LayerNorm by name and owning struct) and fine-tuning (which groups and freezes
//! parameters by path) both need.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// One float parameter of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    /// Field names from the root (`["encoder", "VisualBert", "visual_bert", ...]`).
    pub path: Vec<String>,
    /// The type of the struct that owns it, as the derive macro reports it.
    pub container: String,
    /// Its id.
    pub id: ParamId,
}

impl ParamEntry {
    /// The path joined with dots (`encoder.VisualBert.visual_bert.encoder.layers.0...`).
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn param_entries<M: Module>(module: &M) -> Vec<ParamEntry> {
    /// The stack of `(field, container)` pairs the derive macro reports; at a parameter the top
    /// of the stack is its own field name and owning struct.
    #[derive(Default)]
    struct Walk {
        stack: Vec<(String, String)>,
        out: Vec<ParamEntry>,
    }
    impl ModuleVisitor for Walk {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.push(ParamEntry {
                path: self.stack.iter().map(|(n, _)| n.clone()).collect(),
                container: self
                    .stack
                    .last()
                    .map(|(_, c)| c.clone())
                    .unwrap_or_default(),
                id: param.id,
            });
        }
    }
    let mut walk = Walk::default();
    module.visit(&mut walk);
    walk.out
}
