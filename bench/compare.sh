#!/usr/bin/env bash
# kdlab against PyTorch, side by side on this machine: the same measurements (KD step, teacher
# forward, student step, data pipeline) with the same batch, steps and precision, then the ratios.
# Needs the kdlab binary (built elsewhere is fine: cargo is not needed here) and Python with
# torch, timm and torchvision.
#
#   bench/compare.sh [--kdlab PATH] [--batch 128] [--steps 20] [--precision bf16] [--backend auto]
#                    [--attention fused|unfused] [--compile] [--peak-tflops 989] [--out DIR]
#                    [--pair dinov2_vitb14_to_vits16|dinov3_vitb16_to_vits16]
#
# --pair measures another family's pair (bench/pairs/NAME.ron for kdlab, reference.py --pair
# NAME for timm) instead of the thesis pair.
#
# Prints one table and writes kdlab.json, pytorch.json (and pytorch-compile.json) to --out.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kdlab=${KDLAB:-$here/../target/release/kdlab}
batch=8 steps=10 precision=bf16 backend=auto attention=fused compile=0 peak= out=$(mktemp -d) pair=
while [ $# -gt 0 ]; do
  case $1 in
    --kdlab) kdlab=$2; shift ;;
    --batch) batch=$2; shift ;;
    --steps) steps=$2; shift ;;
    --precision) precision=$2; shift ;;
    --backend) backend=$2; shift ;;
    --attention) attention=$2; shift ;;
    --compile) compile=1 ;;
    --peak-tflops) peak=$2; shift ;;
    --out) out=$2; shift ;;
    --pair) pair=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
data=$here/../assets

echo "kdlab:   $("$kdlab" --version)" >&2
kdlab_pair=() reference_pair=()
if [ -n "$pair" ]; then
  kdlab_pair=(--config "$here/pairs/$pair.ron")
  reference_pair=(--pair "$pair")
fi
"$kdlab" --no-gui --backend "$backend" bench "${kdlab_pair[@]}" --batch "$batch" --steps "$steps" \
  --precision "$precision" --attention "$attention" --data "$data" --json > "$out/kdlab.json"
python3 "$here/reference.py" "${reference_pair[@]}" --batch "$batch" --steps "$steps" \
  --precision "$precision" --data "$data" > "$out/pytorch.json"
files=("$out/kdlab.json" "$out/pytorch.json")
if [ "$compile" = 1 ]; then
  python3 "$here/reference.py" --batch "$batch" --steps "$steps" --precision "$precision" \
    --data "$data" --compile > "$out/pytorch-compile.json"
  files+=("$out/pytorch-compile.json")
fi

python3 - "$peak" "${files[@]}" <<'PY'
import json, sys
peak = float(sys.argv[1]) if sys.argv[1] else None
rows = [json.load(open(f)) for f in sys.argv[2:]]
kd = rows[0]
keys = [("kd_step_img_s", "KD step img/s"), ("teacher_forward_img_s", "teacher forward img/s"),
        ("student_step_img_s", "student step img/s"), ("data_img_s", "data pipeline img/s"),
        ("peak_memory_mb", "device memory MiB"), ("kd_step_tflop_s", "KD step TFLOP/s"),
        ("teacher_attention_ms", "teacher attention ms"), ("student_attention_ms", "student attention ms"),
        ("attention_ms_per_kd_step", "attention ms / KD step")]
# Lower is better for these: their ratio is PyTorch / kdlab too, so > 1 still means kdlab wins.
lower_better = {"peak_memory_mb", "teacher_attention_ms", "student_attention_ms", "attention_ms_per_kd_step"}
print(f"device: {kd['device']} | batch {kd['batch']} | {kd['steps']} steps | precision {kd['precision']} | attention {kd.get('attention', '-')}")
print(f"{'':24}" + "".join(f"{r['tool']:>22}" for r in rows) + "".join(f"{'ratio vs ' + r['tool']:>26}" for r in rows[1:]))
for key, label in keys:
    cells = [r.get(key) for r in rows]
    line = f"{label:24}" + "".join(f"{c:>22.1f}" if c is not None else f"{'-':>22}" for c in cells)
    for other in cells[1:]:
        ok = cells[0] is not None and other
        # Higher is better except for memory, where the ratio is PyTorch / kdlab as well.
        line += f"{cells[0] / other if key not in lower_better else other / cells[0]:>26.2f}" if ok else f"{'-':>26}"
    print(line)
if peak:
    for r in rows:
        print(f"MFU {r['tool']}: {100 * r['kd_step_tflop_s'] / peak:.1f}% of {peak} TFLOP/s")
print("ratio > 1: kdlab faster (memory: kdlab uses less)")
PY
echo "JSON in $out" >&2
