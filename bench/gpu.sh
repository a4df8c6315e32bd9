#!/usr/bin/env bash
# One self-checking GPU run, for a machine lent with an NVIDIA GPU where python3 with torch, timm,
# safetensors and numpy exist and cargo and the network do not. Fits in ≈ 8 minutes on an
# H100/H200:
#
#   bench/gpu.sh KDLAB[.xz] [BF16_PEAK_TFLOPS] [F32_PEAK_TFLOPS]
#
#   (a) correctness first: `features --backend cuda` on the three fixture checkpoints against the
#       PyTorch goldens (f32, ≤ 1e-3) and one KD loss — a failure stops the run;
#   (b) 100 demo steps from the fixture checkpoints on CUDA in f32 and bf16 against the CPU run's
#       losses (with the fused attention's forward and backward in the path);
#   (c) `kdlab bench` at batch 256 in f32, bf16 and f16 against PyTorch eager and torch.compile
#       (compile columns while the time budget lasts), with MFU and the attention layers alone
#       (kdlab's fused CubeCL kernels vs SDPA), then kdlab with `--attention unfused` (burn's
#       operations) in bf16 and f32 for the end-to-end change the kernels make;
#   (d) the largest batch that fits in bf16, kdlab vs PyTorch (doubling from 256);
#   then one table. Everything lands under $OUT (else a temp dir).
#
# Peaks default to an H100/H200 SXM: 989 dense bf16/f16 tensor TFLOP/s, 67 f32 TFLOP/s (PyTorch
# does not use TF32 for f32 matmuls by default, nor does kdlab). When no CUDA toolkit is
# installed, kdlab uses the NVRTC and headers of torch's pip wheels (site-packages/nvidia/cu13).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
kdlab=${1:?usage: bench/gpu.sh KDLAB[.xz] [BF16_PEAK_TFLOPS] [F32_PEAK_TFLOPS]}
bf16_peak=${2:-989}
f32_peak=${3:-67}
out=${OUT:-$(mktemp -d)}
budget=${GPU_BUDGET_S:-450}
start=$SECONDS
mkdir -p "$out/bench"
if [[ $kdlab == *.xz ]]; then
  xz -dkc "$kdlab" > "$out/kdlab.bin" && chmod +x "$out/kdlab.bin" && kdlab=$out/kdlab.bin
fi
left() { echo $((budget - (SECONDS - start))); }
step() { echo -e "\n=== $* ($((SECONDS - start)) s)" | tee -a "$out/log.txt"; }
echo "{\"f32\": $f32_peak, \"bf16\": $bf16_peak, \"f16\": $bf16_peak}" > "$out/peaks.json"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
python3 -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)' \
  | tee "$out/versions.txt"
"$kdlab" --version | tee -a "$out/versions.txt"

step "(a) features on CUDA vs the PyTorch goldens"
fx=$repo/tests/fixtures
mkdir -p "$out/features"
ok=1
for spec in "beit_unilm beitv2_tiny_unilm.pth" "beit_timm beitv2_tiny_timm.safetensors" \
            "d2v2 d2v2_tiny_fairseq.pt --depth 2"; do
  set -- $spec
  name=$1 weights=$2; shift 2
  "$kdlab" --no-gui features --backend cuda --weights "$fx/$weights" "$@" \
    --input "$fx/golden_tiny.safetensors" --out "$out/features/$name.safetensors" \
    2>&1 | tee -a "$out/log.txt" || ok=0
done
if [ $ok = 1 ]; then
  python3 "$here/gpu_checks.py" features "$fx/golden_tiny.safetensors" "$out/features" \
    | tee -a "$out/checks.txt"
  ok=$(( ${PIPESTATUS[0]} == 0 ))
fi
if [ $ok != 1 ]; then
  echo "CORRECTNESS FAILED on CUDA: no benchmark is worth reporting; see $out/log.txt" | tee -a "$out/checks.txt"
  exit 1
fi

step "(b) 100 demo steps from the fixture checkpoints: CPU f32, CUDA f32, CUDA bf16"
# From checkpoints, not the demo's random init: each backend draws random numbers its own way, so
# only models loaded from files start equal on the CPU and on CUDA.
from_fixtures=(--set "teacher.weights=$fx/beitv2_tiny_unilm.pth" --set teacher.architecture=None
  --set "student.weights=$fx/d2v2_tiny_fairseq.pt" --set student.architecture=None
  --set "student.blocks=FirstMain(2)")
for run in cpu-f32 cuda-f32 cuda-bf16; do
  backend=${run%-*} precision=${run#*-}
  sed -e "s|train: \"../assets\"|train: \"$repo/assets\"|" -e "s|precision: f32|precision: $precision|" \
    "$repo/configs/demo.ron" > "$out/demo-$run.ron"
  "$kdlab" --no-gui --backend "$backend" train --config "$out/demo-$run.ron" "${from_fixtures[@]}" \
    --runs-dir "$out/demo/$run" --max-steps 100 2>&1 | tail -3 | tee -a "$out/log.txt"
done
python3 "$here/gpu_checks.py" losses "$out/demo/cpu-f32" "$out/demo/cuda-f32" 0.01 | tee -a "$out/checks.txt"
python3 "$here/gpu_checks.py" losses "$out/demo/cpu-f32" "$out/demo/cuda-bf16" 0.05 | tee -a "$out/checks.txt"

step "(c) batch 256: kdlab and PyTorch eager in f32, bf16, f16"
for precision in bf16 f16 f32; do
  d=$out/bench/$precision; mkdir -p "$d"
  "$kdlab" --no-gui --backend cuda bench --batch 256 --steps 20 --precision "$precision" \
    --data "$repo/assets" --json > "$d/kdlab.json" 2>> "$out/log.txt" || rm -f "$d/kdlab.json"
  python3 "$here/reference.py" --batch 256 --steps 20 --precision "$precision" \
    --data "$repo/assets" > "$d/pytorch.json" 2>> "$out/log.txt" || rm -f "$d/pytorch.json"
done
step "(c) kdlab with burn's attention instead of the fused kernels"
for precision in bf16 f32; do
  d=$out/bench/$precision
  if [ "$(left)" -lt 200 ]; then echo "unfused $precision: skipped, $(left) s of the budget left" | tee -a "$out/log.txt"; continue; fi
  "$kdlab" --no-gui --backend cuda bench --batch 256 --steps 20 --precision "$precision" \
    --attention unfused --data none --json > "$d/kdlab-unfused.json" 2>> "$out/log.txt" \
    || rm -f "$d/kdlab-unfused.json"
done
step "(c) torch.compile columns"
for precision in bf16 f16 f32; do
  if [ "$(left)" -lt 150 ]; then echo "torch.compile $precision: skipped, $(left) s of the budget left" | tee -a "$out/log.txt"; continue; fi
  python3 "$here/reference.py" --batch 256 --steps 20 --precision "$precision" --compile \
    --data "" > "$out/bench/$precision/pytorch-compile.json" 2>> "$out/log.txt" \
    || rm -f "$out/bench/$precision/pytorch-compile.json"
done

step "(d) the largest batch that fits in bf16"
for tool in kdlab pytorch; do
  fits=none
  for batch in 512 1024 2048; do
    if [ "$(left)" -lt 40 ]; then echo "$tool: stopped at $batch, out of time" >> "$out/log.txt"; break; fi
    if [ $tool = kdlab ]; then
      "$kdlab" --no-gui --backend cuda bench --batch $batch --steps 2 --precision bf16 --json \
        > "$out/fit-$tool-$batch.json" 2>> "$out/log.txt"
    else
      python3 "$here/reference.py" --batch $batch --steps 2 --warmup 1 --precision bf16 --data "" \
        > "$out/fit-$tool-$batch.json" 2>> "$out/log.txt"
    fi
    if [ $? = 0 ]; then fits=$batch; else break; fi
  done
  echo "$fits (tried 512, 1024, 2048 after 256)" > "$out/largest_batch_$tool"
done

step "summary"
cat "$out/checks.txt"
python3 "$here/gpu_checks.py" table "$out" | tee "$out/table.txt"
echo "everything under $out ($((SECONDS - start)) s)" >&2
