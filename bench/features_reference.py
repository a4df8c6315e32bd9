"""PyTorch side of the `features` benchmark: full-size BEiT v2 (timm, random weights), the
teacher's 12 block outputs and the prepared KD target, on CPU.

    python bench/features_reference.py --batch 8 --save-weights /tmp/beitv2_random.safetensors

writes the weights (timm layout) so that `kdlab features` runs the very same model, then times
PyTorch. Compare with `kdlab --no-gui features --backend cpu --weights … --input …`.
"""
import argparse
import time

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def prepare_target(layers):
    y = sum(F.instance_norm(h.transpose(1, 2).float()).transpose(1, 2) for h in layers) / len(layers)
    return F.layer_norm(y, y.shape[-1:])


def teacher_layers(model, x):
    x = model.patch_embed(x)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    layers = []
    for block in model.blocks:
        x = block(x, shared_rel_pos_bias=None)
        layers.append(x)
    return layers


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--save-weights")
    p.add_argument("--save-input")
    a = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("beitv2_base_patch16_224", pretrained=False).eval()
    x = torch.randn(a.batch, 3, 224, 224)
    if a.save_weights:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, a.save_weights)
    if a.save_input:
        save_file({"image": x}, a.save_input)
    with torch.inference_mode():
        prepare_target(teacher_layers(model, x))  # warm-up
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            prepare_target(teacher_layers(model, x))
            times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()} batch {a.batch}: "
          f"best {best * 1000:.0f} ms/batch, {best * 1000 / a.batch:.1f} ms/image "
          f"(median {sorted(times)[len(times) // 2] * 1000 / a.batch:.1f})")


if __name__ == "__main__":
    main()
