"""Checks and the summary table of bench/gpu.sh (numpy and safetensors only).

    python3 bench/gpu_checks.py features GOLDEN OUT_DIR      # (a) CUDA features vs PyTorch goldens
    python3 bench/gpu_checks.py losses CPU_RUN RUN TOLERANCE  # (b) a CUDA run's losses vs the CPU's
    python3 bench/gpu_checks.py table OUT                     # the one table at the end

Each check prints one line per comparison and exits 1 when one fails.
"""
import glob
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def features(golden_path, out):
    golden = load_file(golden_path)
    ok = True
    outputs = {}
    for model, prefix, target in [("beit_unilm", "beit_unilm", "target"),
                                  ("beit_timm", "beit_timm", "target"), ("d2v2", "student", "pred")]:
        got = load_file(os.path.join(out, f"{model}.safetensors"))
        outputs[model] = got
        pairs = [(k.split(".", 1)[1], k) for k in sorted(golden) if k.startswith(f"{prefix}.layer.")]
        for name, key in pairs + [("target", f"{prefix}.{target}")]:
            diff = float(np.abs(got[name] - golden[key]).max())
            good = diff <= 1e-3
            ok &= good
            print(f"{'ok  ' if good else 'FAIL'} features {model} {name}: max |Δ| {diff:.2e} (≤ 1e-3)")
    # One KD loss: the CUDA student's prediction against the CUDA unilm teacher's target.
    loss = float(((outputs["d2v2"]["target"] - outputs["beit_unilm"]["target"]) ** 2).mean())
    want = float(golden["loss.unilm_teacher_vs_student"])
    good = abs(loss - want) <= 1e-4 * max(1.0, abs(want))
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'} KD loss of these features {loss:.6f} vs PyTorch {want:.6f}")
    return ok


def run_losses(run):
    lines = [json.loads(l) for l in open(glob.glob(os.path.join(run, "*", "metrics.jsonl"))[0])]
    return [l["loss"] for l in lines if l.get("loss") is not None]


def losses(cpu_run, run, tolerance):
    cpu, other = run_losses(cpu_run), run_losses(run)
    if len(cpu) != len(other) or not cpu:
        print(f"FAIL losses: {len(other)} lines vs the CPU's {len(cpu)}")
        return False
    worst = max(abs(a - b) / abs(a) for a, b in zip(cpu, other))
    good = worst <= float(tolerance)
    print(f"{'ok  ' if good else 'FAIL'} {os.path.basename(run)}: {len(cpu)} losses, worst rel Δ "
          f"vs CPU f32 {worst:.2e} (≤ {tolerance}); last {other[-1]:.5f} vs {cpu[-1]:.5f}")
    return good


def table(out):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "bench", "*", "*.json"))):
        try:
            r = json.load(open(path))
        except (OSError, ValueError):
            continue
        rows.append(r)
    peaks = json.load(open(os.path.join(out, "peaks.json")))
    print(f"\n{'tool':28}{'attn':>8}{'prec':>6}{'batch':>7}{'KD img/s':>11}{'teacher':>10}{'student':>10}"
          f"{'MiB':>9}{'TFLOP/s':>9}{'MFU':>7}{'T-attn ms':>11}{'S-attn ms':>11}{'attn/KD':>9}")
    for r in sorted(rows, key=lambda r: (r["precision"], r["tool"], r.get("attention", ""))):
        peak = peaks[r["precision"]]
        mem = r.get("peak_memory_mb")
        step_ms = 1e3 * r["batch"] / r["kd_step_img_s"]
        share = r.get("attention_ms_per_kd_step")
        print(f"{r['tool']:28}{r.get('attention', '-'):>8}{r['precision']:>6}{r['batch']:>7}{r['kd_step_img_s']:>11.1f}"
              f"{r['teacher_forward_img_s']:>10.1f}{r['student_step_img_s']:>10.1f}"
              f"{mem if mem is None else round(mem):>9}{r['kd_step_tflop_s']:>9.1f}"
              f"{100 * r['kd_step_tflop_s'] / peak:>6.1f}%"
              f"{r.get('teacher_attention_ms', float('nan')):>11.2f}{r.get('student_attention_ms', float('nan')):>11.2f}"
              f"{'-' if share is None else f'{100 * share / step_ms:.0f}%':>9}")
    for name in ["largest_batch_kdlab", "largest_batch_pytorch"]:
        path = os.path.join(out, name)
        if os.path.exists(path):
            print(f"{name.replace('_', ' ')} (bf16): {open(path).read().strip()}")
    return True


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    ok = {"features": features, "losses": losses, "table": table}[command](*rest)
    sys.exit(0 if ok else 1)
