#!/usr/bin/env bash
# One-card GPU check, run on the GPU machine in one call after the packages are staged in /tmp/site:
# export (fp16, fp32) -> engine-bench -> rayscale up -> bench (handle, HTTP) + exporter scrape
# -> Triton baseline -> bench -> report. Each step is logged and timed; a failed step does not stop
# the rest. Everything lands in $OUT/results.tgz (plus a log).
#
#   QUICK=1 bash benchmarks/gpu_check.sh     # tiny sizes, for a rehearsal on a CPU machine
set -u
OUT=${OUT:-/tmp/gpu_check_out}
R=$OUT/results
mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0
RS="python3 -m rayscale.cli"
MODEL16=models/openclip_vit_b32
MODEL32=models/openclip_vit_b32_fp32
if [ "${QUICK:-0}" = 1 ]; then
  BS=1,4; MINT=0.3; IPR=2; CONC=1,2; CONC1=2; WIN="--warmup 1 --window 1.5 --duration 6 --max-windows 4"; GPR=0
  RCPU=0.5; TRITON="--gpus 1 --provider cpu"; CL="--clients 1 --client-cpus 0"
else
  BS=1,8,32,64,128,256; MINT=1.5; IPR=32; CONC=16,64; CONC1=64,256; WIN="--warmup 3 --window 2.5 --duration 15 --max-windows 6"; GPR=1
  TRITON="--gpus 1"; CL="--clients 4 --client-cpus 0.5"
  export RAYSCALE_TRITON_PYTHON=$(command -v python3)
fi
step() { local name=$1; shift; echo "=== $(date +%T) $name: $*"; local t0=$(date +%s); timeout "${STEP_TIMEOUT:-240}" "$@" > "$R/$name.log" 2>&1; local rc=$?; echo "    rc=$rc in $(( $(date +%s) - t0 ))s"; tail -n 25 "$R/$name.log"; return $rc; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; python3 --version; date -u; git rev-parse HEAD 2>/dev/null; } > "$R/machine.txt" 2>&1
cat "$R/machine.txt"

step export_fp16 $RS export --out $MODEL16 --precision fp16
step export_fp32 $RS export --out $MODEL32 --precision fp32
step engine_fp16 $RS engine-bench --model $MODEL16 --batch-sizes $BS --min-time $MINT --out "$R/engine-fp16.json" --overwrite
step engine_fp32 $RS engine-bench --model $MODEL32 --batch-sizes $BS --min-time $MINT --torch-eager off --out "$R/engine-fp32.json" --overwrite

export RAYSCALE_STATE_DIR=/tmp/rs_state
step up $RS up --replicas 1 --model $MODEL16 --port 8000 --gpus-per-replica $GPR --cpus-per-replica ${RCPU:-2}
( sleep 25; curl -s 127.0.0.1:9400/metrics > "$R/exporter_scrape.txt" ) &
step bench_handle $RS bench --handle --concurrency $CONC --images-per-request $IPR $WIN $CL --out "$R/bench-rayscale-handle.json" --overwrite
step bench_http $RS bench --url http://127.0.0.1:8000 --concurrency $CONC --images-per-request $IPR $WIN $CL --out "$R/bench-rayscale-http.json" --overwrite
step bench_http_1img $RS bench --url http://127.0.0.1:8000 --concurrency $CONC1 --images-per-request 1 $WIN $CL --out "$R/bench-rayscale-http-1img.json" --overwrite
curl -s 127.0.0.1:8000/v2/models/openclip_vit_b32/stats > "$R/rayscale_stats.json"
step down $RS down

# Triton's Python-backend stub needs numpy<2 (staged in /tmp/np1); a .pth puts it first only in
# processes started with RAYSCALE_STUB_PATH set, so rayscale itself keeps the image's numpy.
[ "${QUICK:-0}" = 1 ] || { SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
echo "import os, sys; sys.path[0:0] = [p for p in os.environ.get('RAYSCALE_STUB_PATH', '').split(':') if p]" > "$SITE/zz_rayscale_stub.pth"; }
RAYSCALE_STUB_PATH=/tmp/np1:/tmp/site step triton_up $RS triton up $TRITON --instances-per-gpu 2 --model $MODEL16 --port 8100
step bench_triton $RS bench --url http://127.0.0.1:8100 --concurrency $CONC --images-per-request $IPR $WIN $CL --model-dir $MODEL16 --out "$R/bench-triton-http.json" --overwrite
step bench_triton_1img $RS bench --url http://127.0.0.1:8100 --concurrency $CONC1 --images-per-request 1 $WIN $CL --model-dir $MODEL16 --out "$R/bench-triton-http-1img.json" --overwrite
step triton_down $RS triton down

step report $RS report "$R"/bench-*.json --engine "$R/engine-fp16.json" --gpu-hour-cost 2.5 --slo-p99-ms 200 --out "$R/report"
cp $MODEL16/model.json "$R/model-fp16.json" 2>/dev/null; cp $MODEL32/model.json "$R/model-fp32.json" 2>/dev/null
tar czf "$OUT/results.tgz" -C "$OUT" results
ls -la "$R"
