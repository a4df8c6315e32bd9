//! AdamW with PyTorch's semantics and the thesis' two parameter groups.
//!
//! Written here rather than taken from burn-optim because three things must hold exactly:
//! the decay rule is per parameter *name* (matrices decay; biases, norms, positions and the CLS
//! token do not), the update must equal `torch.optim.AdamW` op for op (fixtures/README §5), and
//! the moments must be saved under checkpoint key names so that `--resume` restores them in a
//! new process (burn's records key them by random `ParamId`s).
//!
//! Upstream: pytorch `torch/optim/adamw.py` (`_single_tensor_adamw`).

use std::collections::HashMap;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use kdlab_kernels::cpu::AdamWScalars;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The moments of one parameter, flattened.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
    /// Updates applied so far (PyTorch's per-parameter `step`).
    pub step: u64,
}

/// Optimiser state by parameter path (kdlab module path, PyTorch naming).
pub struct AdamW<B: Backend> {
    pub settings: AdamWSettings,
    pub state: HashMap<String, Moments<B>>,
}

/// The thesis' rule, minus its accidental decay of data2vec2's `extra_tokens` (REFERENCE.md):
/// decay parameters with more than one dimension, except positions, the prefix tokens (CLS,
/// extra, register tokens) and BEiT's relative-position tables (timm's and unilm's
/// `no_weight_decay` for the other families' students).
pub fn decays(path: &str, rank: usize) -> bool {
    let name = path.rsplit('.').next().unwrap_or(path);
    rank > 1
        && !path.ends_with(".bias")
        && !matches!(
            name,
            "positions"
                | "extra_tokens"
                | "cls_token"
                | "pos_embed"
                | "reg_token"
                | "relative_position_bias_table"
        )
}

impl<B: Backend> AdamW<B> {
    pub fn new(settings: AdamWSettings) -> Self {
        Self {
            settings,
            state: HashMap::new(),
        }
    }

    /// One update of every parameter that has a gradient; the others are not touched.
    pub fn step<AB, M>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut mapper = Update {
            optimizer: self,
            grads: &mut grads,
            lr,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }
}

impl<B: Backend> AdamW<B> {
    /// Checks moments read from a file against the module they will update: each names one of
    /// its parameters, has that parameter's size, and holds finite values (the second moment
    /// none below zero). A crafted or damaged checkpoint is refused by key, never run into an
    /// index out of range or a NaN step.
    pub fn check_state<AB: Backend, M: Module<AB>>(&self, module: &M) -> Result<(), String> {
        let mut sizes = ParamSizes {
            path: Vec::new(),
            sizes: HashMap::new(),
        };
        module.visit(&mut sizes);
        let mut keys: Vec<&String> = self.state.keys().collect();
        keys.sort();
        for key in keys {
            let moments = &self.state[key];
            let Some(&size) = sizes.sizes.get(key) else {
                return Err(format!(
                    "moments for '{key}', which the student has no parameter of"
                ));
            };
            for (name, moment) in [
                ("exp_avg", &moments.exp_avg),
                ("exp_avg_sq", &moments.exp_avg_sq),
            ] {
                let found = moment.dims()[0];
                if found != size {
                    return Err(format!(
                        "moment {name} of '{key}' has {found} values, the parameter {size}"
                    ));
                }
                let values = moment
                    .to_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| format!("moment {name} of '{key}' cannot be read: {e:?}"))?;
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(format!("moment {name} of '{key}' holds non-finite values"));
                }
                if name == "exp_avg_sq" && values.iter().any(|&v| v < 0.0) {
                    return Err(format!(
                        "moment exp_avg_sq of '{key}' holds values below zero (it is a mean of \
                         squares)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Every float parameter's size, keyed as the moments are.
struct ParamSizes {
    path: Vec<(String, String)>,
    sizes: HashMap<String, usize>,
}

impl<B: Backend> ModuleVisitor<B> for ParamSizes {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let size = param.lazy_shape().num_elements();
        self.sizes.insert(torch_path(&self.path), size);
    }
}

struct Update<'a, B: Backend> {
    optimizer: &'a mut AdamW<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
    /// (name, container type) of every module entered.
    path: Vec<(String, String)>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Update<'_, AB::InnerBackend> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = torch_path(&self.path);
        let s = self.optimizer.settings;
        let shape = tensor.shape();
        let numel = shape.num_elements();
        let p = tensor.inner().reshape([numel]);
        let g = grad.reshape([numel]);
        let moments = self
            .optimizer
            .state
            .remove(&path)
            .unwrap_or_else(|| Moments {
                exp_avg: p.zeros_like(),
                exp_avg_sq: p.zeros_like(),
                step: 0,
            });
        let step = moments.step + 1;
        let scalars = AdamWScalars {
            decay: (decays(&path, D) && s.weight_decay > 0.0)
                .then_some(1.0 - self.lr * s.weight_decay),
            one_minus_beta1: 1.0 - s.beta1,
            beta2: s.beta2,
            one_minus_beta2: 1.0 - s.beta2,
            bias_correction2_sqrt: (1.0 - s.beta2.powi(step as i32)).sqrt(),
            eps: s.eps,
            step_size: self.lr / (1.0 - s.beta1.powi(step as i32)),
        };
        let [p, exp_avg, exp_avg_sq] =
            match kdlab_kernels::adamw([p, moments.exp_avg, moments.exp_avg_sq], g, scalars) {
                Ok(updated) => updated,
                Err((state, g)) => adamw_by_tensors(state, g, scalars),
            };
        self.optimizer.state.insert(
            path,
            Moments {
                exp_avg,
                exp_avg_sq,
                step,
            },
        );
        let updated = Tensor::<AB, 1>::from_inner(p).reshape(shape).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// The update as tensor operations, one by one (any backend).
fn adamw_by_tensors<B: Backend>(
    [p, exp_avg, exp_avg_sq]: [Tensor<B, 1>; 3],
    g: Tensor<B, 1>,
    s: AdamWScalars,
) -> [Tensor<B, 1>; 3] {
    // p ← p·(1 − lr·wd)
    let p = match s.decay {
        Some(decay) => p.mul_scalar(decay),
        None => p,
    };
    // m ← m + (g − m)(1 − β1)  (torch's lerp);  v ← β2·v + (1 − β2)·g²
    let exp_avg = exp_avg.clone() + (g.clone() - exp_avg).mul_scalar(s.one_minus_beta1);
    let exp_avg_sq = exp_avg_sq.mul_scalar(s.beta2) + g.square().mul_scalar(s.one_minus_beta2);
    let denom = exp_avg_sq
        .clone()
        .sqrt()
        .div_scalar(s.bias_correction2_sqrt)
        .add_scalar(s.eps);
    let p = p - (exp_avg.clone() / denom).mul_scalar(s.step_size);
    [p, exp_avg, exp_avg_sq]
}

/// State is keyed by PyTorch's names: burn's LayerNorm `gamma`/`beta` are `weight`/`bias`, and
/// an enum module's variant (`Encoder`'s `Data2Vec2`, …) is no part of a state-dict key.
fn torch_path(path: &[(String, String)]) -> String {
    // A parameter is entered with the type of the struct that holds it.
    let owner = path.last().map(|(_, container)| container.as_str());
    let mut parts: Vec<&str> = path
        .iter()
        .filter(|(_, container)| !container.starts_with("Enum:"))
        .map(|(name, _)| name.as_str())
        .collect();
    if owner == Some("Struct:LayerNorm")
        && let Some(last) = parts.last_mut()
    {
        *last = match *last {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        };
    }
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    #[test]
    fn fused_cpu_update_equals_the_tensor_version() {
        let device = Default::default();
        let random = |seed| {
            Flex::seed(&device, seed);
            Tensor::<Flex, 1>::random([10_000], Distribution::Normal(0.0, 1.0), &device)
        };
        let (p, g, m) = (random(1), random(2), random(3));
        let v = random(4).abs();
        for decay in [Some(1.0 - 1e-3 * 0.05), None] {
            let scalars = AdamWScalars {
                decay,
                one_minus_beta1: 0.1,
                beta2: 0.98,
                one_minus_beta2: 0.02,
                bias_correction2_sqrt: (1.0f64 - 0.98f64.powi(3)).sqrt(),
                eps: 1e-6,
                step_size: 1e-3 / (1.0 - 0.9f64.powi(3)),
            };
            let state = || [p.clone(), m.clone(), v.clone()];
            let fused =
                kdlab_kernels::adamw(state(), g.clone(), scalars).expect("flex takes the kernel");
            let by_tensors = adamw_by_tensors(state(), g.clone(), scalars);
            for (name, (a, b)) in ["param", "exp_avg", "exp_avg_sq"]
                .iter()
                .zip(fused.into_iter().zip(by_tensors))
            {
                let diff: f32 = (a - b).abs().max().into_scalar();
                assert!(diff <= 1e-7, "{name} ({decay:?}): max |Δ| = {diff:e}");
            }
        }
    }
}
