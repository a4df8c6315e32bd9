//! The short names kdlab knows: the two releases of the thesis pair that live outside the hub,
//! and the timm names of the families kdlab reads (each the Hugging Face hub repo
//! `timm/<name>`, as `timm.create_model(name, pretrained=True)` fetches it).

/// Where a known name's file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A model repo on the Hugging Face hub (`model.safetensors` and its `config.json`).
    Hub { repo: &'static str, gated: bool },
    /// A file published at a URL, cached by kdlab under the name.
    Release {
        url: &'static str,
        /// The sha256 checked before the file is used; None where kdlab has none to pin: then
        /// the sha256 of the first download is recorded beside it and checked from then on.
        sha256: Option<&'static str>,
    },
}

/// One name of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub name: &'static str,
    pub what: &'static str,
    pub origin: Origin,
    /// The model's tensors in f32 (bench/catalogue_sizes.py): the file is about this size.
    pub approx_bytes: u64,
}

impl Known {
    /// A timm name without its pretrained tag (`vit_small_patch14_dinov2` for
    /// `vit_small_patch14_dinov2.lvd142m`), as `timm.create_model` also takes it.
    pub fn untagged(&self) -> Option<&'static str> {
        match self.origin {
            Origin::Hub { .. } => self.name.split_once('.').map(|(model, _)| model),
            Origin::Release { .. } => None,
        }
    }

    /// Where it is fetched from: the hub name or the URL.
    pub fn source(&self) -> String {
        match self.origin {
            Origin::Hub { repo, gated: false } => format!("hf:{repo}"),
            Origin::Hub { repo, gated: true } => format!("hf:{repo} (gated)"),
            Origin::Release { url, .. } => url.to_string(),
        }
    }

    /// The name this short name is looked up by: its own, or its untagged timm name.
    fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.untagged() == Some(name)
    }
}

/// `timm/<name>` on the hub.
macro_rules! timm {
    ($name:literal, $what:literal, $bytes:literal) => {
        timm!($name, $what, $bytes, false)
    };
    ($name:literal, $what:literal, $bytes:literal, $gated:literal) => {
        Known {
            name: $name,
            what: $what,
            origin: Origin::Hub {
                repo: concat!("timm/", $name),
                gated: $gated,
            },
            approx_bytes: $bytes,
        }
    };
}

/// Every short name, in the order `kdlab fetch --list` prints them.
pub const CATALOGUE: &[Known] = &[
    Known {
        name: "beitv2_base_patch16_224_pt1k",
        what: "BEiT v2 ViT-B/16, self-supervised on ImageNet-1k (unilm; the thesis teacher)",
        origin: Origin::Release {
            url: "https://github.com/addf400/files/releases/download/BEiT-v2/beitv2_base_patch16_224_pt1k.pth",
            sha256: None,
        },
        approx_bytes: 424882696,
    },
    Known {
        name: "data2vec2_base_imagenet",
        what: "data2vec 2.0 ViT-B/16 image model, pretrained (fairseq; the thesis student)",
        origin: Origin::Release {
            url: "https://dl.fbaipublicfiles.com/fairseq/data2vec2/base_imagenet.pt",
            sha256: None,
        },
        approx_bytes: 696726528,
    },
    timm!(
        "vit_small_patch14_dinov2.lvd142m",
        "DINOv2 ViT-S/14",
        88224768
    ),
    timm!(
        "vit_base_patch14_dinov2.lvd142m",
        "DINOv2 ViT-B/14",
        346318848
    ),
    timm!(
        "vit_large_patch14_dinov2.lvd142m",
        "DINOv2 ViT-L/14",
        1217470464
    ),
    timm!(
        "vit_small_patch14_reg4_dinov2.lvd142m",
        "DINOv2 ViT-S/14, 4 registers",
        88229376
    ),
    timm!(
        "vit_base_patch14_reg4_dinov2.lvd142m",
        "DINOv2 ViT-B/14, 4 registers",
        346328064
    ),
    timm!(
        "vit_large_patch14_reg4_dinov2.lvd142m",
        "DINOv2 ViT-L/14, 4 registers",
        1217482752
    ),
    timm!(
        "vit_small_patch16_dinov3.lvd1689m",
        "DINOv3 ViT-S/16",
        86347776,
        true
    ),
    timm!(
        "vit_base_patch16_dinov3.lvd1689m",
        "DINOv3 ViT-B/16",
        342564864,
        true
    ),
    timm!(
        "deit3_small_patch16_224.fb_in1k",
        "DeiT III ViT-S/16, ImageNet-1k",
        88237984
    ),
    timm!(
        "deit3_base_patch16_224.fb_in1k",
        "DeiT III ViT-B/16, ImageNet-1k",
        346341280
    ),
    timm!(
        "beitv2_base_patch16_224.in1k_ft_in22k_in1k",
        "BEiT v2 ViT-B/16, fine-tuned on ImageNet-22k then 1k (timm)",
        346123936
    ),
    timm!(
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
        "ViT-S/16 AugReg, ImageNet-21k then 1k (the DINOv2 config's student)",
        88202656
    ),
];

/// The short name `name` (tagged or untagged timm name).
pub fn find(name: &str) -> Option<&'static Known> {
    CATALOGUE.iter().find(|known| known.answers_to(name))
}

/// Up to three names closest to `name`, for "did you mean".
pub fn closest(name: &str) -> Vec<&'static str> {
    let mut scored: Vec<(f64, &'static str)> = CATALOGUE
        .iter()
        .map(|known| {
            let against = known.untagged().unwrap_or(known.name);
            let score =
                strsim::jaro_winkler(name, known.name).max(strsim::jaro_winkler(name, against));
            (score, known.name)
        })
        .filter(|(score, _)| *score > 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(3).map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_timm_names_untag() {
        for (i, a) in CATALOGUE.iter().enumerate() {
            for b in &CATALOGUE[i + 1..] {
                assert_ne!(a.name, b.name);
                assert!(a.untagged().is_none() || a.untagged() != b.untagged());
            }
        }
        assert_eq!(
            find("vit_small_patch14_dinov2").map(|k| k.name),
            Some("vit_small_patch14_dinov2.lvd142m")
        );
        assert_eq!(
            find("vit_small_patch14_dinov2.lvd142m").map(|k| k.source()),
            Some("hf:timm/vit_small_patch14_dinov2.lvd142m".to_string())
        );
    }

    #[test]
    fn a_misspelt_name_suggests_the_name_meant() {
        assert_eq!(
            closest("beitv2_base_patch16_224_pt1").first(),
            Some(&"beitv2_base_patch16_224_pt1k")
        );
        assert_eq!(
            closest("vit_small_patch14_dinov3").first(),
            Some(&"vit_small_patch14_dinov2.lvd142m")
        );
    }
}
