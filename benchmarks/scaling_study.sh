#!/usr/bin/env bash
# The multi-GPU scaling study, in phases that each fit a 10-minute call and resume where the last stopped.
#
#   bash benchmarks/scaling_study.sh                        # every phase, in order
#   bash benchmarks/scaling_study.sh up http32 http1        # some phases (a later call runs the rest)
#   QUICK=1 GPUS="1 2" bash benchmarks/scaling_study.sh     # rehearsal on a CPU machine (logical GPUs)
#
# Phases, and how long each took on 2x H200 (32 cores):
#   setup     export (fp16) and engine-bench on GPU 0                                   ~1 min
#   up        rayscale up --replicas MAXG with the defaults (ingress, processes per GPU)  ~1 min
#   http32    bench over HTTP, 32 images/request, --replicas GPUS, concurrency CONC32    ~3 min
#   http1     the same at 1 image/request, concurrency CONC1                             ~2 min
#   http256   the same at 256 images/request, concurrency CONC256                        ~2 min
#   handle256 the same over a DeploymentHandle (no HTTP), 256 images/request             ~2 min
#   grpc32    the same over gRPC, 32 images/request                                      ~2 min
#   down      rayscale down
#   triton    Triton (Python backend, TRITON_INSTANCES per GPU) with N GPUs for N in GPUS, same bench as http32
#   twonode   two Ray nodes on this host (one GPU each, CUDA_VISIBLE_DEVICES per `ray start`, node addresses
#             127.0.0.2 and 127.0.0.3 so each node's ingress has its own): up, http32 with each client
#             actor aimed at its own node's ingress, down
#   report    rayscale report over everything, with per-GPU-count costs
# and, when named (not run by default), the searches for each server's best under a p99 SLO
# (`rayscale tune`; TUNE_IPR images/request, p99 ≤ TUNE_SLO_MS, on TUNE_GPUS GPUs):
#   tune_triton    Triton: instances per GPU 4,8,12 (the seeds), batch wait 0,2 ms, preferred batch sizes
#                  none (= the max batch) or the request size's doublings; at most TUNE_MINUTES a call   ~4 min
#   tune_rayscale  rayscale: processes per GPU 2,4,8 (the seeds), batches in flight 2,4,8, batch wait 0,2 ms  ~4 min
#   tune_report    rayscale report over every search under tune-<N>gpu/ (Best of each under the SLO)   <1 min
# Each search ends with TUNE_REPEATS runs of its best candidate at its SLO load with standard windows;
# a search cut off by its budget continues (--resume) in the next call, e.g.
#   TUNE_IPR=32 TUNE_SLO_MS=100 bash benchmarks/scaling_study.sh tune_triton tune_rayscale     # one call
#   TUNE_IPR=1 TUNE_SLO_MS=25 bash benchmarks/scaling_study.sh tune_triton tune_rayscale tune_report
#
# Every bench writes its file after each point and runs with --resume, so a phase cut off by a time
# limit continues where it stopped; a phase whose file is complete is skipped. A phase that needs the
# app starts it when `rayscale status` finds none. Results go to $OUT (default benchmarks/results/scaling-<date>).
set -u
GPUS=${GPUS:-"1 2"}
QUICK=${QUICK:-0}
OUT=${OUT:-benchmarks/results/scaling-$(date -u +%Y%m%d)}
GPU_HOUR=${GPU_HOUR:-2.5}
MODEL=${MODEL:-models/openclip_vit_b32}
RS=${RS:-"python3 -m rayscale.cli"}
mkdir -p "$OUT"
MAXG=$(echo $GPUS | tr ' ' '\n' | sort -n | tail -1)
REPLICAS=$(echo $GPUS | tr ' ' ',')
DOWN=$(echo $GPUS | tr ' ' '\n' | sort -rn | tr '\n' ',' | sed 's/,$//')  # largest first: phases alternate, so each starts where the last ended
COSTS=$(for g in $GPUS; do printf "%sgpu:%s," "$g" "$(python3 -c "print($g*$GPU_HOUR)")"; done | sed 's/,$//')
export RAYSCALE_STATE_DIR=${RAYSCALE_STATE_DIR:-/tmp/rayscale-study-state}
if [ "$QUICK" = 1 ]; then
  CONC32=${CONC32:-1,2}; CONC1=${CONC1:-2}; CONC256=${CONC256:-1}; IPR=2; BIG=4
  WIN="--warmup 1 --window 1.5 --duration 6 --max-windows 4"
  UP="--num-gpus $MAXG --cpus-per-replica 0.25 --provider cpu --max-batch-size 8"; CL=${CL:-"--clients 1 --client-cpus 0"}
  TUNE_WIN=${TUNE_WIN:-"--warmup 0.5 --window 1 --max-windows 3 --repeat-warmup 0.5 --repeat-window 1 --repeat-max-windows 3 --max-concurrency 4 --concurrency-start 1"}
  TUNE_ARGS=${TUNE_ARGS:-"--provider cpu --cpus-per-replica 0.25 --clients 1 --client-cpus 0"}
  TUNE_IPR=${TUNE_IPR:-2}; TUNE_SLO_MS=${TUNE_SLO_MS:-3000}  # a CPU serves one 2-image request in ~150-600 ms
  TUNE_REPEATS=${TUNE_REPEATS:-2}
  TRITON="--provider cpu --instances-per-gpu 1 --max-batch-size 8"; PREC=fp32; BS=1,2
else
  CONC32=${CONC32:-64,128,256,512}; CONC1=${CONC1:-128,512}; CONC256=${CONC256:-16,64}; IPR=32; BIG=256
  WIN=${WIN:-"--warmup 3 --window 2.5 --duration 15 --max-windows 6"}
  UP=${UP:-""}; CL=${CL:-""}; TRITON="--instances-per-gpu ${TRITON_INSTANCES:-4}"; PREC=fp16; BS=${BS:-256}
  TUNE_IPR=${TUNE_IPR:-32}; TUNE_SLO_MS=${TUNE_SLO_MS:-100}
  # short search windows (thousands of requests a second settle in a second); the repeats use standard ones
  TUNE_WIN=${TUNE_WIN:-"--warmup 1 --window 1 --max-windows 3 --repeat-warmup 2 --repeat-window 2 --repeat-max-windows 4 --concurrency-start $([ "$TUNE_IPR" -ge 8 ] && echo 32 || echo 128)"}
  TUNE_ARGS=${TUNE_ARGS:-""}; TUNE_REPEATS=${TUNE_REPEATS:-3}
  export RAYSCALE_TRITON_PYTHON=${RAYSCALE_TRITON_PYTHON:-$(command -v python3)}
fi
step() { local name=$1; shift; echo "=== $(date -u +%T) $name: $*"; local t0=$(date +%s); timeout "${STEP_TIMEOUT:-570}" "$@" >> "$OUT/$name.log" 2>&1; local rc=$?; echo "    rc=$rc in $(( $(date +%s) - t0 ))s"; tail -n "${TAIL:-6}" "$OUT/$name.log"; return $rc; }
complete() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get('status') == 'complete' else 1)" "$1" 2>/dev/null; }
bench() {  # bench NAME FILE ARGS...: skipped when FILE is complete, resumed when it is partial
  local name=$1 file=$2; shift 2
  complete "$file" && { echo "=== $name: $file is complete"; return 0; }
  local resume=(); [ -f "$file" ] && resume=(--resume)
  step "$name" $RS bench "$@" $WIN $CL --model-dir "$MODEL" --out "$file" "${resume[@]}"
}
ensure_up() {  # the app as `rayscale up` runs it by default, on MAXG GPUs
  $RS status > /dev/null 2>&1 && return 0
  step up $RS up --replicas "$MAXG" --model "$MODEL" $UP ${UP_EXTRA:-}
}

phase_setup() {
  { nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || echo "no NVIDIA GPU"; nproc; python3 --version; date -u; git rev-parse HEAD 2>/dev/null; } > "$OUT/machine.txt" 2>&1
  [ -f "$MODEL/model.json" ] || step export $RS export --out "$MODEL" --precision $PREC
  cp "$MODEL/model.json" "$OUT/model.json" 2>/dev/null
  [ -f "$OUT/engine-gpu0.json" ] || CUDA_VISIBLE_DEVICES=0 step engine $RS engine-bench --model "$MODEL" --batch-sizes $BS --out "$OUT/engine-gpu0.json" --overwrite
}
phase_up() { ensure_up; }
phase_http32() { ensure_up; bench http32 "$OUT/rayscale-http-${IPR}img.json" --url http://127.0.0.1:8000 --replicas "$DOWN" --concurrency "$CONC32" --images-per-request $IPR; }
phase_http1() { ensure_up; bench http1 "$OUT/rayscale-http-1img.json" --url http://127.0.0.1:8000 --replicas "$REPLICAS" --concurrency "$CONC1" --images-per-request 1; }
phase_http256() { ensure_up; bench http256 "$OUT/rayscale-http-${BIG}img.json" --url http://127.0.0.1:8000 --replicas "$DOWN" --concurrency "$CONC256" --images-per-request $BIG; }
phase_handle256() { ensure_up; bench handle256 "$OUT/rayscale-handle-${BIG}img.json" --handle --replicas "$REPLICAS" --concurrency "$CONC256" --images-per-request $BIG; }
phase_grpc32() { ensure_up; bench grpc32 "$OUT/rayscale-grpc-${IPR}img.json" --grpc --url 127.0.0.1:8001 --replicas "$DOWN" --concurrency "$CONC32" --images-per-request $IPR; }
phase_down() { step down $RS down; }

stub_path() {  # Triton's Python-backend stub gets numpy<2 (RAYSCALE_NUMPY1) and the staged packages first
  [ -n "${RAYSCALE_NUMPY1:-}" ] || return 0
  local site; site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  echo "import os, sys; sys.path[0:0] = [p for p in os.environ.get('RAYSCALE_STUB_PATH', '').split(':') if p]" > "$site/zz_rayscale_stub.pth"
  export RAYSCALE_STUB_PATH=$RAYSCALE_NUMPY1:/tmp/site
}
phase_triton() {
  local n gpus
  for n in $GPUS; do
    [ "$QUICK" = 1 ] && [ "$n" -gt 1 ] && break  # no GPUs to give Triton on a CPU rehearsal
    complete "$OUT/triton-${n}gpu-${IPR}img.json" && { echo "=== triton ${n}gpu is complete"; continue; }
    gpus=$([ "$QUICK" = 1 ] && echo "--gpus 1" || echo "--gpus $n")
    stub_path
    step "triton_up_${n}gpu" $RS triton up $gpus $TRITON --model "$MODEL" --port 8100
    unset RAYSCALE_STUB_PATH
    bench "triton_${n}gpu" "$OUT/triton-${n}gpu-${IPR}img.json" --url http://127.0.0.1:8100 --concurrency "$CONC32" --images-per-request $IPR
    step "triton_down_${n}gpu" $RS triton down
  done
}
phase_twonode() {  # the same app over two Ray nodes on one host: a head with GPU 0, a worker with GPU 1
  [ "$MAXG" -ge 2 ] || { echo "twonode needs 2 GPUs"; return 0; }
  complete "$OUT/rayscale-2node-http-${IPR}img.json" && { echo "=== twonode is complete"; return 0; }
  local port=6390 gpus=(--num-gpus 1)
  # Two loopback addresses other than 127.0.0.1 (which Ray replaces with the machine's address, and which
  # its one-machine switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps only by refusing a second node)
  unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER; export RAY_AUTH_MODE=token
  [ "$QUICK" = 1 ] && gpus=(--num-gpus 1 --num-cpus 2)
  $RS down > /dev/null 2>&1
  local tmp=/tmp/rayscale-2node  # both nodes' files: this phase stops the processes that name it, and only those
  CUDA_VISIBLE_DEVICES=0 step ray_head ray start --head --temp-dir=$tmp --port=$port --node-ip-address=127.0.0.2 --dashboard-host=127.0.0.2 --disable-usage-stats "${gpus[@]}"
  CUDA_VISIBLE_DEVICES=1 step ray_worker ray start --temp-dir=$tmp --address=127.0.0.2:$port --node-ip-address=127.0.0.3 "${gpus[@]}"
  step up_2node $RS up --address 127.0.0.2:$port --replicas 2 --model "$MODEL" $(echo $UP | sed 's/--num-gpus [0-9]*//')
  bench http32_2node "$OUT/rayscale-2node-http-${IPR}img.json" --address 127.0.0.2:$port --target rayscale-2node \
    --replicas "$REPLICAS" --concurrency "$CONC32" --images-per-request $IPR
  step down_2node $RS down --address 127.0.0.2:$port
  pkill -TERM -f "$tmp" ; sleep 3; pkill -KILL -f "$tmp"
}
TUNE_DIR() { echo "$OUT/tune-${TUNE_GPUS:-1}gpu"; }
tune() {  # tune TARGET SPACE...: a budget that fits one call; --resume continues the search in the next
  local target=$1; shift
  local space=(); for s in "$@"; do space+=(--space "$s"); done
  local out; out="$(TUNE_DIR)/ipr${TUNE_IPR}-slo${TUNE_SLO_MS}/$target"
  step "tune_${target}_ipr${TUNE_IPR}" $RS tune --target "$target" --gpus "${TUNE_GPUS:-1}" --images-per-request "$TUNE_IPR" \
    --slo-p99-ms "$TUNE_SLO_MS" --budget-minutes "${TUNE_MINUTES:-3.5}" --strategy hill "${space[@]}" \
    --repeats "$TUNE_REPEATS" --repeat-top "${TUNE_REPEAT_TOP:-1}" --model "$MODEL" --out "$out" --resume $TUNE_WIN $TUNE_ARGS
  local rc=$?  # 0: best found, 3: none meets the SLO, 4: budget spent first (the next call resumes)
  [ "$rc" = 4 ] && echo "    $target: budget spent before the search finished; run the phase again to resume"
  return $rc
}
phase_tune_triton() {
  stub_path
  if [ "$QUICK" = 1 ]; then tune triton instances_per_gpu=1 batch_wait_ms=2 preferred_batch_sizes=none,pow2 max_batch_size=8
  else tune triton instances_per_gpu=4,8,12 batch_wait_ms=0,2 preferred_batch_sizes=none,pow2 max_batch_size=256; fi
  unset RAYSCALE_STUB_PATH
}
phase_tune_rayscale() {
  $RS down > /dev/null 2>&1  # tune starts each candidate itself
  if [ "$QUICK" = 1 ]; then tune rayscale processes_per_gpu=1 batches_in_flight=1,2 batch_wait_ms=2 max_batch_size=8
  else tune rayscale processes_per_gpu=2,4,8 batches_in_flight=2,4,8 batch_wait_ms=0,2 max_batch_size=256; fi
}
phase_tune_report() {  # a report per searched setting, each under its own SLO: both servers' best, cost per 1000 images
  local dir slo
  for dir in "$(TUNE_DIR)"/ipr*-slo*; do
    [ -d "$dir" ] || continue
    slo=${dir##*-slo}
    step "tune_report_$(basename "$dir")" $RS report "$dir" --slo-p99-ms "$slo" --gpu-hour-cost "$GPU_HOUR" \
      --allow-mismatch --out "$dir/report"
  done
}
phase_report() {
  local engine=(); [ -f "$OUT/engine-gpu0.json" ] && engine=(--engine "$OUT/engine-gpu0.json")
  step report $RS report "$OUT"/rayscale-*.json "$OUT"/triton-*.json "${engine[@]}" --costs "$COSTS" --slo-p99-ms ${SLO_MS:-300} --out "$OUT/report" ${ALLOW_MISMATCH:+--allow-mismatch}
}

for phase in ${@:-setup up http32 http1 http256 handle256 grpc32 down triton twonode report}; do
  echo "##### phase $phase"
  "phase_$phase"
done
echo "study: $OUT"
