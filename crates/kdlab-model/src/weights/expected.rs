//! The parameters a kdlab module expects, in PyTorch naming and shapes, read without
//! initialising any weight (burn creates parameters lazily).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// One parameter of a module: its path and shape as a PyTorch state dict would name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedParam {
    pub path: String,
    pub shape: Vec<usize>,
}

pub fn expected_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ExpectedParam> {
    let mut visitor = ParamShapes {
        path: Vec::new(),
        containers: Vec::new(),
        params: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.params
}

struct ParamShapes {
    path: Vec<String>,
    containers: Vec<String>,
    params: Vec<ExpectedParam>,
}

impl<B: Backend> ModuleVisitor<B> for ParamShapes {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let mut shape = param.lazy_shape().to_vec();
        let mut path = self.path.clone();
        // The same conventions burn-store's PyTorch adapter applies when loading.
        let owner = self
            .containers
            .iter()
            .rev()
            .find(|c| c.starts_with("Struct:") || c.starts_with("Enum:"))
            .map(String::as_str);
        let renamed = match (owner, path.last().map(String::as_str)) {
            (Some("Struct:Linear"), Some("weight")) => {
                shape.reverse(); // burn [in, out] → PyTorch [out, in]
                None
            }
            (Some("Struct:LayerNorm"), Some("gamma")) => Some("weight"),
            (Some("Struct:LayerNorm"), Some("beta")) => Some("bias"),
            _ => None,
        };
        if let (Some(name), Some(last)) = (renamed, path.last_mut()) {
            *last = name.to_string();
        }
        self.params.push(ExpectedParam {
            path: path.join("."),
            shape,
        });
    }
}
