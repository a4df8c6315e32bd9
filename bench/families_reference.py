"""Full-size cross-check of the other ViT families against timm itself: builds timm's real
architectures (random weights), saves each as the hub does (`model.safetensors` + the
`config.json` timm writes, at the model's own pretrained size), runs `kdlab features` on them at
another size — DINOv2 stored for 518 px run at 224 (positions resampled down, bicubic with
antialias), DINOv3 pretrained at 256 run at 224 (rotary positions for a new grid), DeiT III at
its own 224 — and prints the max |Δ| of every layer result and of the target.

    python bench/families_reference.py --kdlab target/release/kdlab [--batch 2] [--out DIR]

Needs torch, timm and safetensors; kdlab needs neither.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

# (timm architecture, its pretrained size, the size it is run at, model_args for config.json)
MODELS = [
    ("vit_small_patch14_dinov2", 518, 224, dict(img_size=518, dynamic_img_size=True, init_values=1e-5)),
    ("vit_small_patch14_reg4_dinov2", 518, 224,
     dict(img_size=518, dynamic_img_size=True, init_values=1e-5, reg_tokens=4, no_embed_class=True)),
    ("vit_small_patch16_dinov3", 256, 224, dict(img_size=256, dynamic_img_size=True)),
    ("deit3_small_patch16_224", 224, 224, dict()),
]


def target(layers, prefix):
    """Registers dropped (CLS and patches kept), then the data2vec target."""
    layers = [torch.cat([h[:, :1], h[:, prefix:]], dim=1) for h in layers]
    y = sum(F.instance_norm(h.transpose(1, 2)).transpose(1, 2) for h in layers) / len(layers)
    return F.layer_norm(y, y.shape[-1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kdlab", default="target/release/kdlab")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp()
    torch.manual_seed(0)
    rows = []
    for name, own, run, model_args in MODELS:
        model = timm.create_model(name, pretrained=False, num_classes=0, **model_args).eval()
        with torch.no_grad():  # LayerNorms and layer scales away from their inits, so they show
            for key, p in model.named_parameters():
                if p.ndim == 1 and ("norm" in key or "gamma" in key):
                    p.uniform_(0.5, 1.5)
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        config = {
            "architecture": name, "num_classes": 0, "num_features": model.num_features,
            "model_args": model_args,
            "pretrained_cfg": {"input_size": [3, own, own], "interpolation": "bicubic",
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        }
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        images = torch.randn(args.batch, 3, run, run)
        save_file({"image": images}, os.path.join(folder, "input.safetensors"))
        outputs = []
        hooks = [b.register_forward_hook(lambda _m, _i, o: outputs.append(o)) for b in model.blocks]
        with torch.no_grad():
            model.forward_features(images)
        for h in hooks:
            h.remove()
        reference = target(outputs, model.num_prefix_tokens)
        features = os.path.join(folder, "kdlab.safetensors")
        subprocess.run([args.kdlab, "--no-gui", "features", "--backend", "cpu", "--weights",
                        os.path.join(folder, "model.safetensors"), "--input",
                        os.path.join(folder, "input.safetensors"), "--out", features], check=True)
        ours = load_file(features)
        layer_diff = max((ours[f"layer.{i}"] - h).abs().max().item() for i, h in enumerate(outputs))
        target_diff = (ours["target"] - reference).abs().max().item()
        scale = max(h.abs().max().item() for h in outputs)
        rows.append((name, own, run, layer_diff, scale, target_diff))
    print(f"{'model':34}{'stored':>8}{'run at':>8}{'layers max|Δ|':>16}{'max|h|':>10}{'target max|Δ|':>16}")
    for name, own, run, layer_diff, scale, target_diff in rows:
        print(f"{name:34}{own:>8}{run:>8}{layer_diff:>16.2e}{scale:>10.1f}{target_diff:>16.2e}")


if __name__ == "__main__":
    sys.exit(main())
