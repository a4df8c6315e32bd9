#!/usr/bin/env python3
"""The PyTorch side of `kdlab bench`: the same four measurements, printed as the same JSON.

    python3 bench/reference.py [--batch 128] [--steps 20] [--precision bf16|f16|f32]
                               [--device cuda|cpu] [--compile] [--data DIR] [--workers N]

Teacher: timm `beitv2_base_patch16_224` (random weights: speed does not depend on them), frozen,
eval mode, no grad, its 12 block outputs as layer results. Student: a data2vec 2.0 image encoder
written here in plain PyTorch (post-LN blocks, 2 prenet + 6 main blocks of ViT-B width, fixed
sin-cos positions, FFN outputs as layer results), as kdlab builds it. Target and loss as the
thesis (instance norm over tokens, mean over layers, layer norm, MSE in f32). AdamW (0.9, 0.98),
eps 1e-6, weight decay 0.01 on matrices only. Attention through F.scaled_dot_product_attention
(what timm uses; the fast eager path). Mixed precision is torch.autocast (bf16 or f16 with a
GradScaler), the PyTorch way; f32 runs without autocast and without TF32.

--pair NAME instead learns one of the other families' pairs, as bench/pairs/NAME.ron describes it
to `kdlab bench --config`: timm's own models (random weights), their block outputs as layer
results, register tokens dropped before the target, a width connector (nn.Linear on the student's
average of instance-normed layers, before the final layer norm) trained with the student:
  dinov2_vitb14_to_vits16  vit_base_patch14_dinov2 at 196 px → vit_small_patch16_224 at 224 px
  dinov3_vitb16_to_vits16  vit_base_patch16_dinov3 → vit_small_patch16_dinov3, first 6 blocks

Measurements, each after warm-up steps and between device synchronisations:
  kd_step          teacher forward + student forward/backward + AdamW step (the training step)
  teacher_forward  the teacher's forward and target alone
  student_step     student forward/backward + AdamW step against a fixed target
  data             decode + RandomResizedCrop(224, bicubic) + flip + normalise, DataLoader with
                   --workers processes, on --data (default: assets/)
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_2d(grid, dim):
    """data2vec 2.0's fixed table: [D/4) sin(col), cos(col), sin(row), cos(row)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    c = cols.reshape(-1, 1).double() * omega
    r = rows.reshape(-1, 1).double() * omega
    return torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=1).float().unsqueeze(0)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, t, d))


class AltBlock(nn.Module):
    """fairseq data2vec2 AltBlock with layer_norm_first=False: post-LN, FFN output as result."""

    def __init__(self, dim, heads, mlp, eps=1e-6):
        super().__init__()
        self.attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        x = x + self.attn(x)
        r = self.norm1(x)
        m = self.mlp(r)
        return self.norm2(r + m), m


class Data2Vec2Student(nn.Module):
    def __init__(self, dim=768, heads=12, mlp=3072, prenet=2, main=6, patch=16, image=224):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.register_buffer("positions", sincos_2d(image // patch, dim))
        self.extra_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.prenet = nn.ModuleList(AltBlock(dim, heads, mlp) for _ in range(prenet))
        self.blocks = nn.ModuleList(AltBlock(dim, heads, mlp) for _ in range(main))

    def forward(self, images):
        x = self.proj(images).flatten(2).transpose(1, 2) + self.positions
        x = torch.cat([self.extra_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(x)
        for block in self.prenet:
            x, _ = block(x)
        layers = []
        for block in self.blocks:
            x, m = block(x)
            layers.append(m)
        return layers


def teacher_layers(teacher, images):
    """timm Beit.forward_features, keeping every block output (no final norm)."""
    x = teacher.patch_embed(images)
    x = torch.cat((teacher.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    if teacher.pos_embed is not None:
        x = x + teacher.pos_embed
    rel_pos_bias = teacher.rel_pos_bias() if teacher.rel_pos_bias is not None else None
    layers = []
    for block in teacher.blocks:
        x = block(x, shared_rel_pos_bias=rel_pos_bias)
        layers.append(x)
    return layers


def prepare_target(layers):
    """The thesis' prepare_output: instance norm over tokens, mean over layers, layer norm (f32)."""
    y = sum(F.instance_norm(l.float().transpose(1, 2)).transpose(1, 2) for l in layers) / len(layers)
    return F.layer_norm(y, y.shape[-1:])


PAIRS = {
    "dinov2_vitb14_to_vits16": dict(teacher="vit_base_patch14_dinov2", teacher_size=196,
                                    student="vit_small_patch16_224", student_size=224, blocks=None),
    "dinov3_vitb16_to_vits16": dict(teacher="vit_base_patch16_dinov3", teacher_size=224,
                                    student="vit_small_patch16_dinov3", student_size=224, blocks=6),
}


class TimmLayers(nn.Module):
    """A timm ViT (VisionTransformer or Eva) whose forward returns every block's output, on the
    target's tokens: CLS and patches, registers dropped (kdlab's rule across families)."""

    def __init__(self, model, blocks=None):
        super().__init__()
        if blocks is not None:
            model.blocks = model.blocks[:blocks]
        self.model = model
        self.outputs = []
        for block in model.blocks:
            block.register_forward_hook(lambda _m, _i, out: self.outputs.append(out))

    def forward(self, images):
        self.outputs = []
        self.model.forward_features(images)
        skip = self.model.num_prefix_tokens
        return [torch.cat([x[:, :1], x[:, skip:]], dim=1) for x in self.outputs]


def average_normalised(layers):
    return sum(F.instance_norm(l.float().transpose(1, 2)).transpose(1, 2) for l in layers) / len(layers)


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in ("extra_tokens", "positions")
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def gflop_per_image(blocks, tokens=197, dim=768, mlp=3072, patches=196, patch=16):
    """2 × multiply-adds of the matrix products (REFERENCE.md: 2.91 per ViT-B block)."""
    block = 2 * tokens * dim * (3 * dim + dim + 2 * mlp) + 2 * 2 * tokens * tokens * dim
    embed = 2 * patches * dim * 3 * patch * patch
    return (blocks * block + embed) / 1e9


def timed(step, steps, warmup, sync):
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - start


def attention_ms(batch, steps, warmup, sync, device, dtype, tokens=197, dim=768, heads=12):
    """One teacher attention layer's forward with the relative position bias (timm's BEiT passes
    it to SDPA as attn_mask) and one student layer's forward and backward, from packed
    projections to merged heads as the models do, in ms per call for the whole batch."""
    def split(qkv):
        return qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)

    def attention(qkv, bias=None):
        q, k, v = split(qkv)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(batch, tokens, dim)

    qkv = torch.randn(batch, tokens, 3 * dim, device=device, dtype=dtype)
    bias = torch.randn(1, heads, tokens, tokens, device=device, dtype=dtype)
    trained = torch.randn(batch, tokens, 3 * dim, device=device, dtype=dtype, requires_grad=True)

    def teacher():
        with torch.no_grad():
            attention(qkv, bias)

    def student():
        attention(trained).float().sum().backward()

    return [1e3 * timed(f, steps, warmup, sync) / steps for f in (teacher, student)]


class Folder(torch.utils.data.Dataset):
    """Every image file under root (flat or class folders), as torchvision's pipeline reads it."""

    def __init__(self, root, size):
        from torchvision import transforms

        self.files = sorted(
            os.path.join(d, f)
            for d, _, fs in os.walk(root)
            for f in fs
            if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".webp"))
        )
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


def data_img_s(root, batch, workers, images_wanted):
    dataset = Folder(root, 224)
    if len(dataset) == 0:
        return None
    repeats = max(1, math.ceil(images_wanted / len(dataset)))
    dataset = torch.utils.data.ConcatDataset([dataset] * repeats)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=True,
                                         drop_last=False, persistent_workers=False)
    it = iter(loader)
    next(it)  # workers started, first batch made
    start, seen = time.perf_counter(), 0
    for batch_images in it:
        seen += batch_images.shape[0]
    return seen / (time.perf_counter() - start) if seen else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=["f32", "bf16", "f16"], default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile teacher and student")
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "assets"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-images", type=int, default=512, help="images the data measurement reads")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pair", choices=sorted(PAIRS), help="another family's pair (see above)")
    args = parser.parse_args()

    import timm

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    amp_dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.precision)
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    torch.manual_seed(0)
    connector = None
    if args.pair:
        pair = PAIRS[args.pair]
        t_size, s_size = pair["teacher_size"], pair["student_size"]
        teacher = TimmLayers(timm.create_model(pair["teacher"], pretrained=False, num_classes=0,
                                               img_size=t_size)).to(device).eval()
        student = TimmLayers(timm.create_model(pair["student"], pretrained=False, num_classes=0,
                                               img_size=s_size), pair["blocks"]).to(device).train()
        connector = nn.Linear(student.model.embed_dim, teacher.model.embed_dim).to(device)
        student.connector = connector  # trained, decayed and stepped with the student
        teacher_fn = lambda model, x: model(x)
        student_fn = student
    else:
        t_size = s_size = 224
        teacher = timm.create_model("beitv2_base_patch16_224", pretrained=False, num_classes=0).to(device).eval()
        student = Data2Vec2Student().to(device).train()
        teacher_fn, student_fn = teacher_layers, student
    for p in teacher.parameters():
        p.requires_grad_(False)
    if args.compile:
        teacher_fn = torch.compile(teacher_layers)
        student_fn = torch.compile(student)
    optimizer = torch.optim.AdamW(param_groups(student, 0.01), lr=5e-4 * args.batch / 256, betas=(0.9, 0.98),
                                  eps=1e-6, fused=cuda)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "f16")
    images = torch.randn(args.batch, 3, t_size, t_size, device=device)
    student_images = images if s_size == t_size else torch.randn(args.batch, 3, s_size, s_size, device=device)

    def target():
        with torch.no_grad(), autocast():
            return prepare_target(teacher_fn(teacher, images))

    def prediction():
        with autocast():
            layers = student_fn(student_images)
            if connector is None:
                return prepare_target(layers)
            y = connector(average_normalised(layers))
        return F.layer_norm(y.float(), y.shape[-1:])

    fixed_target = target()

    def student_step(y):
        loss = F.mse_loss(prediction().float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def kd_step():
        student_step(target())

    results = {}
    for name, step in [("teacher_forward", target), ("student_step", lambda: student_step(fixed_target)),
                       ("kd_step", kd_step)]:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds = timed(step, args.steps, args.warmup, sync)
        results[name] = args.batch * args.steps / seconds
    peak = torch.cuda.max_memory_reserved() / 2**20 if cuda else None
    if args.pair:
        # The attention and data measurements are the thesis pair's.
        teacher_attention = student_attention = data = None
        kd_gflop = None
    else:
        teacher_attention, student_attention = attention_ms(
            args.batch, args.steps, args.warmup, sync, device, amp_dtype or torch.float32)
        data = data_img_s(args.data, args.batch, args.workers, args.data_images) if args.data else None
        kd_gflop = gflop_per_image(12) + 3 * gflop_per_image(8)
    print(json.dumps({
        "tool": "pytorch" + (" + torch.compile" if args.compile else ""),
        "version": f"torch {torch.__version__}, timm {timm.__version__}",
        "device": torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()} CPU, {args.threads} threads",
        "batch": args.batch,
        "steps": args.steps,
        "precision": args.precision,
        "kd_step_img_s": results["kd_step"],
        "teacher_forward_img_s": results["teacher_forward"],
        "student_step_img_s": results["student_step"],
        "data_img_s": data,
        "data_workers": args.workers,
        "peak_memory_mb": peak,
        "kd_step_gflop_per_image": kd_gflop,
        "kd_step_tflop_s": results["kd_step"] * kd_gflop / 1e3 if kd_gflop else None,
        "pair": args.pair or "beitv2_to_d2v2",
        "attention": "sdpa",
        "teacher_attention_ms": teacher_attention,
        "student_attention_ms": student_attention,
        "attention_ms_per_kd_step": 12 * teacher_attention + 8 * student_attention if teacher_attention else None,
    }))


if __name__ == "__main__":
    sys.exit(main())
