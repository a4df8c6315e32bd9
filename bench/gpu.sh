#!/usr/bin/env bash
# Every GPU figure of the README's Performance table in one run, for a machine lent with an NVIDIA
# GPU where Python, torch, timm and torchvision exist and cargo does not:
#
#   bench/gpu.sh KDLAB [BF16_PEAK_TFLOPS] [F32_PEAK_TFLOPS]
#
# KDLAB is the release binary built elsewhere (`strip` + `xz` it to carry it; a .xz is unpacked
# here). Peaks default to an H100/H200 SXM: 989 dense bf16 tensor TFLOP/s, 67 f32 TFLOP/s
# (PyTorch does not use TF32 for f32 matmuls by default). Runs compare.sh at batch 256 in bf16
# (with a torch.compile column) and in f32; tables on stdout, JSON under $OUT (else a temp dir).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kdlab=${1:?usage: bench/gpu.sh KDLAB [BF16_PEAK_TFLOPS] [F32_PEAK_TFLOPS]}
bf16_peak=${2:-989}
f32_peak=${3:-67}
out=${OUT:-$(mktemp -d)}
if [[ $kdlab == *.xz ]]; then
  xz -dkc "$kdlab" > "$out/kdlab" && chmod +x "$out/kdlab" && kdlab=$out/kdlab
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
python3 -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)' \
  | tee "$out/versions.txt"
"$here/compare.sh" --kdlab "$kdlab" --backend cuda --batch 256 --steps 20 --precision bf16 \
  --compile --peak-tflops "$bf16_peak" --out "$out/bf16"
"$here/compare.sh" --kdlab "$kdlab" --backend cuda --batch 256 --steps 20 --precision f32 \
  --peak-tflops "$f32_peak" --out "$out/f32"
echo "JSON in $out" >&2
