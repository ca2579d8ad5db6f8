#!/usr/bin/env bash
# Install rayscale and run the main job on this machine: export -> engine-bench -> up -> bench -> report -> down.
# Uses the GPU when there is one (fp16), the CPU otherwise (fp32). PRETRAINED=/path/ckpt.pt for real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-reports/quickstart}
MODEL=${MODEL:-models/openclip_vit_b32}

# torch is only needed to export; pin the release this platform ships when none is installed.
$PY -c "import torch, torchvision" 2>/dev/null || $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $PY -m pip install -q torch torchvision
$PY -m pip install -q -e '.[export,report]'

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  precision=fp16; ipr=32; conc=1,4,16,64; windows="--warmup 2 --window 3 --duration 30"
else
  # A CPU serves a few requests a second: 8 s windows hold enough of them for three to agree within 10%.
  precision=fp32; ipr=4; conc=1,4; windows="--warmup 2 --window 8 --duration 60"
fi
mkdir -p "$OUT"
if [ ! -f "$MODEL/model.json" ]; then
  rayscale export --out "$MODEL" --precision "$precision" ${PRETRAINED:+--pretrained "$PRETRAINED"}
fi
rayscale engine-bench --model "$MODEL" --batch-sizes "1,$ipr" --min-time 1 --out "$OUT/engine.json" --overwrite

rayscale up --replicas 1 --model "$MODEL"
trap 'rayscale down' EXIT
rayscale bench --concurrency "$conc" --images-per-request "$ipr" $windows \
  --out "$OUT/bench.json" --overwrite --csv
rayscale report "$OUT/bench.json" --engine "$OUT/engine.json" --gpu-hour-cost 2.5 --slo-p99-ms 1000 --out "$OUT"
echo "report: $OUT/report.html (one page to open; report.md beside it)"
