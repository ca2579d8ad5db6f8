#!/usr/bin/env bash
# The multi-GPU scaling study in one command: Ray Serve vs Triton at 1..N GPUs, same client, same windows.
#
#   GPUS="1 2" bash benchmarks/scaling_study.sh                 # a 2-GPU machine
#   GPUS="1 2 4 8" CONC=1,4,16,64,128,256,512 bash benchmarks/scaling_study.sh
#   QUICK=1 GPUS="1 2" bash benchmarks/scaling_study.sh         # rehearsal on a CPU machine (logical GPUs)
#   PER_GPU=4 INGRESS=haproxy GPUS="1 2" bash benchmarks/scaling_study.sh   # 4 replicas sharing each GPU
#
# PER_GPU replicas share each GPU (1/PER_GPU GPU each; the one-card study found 4 best for requests
# of 32 images); INGRESS is proxy (Serve's Python proxy, the default) or haproxy (see README).
#
# Steps: export -> engine-bench on each GPU -> rayscale up with max(GPUS) × PER_GPU replicas -> bench --replicas
# <GPUS × PER_GPU> over the handle and over HTTP (best images/request and 1 image/request) -> for each N: Triton
# with N GPUs -> the same bench -> rayscale report with per-GPU-count costs. Results go to $OUT (default
# benchmarks/results/scaling-<date>); a failed step is logged and the study goes on.
set -u
GPUS=${GPUS:-"1 2"}
QUICK=${QUICK:-0}
OUT=${OUT:-benchmarks/results/scaling-$(date -u +%Y%m%d-%H%M)}
GPU_HOUR=${GPU_HOUR:-2.5}
MODEL=${MODEL:-models/openclip_vit_b32}
RS=${RS:-"python3 -m rayscale.cli"}
mkdir -p "$OUT"
MAXG=$(echo $GPUS | tr ' ' '\n' | sort -n | tail -1)
PER_GPU=${PER_GPU:-1}
[ "$PER_GPU" -ge 1 ] 2>/dev/null || { echo "error: PER_GPU must be an integer ≥ 1 (replicas per GPU), got '$PER_GPU'" >&2; exit 2; }
FRAC=$(python3 -c "print(int(10000 / $PER_GPU) / 10000)")  # rounded down: PER_GPU of them fit one GPU
REPLICAS=$(for g in $GPUS; do printf "%s," $((g * PER_GPU)); done | sed 's/,$//')
MAXR=$((MAXG * PER_GPU))
COSTS=$(for g in $GPUS; do printf "%sgpu:%s," "$g" "$(python3 -c "print($g*$GPU_HOUR)")"; done | sed 's/,$//')
if [ "$QUICK" = 1 ]; then
  CONC=${CONC:-1,2}; IPR=${IPR:-2}; WIN="--warmup 1 --window 1.5 --duration 6 --max-windows 4"
  UP="--num-gpus $MAXG --gpus-per-replica $FRAC --cpus-per-replica 0.25 --provider cpu"; CL="--clients 1 --client-cpus 0"
  TRITON="--gpus 1 --provider cpu --instances-per-gpu 1"; PREC=fp32; BS=1,2
else
  CONC=${CONC:-1,4,16,64,128,256}; IPR=${IPR:-32}; WIN="--warmup 5 --window 5 --duration 60 --max-windows 10"
  UP="--gpus-per-replica $FRAC --cpus-per-replica 2"; CL="--clients $((MAXG * 2)) --client-cpus 1"; TRITON=""; PREC=fp16; BS=1,8,32,64,128,256
fi
step() { local name=$1; shift; echo "=== $(date +%T) $name: $*"; "$@" > "$OUT/$name.log" 2>&1; local rc=$?; echo "    rc=$rc"; tail -n 4 "$OUT/$name.log"; return $rc; }

nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader > "$OUT/machine.txt" 2>&1 || echo "no NVIDIA GPU" > "$OUT/machine.txt"
[ -f "$MODEL/model.json" ] || step export $RS export --out "$MODEL" --precision $PREC
for g in $(seq 0 $((MAXG - 1))); do
  [ "$QUICK" = 1 ] && [ "$g" -gt 0 ] && break
  CUDA_VISIBLE_DEVICES=$g step "engine_gpu$g" $RS engine-bench --model "$MODEL" --batch-sizes $BS --out "$OUT/engine-gpu$g.json" --overwrite
done

export RAYSCALE_STATE_DIR=${RAYSCALE_STATE_DIR:-/tmp/rayscale-study-state}
step up $RS up --replicas "$MAXR" --ingress "${INGRESS:-proxy}" --model "$MODEL" $UP
for ipr in $IPR 1; do
  step "rayscale_handle_${ipr}img" $RS bench --handle --replicas "$REPLICAS" --concurrency "$CONC" --images-per-request $ipr $WIN $CL --out "$OUT/rayscale-handle-${ipr}img.json" --overwrite
  step "rayscale_http_${ipr}img" $RS bench --url http://127.0.0.1:8000 --replicas "$REPLICAS" --concurrency "$CONC" --images-per-request $ipr $WIN $CL --out "$OUT/rayscale-http-${ipr}img.json" --overwrite
done
step down $RS down

for n in $GPUS; do
  [ "$QUICK" = 1 ] && [ "$n" -gt 1 ] && break  # no GPUs to give Triton on a CPU rehearsal
  step "triton_up_${n}gpu" $RS triton up ${TRITON:---gpus $n} --model "$MODEL" --port 8100
  for ipr in $IPR 1; do
    step "triton_${n}gpu_${ipr}img" $RS bench --url http://127.0.0.1:8100 --replicas $n --concurrency "$CONC" --images-per-request $ipr $WIN $CL --model-dir "$MODEL" --out "$OUT/triton-${n}gpu-${ipr}img.json" --overwrite
  done
  step "triton_down_${n}gpu" $RS triton down
done

step report $RS report "$OUT"/rayscale-*.json "$OUT"/triton-*.json --engine "$OUT/engine-gpu0.json" --costs "$COSTS" --slo-p99-ms ${SLO_MS:-200} --out "$OUT/report" ${ALLOW_MISMATCH:+--allow-mismatch}
echo "study: $OUT (report: $OUT/report/report.md)"
