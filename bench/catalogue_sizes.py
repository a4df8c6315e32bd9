"""Sizes in kdlab's catalogue of names (crates/kdlab-hub/src/catalogue.rs): the bytes of each
model's tensors in f32, from timm's model built without weights (as its hub config builds it),
and from the key manifests of the two releases outside the hub (shared fixtures/keys). The
files are a few KB larger (their headers); `kdlab fetch --list` prints these as approximate.

    python bench/catalogue_sizes.py [path/to/shared/fixtures/keys]
"""
import sys, math, pathlib
import timm

HUB = [
    ("vit_small_patch14_dinov2.lvd142m", {}), ("vit_base_patch14_dinov2.lvd142m", {}),
    ("vit_large_patch14_dinov2.lvd142m", {}), ("vit_small_patch14_reg4_dinov2.lvd142m", {}),
    ("vit_base_patch14_reg4_dinov2.lvd142m", {}), ("vit_large_patch14_reg4_dinov2.lvd142m", {}),
    ("vit_small_patch16_dinov3.lvd1689m", {}), ("vit_base_patch16_dinov3.lvd1689m", {}),
    ("deit3_small_patch16_224.fb_in1k", {}), ("deit3_base_patch16_224.fb_in1k", {}),
    ("beitv2_base_patch16_224.in1k_ft_in22k_in1k", {}),
    ("vit_small_patch16_224.augreg_in21k_ft_in1k", {}),
]
for name, kw in HUB:
    m = timm.create_model(name, pretrained=False, **kw)
    n = sum(t.numel() for t in m.state_dict().values())
    print(f"{name}\t{n * 4}")

keys = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/fixtures/keys")
def manifest_bytes(*files):
    total = 0
    for f in files:
        for line in (keys / f).read_text().splitlines():
            k, shape, dtype = line.split("\t")
            if k == "key":
                continue
            dims = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
            total += math.prod(dims) * (8 if "64" in dtype else 4)
    return total
print("beitv2_base_patch16_224_pt1k\t", manifest_bytes("beitv2_base_patch16_224_pt1k.keys.tsv"))
print("data2vec2_base_imagenet\t", manifest_bytes("d2v2_base_imagenet.keys.tsv", "d2v2_base_imagenet.ema.keys.tsv"))
