#!/usr/bin/env bash
# Host cost per image: this tree against another build of rayscale, side by side in one call on one GPU.
#
#   OLD_TREE=/path/to/other/rayscale OUT=/tmp/host_cost bash benchmarks/host_cost.sh
#   QUICK=1 OLD_TREE=... bash benchmarks/host_cost.sh      # a rehearsal on a CPU machine (null engine)
#
# For each build in turn (OLD_TREE first, then this tree), with the same settings for both:
#   engine   rayscale engine-bench at batch 256 (its input-on-the-GPU figure is the ceiling)
#   up       rayscale up with the defaults (one GPU: 4 replica processes, the direct ingress)
#   http32   bench over HTTP, 32 images/request, concurrency CONC32, with a py-spy profile of one
#            replica process during it
#   grpc32   the same over gRPC
#   http256  bench over HTTP, 256 images/request, concurrency 16 and 64
#   handle256  the same through a DeploymentHandle
#   down
# Around each bench, benchmarks/proc_cpu.py reads the server's CPU (replica processes and the
# ingress HAProxy, from /proc) and the images it served (its statistics endpoint): server
# CPU-seconds per 1000 images for any build. Each build runs its own client code from its own tree.
# Results: $OUT/old and $OUT/new (bench files, engine files, cpu-*.json, py-spy profiles, logs),
# $OUT/machine.txt, and the table printed at the end ($OUT/summary.txt). About 6 minutes on one H200.
set -u
OLD_TREE=${OLD_TREE:?set OLD_TREE to the other build\'s tree (a folder holding its rayscale package)}
OLD_TREE=$(cd "$OLD_TREE" && pwd)
NEW_TREE=$PWD
OUT=${OUT:-/tmp/host_cost}
MODEL=${MODEL:-$PWD/models/openclip_vit_b32}
CONC32=${CONC32:-128}
PORT=${PORT:-8000}; GRPC_PORT=${GRPC_PORT:-8001}
mkdir -p "$OUT"
export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0
if [ "${QUICK:-0}" = 1 ]; then
  WIN="--warmup 1 --window 1.5 --duration 6 --max-windows 4"; CONC32=${CONC32_QUICK:-4}; C256="1,2"; BIG=8; IPR=4
  UP="--provider null --cpus-per-replica 0.5 --no-exporter"; ENGINE="--provider cpu --batch-sizes 8 --min-time 0.5"; CL="--clients 1 --client-cpus 0"
else
  WIN="--warmup 3 --window 2 --duration 10 --max-windows 4"; C256="16,64"; BIG=256; IPR=32
  UP=""; ENGINE="--batch-sizes 256 --min-time 2 --torch-eager off"; CL=""
fi
step() {  # step DIR NAME CMD...: run with a time limit, log to DIR/NAME.log, print its tail
  local dir=$1 name=$2; shift 2
  echo "=== $(date -u +%T) $(basename "$dir") $name: $*"
  local t0; t0=$(date +%s)
  timeout "${STEP_TIMEOUT:-240}" "$@" > "$dir/$name.log" 2>&1
  local rc=$?
  echo "    rc=$rc in $(( $(date +%s) - t0 ))s"; tail -n "${TAIL:-3}" "$dir/$name.log"
  return $rc
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no NVIDIA GPU"
  echo "cores: $(nproc)"; python3 --version; date -u
  echo "new: $NEW_TREE $(git -C "$NEW_TREE" rev-parse HEAD 2>/dev/null)"
  echo "old: $OLD_TREE $(git -C "$OLD_TREE" rev-parse HEAD 2>/dev/null)"
  echo "command: OLD_TREE=$OLD_TREE OUT=$OUT CONC32=$CONC32 PORT=$PORT QUICK=${QUICK:-0} bash benchmarks/host_cost.sh"; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"
if [ ! -f "$MODEL/model.onnx" ]; then
  [ "${QUICK:-0}" = 1 ] && PREC=fp32 || PREC=fp16
  PYTHONPATH=$NEW_TREE:/tmp/site step "$OUT" export python3 -m rayscale.cli export --out "$MODEL" --precision $PREC
fi
CPU="python3 $NEW_TREE/benchmarks/proc_cpu.py"

measure() {  # measure BUILD TREE
  local build=$1 tree=$2 d=$OUT/$1
  mkdir -p "$d"
  export PYTHONPATH=$tree:/tmp/site RAYSCALE_STATE_DIR=/tmp/host-cost-state-$build
  local RS="python3 -m rayscale.cli"
  local same="$WIN $CL --model-dir $MODEL --overwrite"
  step "$d" engine $RS engine-bench --model "$MODEL" $ENGINE --out "$d/engine.json" --overwrite
  step "$d" up $RS up --replicas 1 --model "$MODEL" --port $PORT --grpc-port $GRPC_PORT $UP || { step "$d" down $RS down; return 1; }
  local pid; pid=$($RS status --json 2>/dev/null | python3 -c "import json, sys; print(json.load(sys.stdin)['replicas'][0]['pid'])" 2>/dev/null)
  bench() {  # bench LABEL FILE ARGS...
    local label=$1 file=$2; shift 2
    $CPU snapshot "$d/.cpu-before.json" --url http://127.0.0.1:$PORT
    step "$d" "$label" $RS bench "$@" $same --out "$d/$file"
    $CPU delta "$d/.cpu-before.json" --url http://127.0.0.1:$PORT --label "$label" --out "$d/cpu-$label.json" | tail -1
  }
  if [ -n "$pid" ] && command -v py-spy > /dev/null; then
    ( sleep 6; py-spy record --native -d 8 -r 50 -p "$pid" -f speedscope -o "$d/pyspy-replica-http32.json" > "$d/pyspy.log" 2>&1 \
      || py-spy record --nonblocking -d 6 -r 50 -p "$pid" -f speedscope -o "$d/pyspy-replica-http32.json" >> "$d/pyspy.log" 2>&1 ) &
  fi
  bench http32 http-32img.json --url http://127.0.0.1:$PORT --target "rayscale-$build" --concurrency "$CONC32" --images-per-request $IPR
  wait
  bench grpc32 grpc-32img.json --grpc --url 127.0.0.1:$GRPC_PORT --target "rayscale-$build" --concurrency "$CONC32" --images-per-request $IPR
  bench http256 http-256img.json --url http://127.0.0.1:$PORT --target "rayscale-$build" --concurrency "$C256" --images-per-request $BIG
  bench handle256 handle-256img.json --handle --target "rayscale-$build" --concurrency "$C256" --images-per-request $BIG
  curl -s 127.0.0.1:$PORT/v2/models/openclip_vit_b32/stats > "$d/server-stats.json"
  step "$d" down $RS down
}

measure old "$OLD_TREE"
measure new "$NEW_TREE"
python3 "$NEW_TREE/benchmarks/proc_cpu.py" table "$OUT" | tee "$OUT/summary.txt"
