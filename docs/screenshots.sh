#!/usr/bin/env bash
# Regenerates the pictures in docs/ from a real demo run: the app's panels under Xvfb and the
# `heatmap` command's figures. Run from anywhere after `cargo build --release`:
#   docs/screenshots.sh [path/to/screenshot-gui.sh]
# Needs (Debian): xvfb imagemagick mesa-vulkan-drivers libvulkan1 libxkbcommon-x11-0 libxcursor1
# libxrandr2 libxi6 libx11-xcb1.
set -euo pipefail
cd "$(dirname "$0")/.."
shot=${1:-../shared/tools/screenshot-gui.sh}
bin=${KDLAB_BIN:-${CARGO_TARGET_DIR:-target}/release/kdlab}
runs=runs

# 1. Setup, and Run in the middle of a demo run started from the app.
"$shot" docs/setup.png 6 -- "$bin" --backend cpu app
"$shot" docs/run.png 45 -- "$bin" --backend cpu app --tab run --start

# 2. A complete demo run, headless (the newest run, so Inspect opens it), then Inspect.
"$bin" --no-gui --backend cpu train --config configs/demo.ron --runs-dir "$runs"
run=$(ls -td "$runs"/demo-* | head -1)
"$shot" docs/inspect.png 12 -- "$bin" --backend cpu app --tab inspect
"$shot" docs/inspect-pca.png 12 -- "$bin" --backend cpu app --tab inspect --view pca
"$shot" docs/inspect-timeline.png 8 -- "$bin" --backend cpu app --tab inspect --view timeline
"$shot" docs/inspect-attention.png 12 -- "$bin" --backend cpu app --tab inspect --view attention
"$shot" docs/inspect-cka.png 12 -- "$bin" --backend cpu app --tab inspect --view cka

# 3. Evaluate: k-NN and the linear probe of the run's student and its (random) teacher on a small
# labelled set made from the sample photos (class = photo, images = 96×96 crops of it).
data=$runs/photo-crops
rm -rf "$data"
RANDOM=7
for photo in assets/*.jpg; do
  class=$(basename "$photo" .jpg)
  read -r w h < <(identify -format '%w %h\n' "$photo")
  for i in $(seq 0 11); do
    split=train; [ "$i" -ge 8 ] && split=val
    mkdir -p "$data/$split/$class"
    x=$((RANDOM % (w - 96))); y=$((RANDOM % (h - 96)))
    convert "$photo" -crop "96x96+$x+$y" +repage "$data/$split/$class/$i.png"
  done
done
for method in knn linear; do
  "$bin" --no-gui --backend cpu eval "$method" --checkpoint "$run" --teacher \
    --train "$data/train" --val "$data/val" --epochs 40 --batch-size 16
done
"$shot" docs/evaluate.png 8 -- "$bin" --backend cpu app --tab evaluate

# 4. Runs: the complete run beside a second one stopped at 40 steps (the newest, followed).
"$bin" --no-gui --backend cpu train --config configs/demo.ron --runs-dir "$runs" --max-steps 40
"$shot" docs/runs.png 8 -- "$bin" --backend cpu app --tab runs --runs-dir "$runs"

# 5. The same pictures from the command line.
rm -rf docs/heatmap
"$bin" --no-gui --backend cpu heatmap --config configs/demo.ron --checkpoint "$run" \
  --image assets/chelsea.jpg assets/astronaut.jpg --out docs/heatmap
rm docs/heatmap/*.csv
echo "pictures from $run written to docs/"
