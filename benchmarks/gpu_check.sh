#!/usr/bin/env bash
# One-card GPU study, run on the GPU machine after the packages are staged in /tmp/site.
# Phases run in the order given (default: all), so the study can be split across calls that
# each stay under a time limit; results go straight to $OUT/results, one file per step:
#
#   export   rayscale export --precision fp16 (skipped when the model is already there)
#   engine   rayscale engine-bench: page-locked vs pageable host input, device input, torch eager
#   serve    rayscale up (Serve's proxy) -> bench over a handle and over HTTP, and perf_analyzer
#            over HTTP with the same settings -> down
#   handle   rayscale up -> bench over a handle only (with a py-spy profile of the replica) -> down;
#            VARIANT labels the run, HANDLE_IPR lists images per request, PROVIDER=null serves no model
#   haproxy  rayscale up --ingress haproxy -> HTTP bench (32 images and 1 image per request),
#            perf_analyzer -> down
#   shared   the same with N replicas sharing the GPU (1/N GPU each; SHARES lists N, default 2):
#            bench and perf_analyzer (SHARED_PA=0 skips it)
#   triton   rayscale triton up (Python backend, TRITON_INSTANCES per GPU, default 4) -> bench and
#            perf_analyzer (TRITON_PA=0 skips it) -> down
#   referee  Triton again, one point (32 images, concurrency 16) from each of three clients —
#            rayscale bench, perf_analyzer and Triton's own Python client — with the server's
#            own queue/compute split for each (benchmarks/client_referee.py)
#   gputest  the GPU-only tests (pytest -m gpu)
#   report   rayscale report over everything measured
#
#   bash benchmarks/gpu_check.sh export engine serve      # first call
#   bash benchmarks/gpu_check.sh haproxy triton report    # second call
#   QUICK=1 bash benchmarks/gpu_check.sh                  # tiny sizes: a rehearsal on a CPU machine
#
# perf_analyzer comes from RAYSCALE_PERF_ANALYZER (with its libraries on LD_LIBRARY_PATH) or from
# scripts/install_perf_analyzer.sh. Triton's Python-backend stub needs numpy<2: RAYSCALE_NUMPY1
# names a folder holding it (the stub gets it first on its path; rayscale keeps its own numpy).
set -u
OUT=${OUT:-/tmp/gpu_check_out}
R=$OUT/results
mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0 RAYSCALE_STATE_DIR=${RAYSCALE_STATE_DIR:-/tmp/rs_state}
RS="python3 -m rayscale.cli"
MODEL=models/openclip_vit_b32
IPR=32
if [ "${QUICK:-0}" = 1 ]; then
  BS=1,4; MINT=0.3; CONC=1,2; CONC1=2; WIN="--warmup 1 --window 1.5 --duration 6 --max-windows 4"; GPR=0; RCPU=0.5
  TRITON="--gpus 1 --provider cpu"; CL="--clients 1 --client-cpus 0"; IPR=2; FRAC=0
else
  BS=${BS:-32,64,128,256}; MINT=1.5; CONC=${CONC:-16,64}; CONC1=64; WIN="--warmup 3 --window 2.5 --duration 15 --max-windows 6"; GPR=1; RCPU=2
  TRITON="--gpus 1"; CL="--clients 4 --client-cpus 0.5"; FRAC=0.5
  export RAYSCALE_TRITON_PYTHON=${RAYSCALE_TRITON_PYTHON:-$(command -v python3)}
fi
SAME="--images-per-request $IPR $WIN --model-dir $MODEL --overwrite"
step() { local name=$1; shift; echo "=== $(date +%T) $name: $*"; local t0=$(date +%s); timeout "${STEP_TIMEOUT:-240}" "$@" > "$R/$name.log" 2>&1; local rc=$?; echo "    rc=$rc in $(( $(date +%s) - t0 ))s"; tail -n "${TAIL:-12}" "$R/$name.log"; return $rc; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; python3 --version; date -u; git rev-parse HEAD 2>/dev/null; } > "$R/machine.txt" 2>&1

phase_export() {
  [ -f $MODEL/model.onnx ] && { echo "model exists: $MODEL"; return; }
  step export $RS export --out $MODEL --precision fp16
}
phase_engine() {
  step engine $RS engine-bench --model $MODEL --batch-sizes $BS --min-time $MINT --out "$R/engine-fp16.json" --overwrite
}
phase_serve() {
  step up $RS up --replicas 1 --model $MODEL --port 8000 --gpus-per-replica $GPR --cpus-per-replica $RCPU
  local pid; pid=$(grep -o 'pid [0-9]*' "$R/up.log" | head -1 | cut -d' ' -f2)
  if [ -n "$pid" ] && command -v py-spy >/dev/null; then
    ( sleep 12; py-spy record --nonblocking -d 8 -r 50 -p "$pid" -f speedscope -o "$R/pyspy-replica-handle.json" > "$R/pyspy.log" 2>&1 ) &
  fi
  step bench_handle $RS bench --handle --concurrency $CONC $CL $SAME --out "$R/bench-rayscale-handle.json"
  step bench_http $RS bench --url http://127.0.0.1:8000 --concurrency $CONC $CL $SAME --out "$R/bench-rayscale-http.json"
  step pa_http $RS bench --client perf_analyzer --url http://127.0.0.1:8000 --concurrency $CONC $SAME --out "$R/bench-rayscale-http-perf_analyzer.json"
  curl -s 127.0.0.1:8000/v2/models/openclip_vit_b32/stats > "$R/rayscale-stats.json"
  step down $RS down
}
phase_handle() {  # the handle path alone; VARIANT names the run, and its environment reaches the replicas
  # (e.g. RAYSCALE_ENGINE_COPY=direct, or RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0);
  # HANDLE_IPR lists images per request; PROVIDER=null measures the serving path with no model
  local v=${VARIANT:-default} ipr=${HANDLE_IPR:-$IPR} f=bench
  [ "${PROVIDER:-auto}" = null ] && f=serving-path  # no model: kept out of the report's bench-*.json
  step up_handle_$v $RS up --replicas 1 --model $MODEL --port 8000 --gpus-per-replica $GPR --cpus-per-replica $RCPU --provider ${PROVIDER:-auto}
  local pid; pid=$(grep -o 'pid [0-9]*' "$R/up_handle_$v.log" | head -1 | cut -d' ' -f2)
  if [ -n "$pid" ] && command -v py-spy >/dev/null; then
    ( sleep 10; py-spy record --nonblocking --idle -d 6 -r 50 -p "$pid" -f speedscope -o "$R/pyspy-replica-handle-$v.json" > "$R/pyspy-$v.log" 2>&1 ) &
  fi
  step bench_handle_$v $RS bench --handle --target rayscale-handle-$v --concurrency $CONC $CL --images-per-request $ipr $WIN \
    --model-dir $MODEL --overwrite --out "$R/$f-rayscale-handle-$v.json"
  curl -s 127.0.0.1:8000/v2/models/openclip_vit_b32/stats > "$R/rayscale-stats-handle-$v.json"
  wait
  step down_handle_$v $RS down
}
phase_haproxy() {
  step up_haproxy $RS up --ingress haproxy --replicas 1 --model $MODEL --port 8000 --gpus-per-replica $GPR --cpus-per-replica $RCPU
  step bench_haproxy $RS bench --url http://127.0.0.1:8000 --target rayscale-haproxy --concurrency $CONC $CL $SAME --out "$R/bench-rayscale-haproxy-http.json"
  step bench_haproxy_1img $RS bench --url http://127.0.0.1:8000 --target rayscale-haproxy --concurrency $CONC1 $CL --images-per-request 1 $WIN --model-dir $MODEL --overwrite --out "$R/bench-rayscale-haproxy-http-1img.json"
  step pa_haproxy $RS bench --client perf_analyzer --url http://127.0.0.1:8000 --target rayscale-haproxy --concurrency $CONC $SAME --out "$R/bench-rayscale-haproxy-http-perf_analyzer.json"
  step down_haproxy $RS down
}
phase_shared() {  # SHARES lists how many replicas share the GPU (1/N GPU each), behind HAProxy
  [ "$FRAC" = 0 ] && return
  local n frac t
  for n in ${SHARES:-2}; do
    frac=$(python3 -c "print(int(10000 / $n) / 10000)")  # rounded down: N of them fit one GPU; t=rayscale-haproxy-${n}x$(python3 -c "print(f'{1 / $n:.2g}')")gpu
    step up_shared_$n $RS up --ingress haproxy --replicas $n --model $MODEL --port 8000 --gpus-per-replica $frac --cpus-per-replica $RCPU
    step bench_shared_$n $RS bench --url http://127.0.0.1:8000 --target $t --concurrency $CONC $CL $SAME --out "$R/bench-$t-http.json"
    [ "${SHARED_PA:-1}" = 1 ] && step pa_shared_$n $RS bench --client perf_analyzer --url http://127.0.0.1:8000 --target $t --concurrency $CONC $SAME --out "$R/bench-$t-http-perf_analyzer.json"
    step down_shared_$n $RS down
  done
}
stub_path() {  # Triton's stub and tritonserver's interpreter get numpy<2 and the staged packages first
  [ -n "${RAYSCALE_NUMPY1:-}" ] || return 0
  local site; site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  echo "import os, sys; sys.path[0:0] = [p for p in os.environ.get('RAYSCALE_STUB_PATH', '').split(':') if p]" > "$site/zz_rayscale_stub.pth"
  export RAYSCALE_STUB_PATH=$RAYSCALE_NUMPY1:/tmp/site
}
phase_triton() {
  stub_path
  local n=${TRITON_INSTANCES:-4} t=triton; [ "$n" = 4 ] || t=triton-${n}inst
  step triton_up $RS triton up $TRITON --instances-per-gpu $n --model $MODEL --port 8100
  unset RAYSCALE_STUB_PATH
  step bench_triton $RS bench --url http://127.0.0.1:8100 --target $t --concurrency $CONC $CL $SAME --out "$R/bench-$t-http.json"
  [ "${TRITON_PA:-1}" = 1 ] && step pa_triton $RS bench --client perf_analyzer --url http://127.0.0.1:8100 --target $t --concurrency $CONC $SAME --out "$R/bench-$t-http-perf_analyzer.json"
  curl -s 127.0.0.1:8100/v2/models/openclip_vit_b32/stats > "$R/$t-stats.json"
  step triton_down $RS triton down
  cp ~/.cache/rayscale/triton.log "$R/$t-server.log" 2>/dev/null
}
phase_referee() {
  local ref="python3 benchmarks/client_referee.py" url=http://127.0.0.1:8100 snap=$R/.snap.json c=${CONC%%,*}
  stub_path
  step triton_up_referee $RS triton up $TRITON --model $MODEL --port 8100
  unset RAYSCALE_STUB_PATH
  $ref tritonclient $url --concurrency $c --images $IPR --seconds 5 > /dev/null  # warm-up
  $ref snapshot $url "$snap"
  step ref_rayscale $RS bench --url $url --concurrency $c $CL $SAME --out "$R/referee-triton-rayscale.json"
  $ref delta $url "$snap" --label "rayscale bench" | tee "$R/referee-server-rayscale.json"
  $ref snapshot $url "$snap"
  step ref_pa $RS bench --client perf_analyzer --url $url --concurrency $c $SAME --out "$R/referee-triton-perf_analyzer.json"
  $ref delta $url "$snap" --label perf_analyzer | tee "$R/referee-server-perf_analyzer.json"
  step ref_tritonclient $ref tritonclient $url --concurrency $c --images $IPR --seconds 12
  cp "$R/ref_tritonclient.log" "$R/referee-tritonclient.json"
  $ref snapshot $url "$snap"
  step ref_rayscale_again $RS bench --url $url --concurrency $c $CL $SAME --out "$R/referee-triton-rayscale-again.json"
  $ref delta $url "$snap" --label "rayscale bench, again" | tee "$R/referee-server-rayscale-again.json"
  step triton_down_referee $RS triton down
}
phase_gputest() {
  step gputest python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_engine.py
}
phase_report() {
  local engine=(); [ -f "$R/engine-fp16.json" ] && engine=(--engine "$R/engine-fp16.json")
  step report $RS report "$R"/bench-*.json "${engine[@]}" --gpu-hour-cost 2.5 --slo-p99-ms 300 --out "$R/report"
  cp $MODEL/model.json "$R/model-fp16.json" 2>/dev/null
}

for phase in ${@:-export engine serve haproxy shared triton referee report}; do
  echo "##### phase $phase"
  "phase_$phase"
done
ls -la "$R"
