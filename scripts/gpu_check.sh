#!/usr/bin/env bash
# The GPU checks in one run (under 8 minutes on one H100; the timeouts below add up to 480 s): the GPU tests, the
# extraction benchmark with the reader thread and with 4 reader processes, the foundation-model stand-ins, the training
# benchmark at Aff-Wild2 scale and `analyze` on the GPU. Each benchmark prints JSON lines;
# everything also lands in $OUT (or ./gpu-check) for the README's figures.
# Usage: scripts/gpu_check.sh   (repository root, in an environment made by the README's install command)
set -uo pipefail
out="${OUT:-gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
timeout 90 python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -n 15 | tee "$out/pytest-gpu.txt"
for w in 0 4; do
  timeout 70 python -m pipeline bench extract --device cuda --seconds 30 --min-model-seconds 8 --workers "$w" \
    --only iresnet --only vggish --work /tmp/bench-extract 2>>"$out/bench-extract.err" | tee -a "$out/bench-extract.jsonl"
done
# the foundation-model kinds: base-size random-init stand-ins (WavLM-Base, ViT-B/16 widths; docs/features.md)
timeout 80 python -m pipeline bench extract --device cuda --seconds 20 --min-model-seconds 8 --stand-ins base \
  --only wavlm --only vit --only onnx_audio --only onnx_image --work /tmp/bench-extract \
  2>>"$out/bench-extract.err" | tee -a "$out/bench-extract.jsonl"
timeout 110 python -m pipeline bench train --device cuda --frames 480000 --paper-size --work /tmp/bench-train \
  2>"$out/bench-train.err" | tee "$out/bench-train.jsonl"
# analyze on the GPU: the video and a 1-minute loop of it, the networks alone; no live run (it is paced by real time)
video=../shared/realmedia/videos/pyfeat_WolfgangLanger_Pexels.mp4
[ -f "$video" ] || video=shared/realmedia/videos/pyfeat_WolfgangLanger_Pexels.mp4
timeout 60 python -m pipeline bench analyze --device cuda --minutes 1 --no-live --video "$video" --work /tmp/bench-analyze \
  2>"$out/bench-analyze.err" | tee "$out/bench-analyze.jsonl"
