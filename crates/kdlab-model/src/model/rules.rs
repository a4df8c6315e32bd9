//! What an architecture must satisfy before a module of it is built: everything that would
//! otherwise fail (or silently misbehave) inside the models, with the field, the value and the
//! rule. Fields are named relative to the architecture (`embed_dim`); callers prefix them
//! (`student.architecture.embed_dim`).

use super::{BeitV2Config, BlockSelection, Data2Vec2Config, VitConfig, VitPositions};

/// A broken rule: the field and what is wrong with its value.
pub type Problem = (&'static str, String);

/// Patch grids larger than this are not ViTs kdlab builds (a 2048 px image in 16 px patches).
pub const MAX_GRID: usize = 128;
pub const MAX_EMBED_DIM: usize = 16_384;
pub const MAX_DEPTH: usize = 1_024;
pub const MAX_MLP_HIDDEN_DIM: usize = 131_072;

/// The rules both encoders share: whole patches, whole heads, sizes in range.
struct Vit {
    image_size: usize,
    patch_size: usize,
    embed_dim: usize,
    num_heads: usize,
    mlp_hidden_dim: usize,
    norm_eps: f64,
}

/// The ViT part of either architecture (their fields have the same names).
macro_rules! vit_of {
    ($config:expr) => {
        Vit {
            image_size: $config.image_size,
            patch_size: $config.patch_size,
            embed_dim: $config.embed_dim,
            num_heads: $config.num_heads,
            mlp_hidden_dim: $config.mlp_hidden_dim,
            norm_eps: $config.norm_eps,
        }
    };
}

impl Vit {
    fn problems(&self, found: &mut Vec<Problem>) {
        let Self {
            image_size,
            patch_size,
            embed_dim,
            num_heads,
            mlp_hidden_dim,
            norm_eps,
        } = *self;
        if patch_size == 0 {
            found.push(("patch_size", "must be at least 1".into()));
        } else if image_size == 0 || !image_size.is_multiple_of(patch_size) {
            found.push((
                "image_size",
                format!("{image_size} must be a positive multiple of patch_size {patch_size}"),
            ));
        } else if image_size / patch_size > MAX_GRID {
            found.push((
                "image_size",
                format!(
                    "{image_size} px in {patch_size} px patches is a {g}×{g} grid; kdlab builds at \
                     most {MAX_GRID}×{MAX_GRID}",
                    g = image_size / patch_size
                ),
            ));
        }
        if num_heads == 0 {
            found.push(("num_heads", "must be at least 1".into()));
        }
        if embed_dim == 0 || embed_dim > MAX_EMBED_DIM {
            found.push((
                "embed_dim",
                format!("must be in 1..={MAX_EMBED_DIM}, is {embed_dim}"),
            ));
        } else if num_heads > 0 && !embed_dim.is_multiple_of(num_heads) {
            found.push((
                "embed_dim",
                format!("{embed_dim} does not split into num_heads {num_heads} equal heads"),
            ));
        }
        if mlp_hidden_dim == 0 || mlp_hidden_dim > MAX_MLP_HIDDEN_DIM {
            found.push((
                "mlp_hidden_dim",
                format!("must be in 1..={MAX_MLP_HIDDEN_DIM}, is {mlp_hidden_dim}"),
            ));
        }
        if !(norm_eps.is_finite() && norm_eps > 0.0) {
            found.push((
                "norm_eps",
                format!("must be a positive number, is {norm_eps}"),
            ));
        }
    }
}

fn depth_problem(field: &'static str, depth: usize, why: &str, found: &mut Vec<Problem>) {
    if depth == 0 || depth > MAX_DEPTH {
        found.push((
            field,
            format!("must be in 1..={MAX_DEPTH} ({why}), is {depth}"),
        ));
    }
}

impl BeitV2Config {
    /// Every rule this architecture breaks.
    pub fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        vit_of!(self).problems(&mut found);
        depth_problem(
            "depth",
            self.depth,
            "the target averages the block outputs",
            &mut found,
        );
        found
    }
}

impl Data2Vec2Config {
    /// Every rule this architecture breaks.
    pub fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        vit_of!(self).problems(&mut found);
        if self.embed_dim > 0 && !self.embed_dim.is_multiple_of(4) {
            found.push((
                "embed_dim",
                format!(
                    "{} is not a multiple of 4: the fixed 2-D sin-cos positions split it into \
                     four equal parts",
                    self.embed_dim
                ),
            ));
        }
        depth_problem(
            "depth",
            self.depth,
            "layer results come from the main blocks",
            &mut found,
        );
        if self.prenet_depth > MAX_DEPTH {
            found.push((
                "prenet_depth",
                format!("must be at most {MAX_DEPTH}, is {}", self.prenet_depth),
            ));
        }
        found
    }
}

/// More registers than this is not a model kdlab knows (DINOv2 and DINOv3 have 4).
pub const MAX_REGISTERS: usize = 256;

impl VitConfig {
    /// Every rule this architecture breaks.
    pub fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        vit_of!(self).problems(&mut found);
        depth_problem(
            "depth",
            self.depth,
            "the target averages the block outputs",
            &mut found,
        );
        if self.reg_tokens > MAX_REGISTERS {
            found.push((
                "reg_tokens",
                format!("must be at most {MAX_REGISTERS}, is {}", self.reg_tokens),
            ));
        }
        match self.positions {
            VitPositions::Learned { grid, .. } if grid == 0 || grid > MAX_GRID => found.push((
                "positions.grid",
                format!("must be in 1..={MAX_GRID}, is {grid}"),
            )),
            VitPositions::Rotary { temperature } => {
                if !(temperature.is_finite() && temperature > 1.0) {
                    found.push((
                        "positions.temperature",
                        format!("must be a number above 1, is {temperature}"),
                    ));
                }
                let heads = self.num_heads.max(1);
                if self.embed_dim.is_multiple_of(heads)
                    && !(self.embed_dim / heads).is_multiple_of(4)
                {
                    found.push((
                        "num_heads",
                        format!(
                            "the head width {} is not a multiple of 4, which 2-D rotary \
                             positions need",
                            self.embed_dim / heads
                        ),
                    ));
                }
            }
            VitPositions::Learned { .. } => {}
        }
        found
    }
}

impl BlockSelection {
    /// Why this selection keeps no usable block of a model with `prenet_depth` and `depth`.
    pub fn problem(self, prenet_depth: usize, depth: usize) -> Option<String> {
        match self.main_blocks(prenet_depth, depth) {
            Ok(kept) if kept.is_empty() => Some(format!(
                "{self:?} keeps no main block of a model with {depth}"
            )),
            Ok(_) => None,
            Err(message) => Some(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|(f, _)| *f).collect()
    }

    #[test]
    fn the_published_architectures_break_no_rule() {
        assert!(BeitV2Config::vit_base_patch16_224().problems().is_empty());
        assert!(
            Data2Vec2Config::vit_base_patch16_224()
                .problems()
                .is_empty()
        );
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let mut student = Data2Vec2Config::vit_base_patch16_224();
        student.embed_dim = 62;
        student.num_heads = 2;
        assert_eq!(fields(&student.problems()), ["embed_dim"]);
        assert!(student.problems()[0].1.contains("sin-cos"));
        student.embed_dim = 64;
        student.depth = 0;
        student.patch_size = 0;
        student.mlp_hidden_dim = 0;
        student.norm_eps = f64::NAN;
        assert_eq!(
            fields(&student.problems()),
            ["patch_size", "mlp_hidden_dim", "norm_eps", "depth"]
        );
        let mut teacher = BeitV2Config::vit_base_patch16_224();
        teacher.image_size = 100;
        teacher.num_heads = 0;
        teacher.depth = 0;
        assert_eq!(
            fields(&teacher.problems()),
            ["image_size", "num_heads", "depth"]
        );
    }

    #[test]
    fn a_selection_that_keeps_nothing_says_why() {
        assert!(BlockSelection::All.problem(1, 0).is_some());
        assert!(BlockSelection::EverySecond.problem(1, 0).is_some());
        assert!(BlockSelection::FirstMain(3).problem(1, 2).is_some());
        assert!(BlockSelection::Total(1).problem(1, 2).is_some());
        assert_eq!(BlockSelection::Total(3).problem(1, 2), None);
    }
}
