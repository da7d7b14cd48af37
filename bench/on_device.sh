#!/usr/bin/env bash
# The one command for a lent H200 (issue 4's figures), run from the repository root there. Prepare here
# first: `bash bench/device_kit.sh` (wheels + redis-server in .whl/) and the archive in .data/
# (`mkdir -p .data && cp ../shared/data/cifar10-jpg.tar.gz .data/`); then, with the device tool,
#   run  carry=[".whl", ".data/cifar10-jpg.tar.gz"]  timeout_s=600  command="bash bench/on_device.sh core"
# (never carry all of .data: its decode cache is 180 MB). `core` fits in about 7 minutes: the GPU
# benchmark's core items (budget 270 s), then cifar10-fast through the API and a worker twice (a cold
# worker that compiles, then a warm one). `all` runs the whole benchmark (budget 450 s) and leaves the
# service item to a second call: `bash bench/on_device.sh service`.
# Everything lands under $OUT: bench.jsonl, the plot, the reports, service.jsonl and the logs.
# SERVICE_PRESET, SERVICE_DEVICE, SERVICE_DATASET_PATH, SERVICE_MAX_LR, SERVICE_EPOCHS (each: empty for the
# preset's own), REDIS_PORT, KIT and PYTHON change the service item; tests/bench/test_on_device.py runs it
# on the CPU with the digits preset that way.
set -uo pipefail
mode=${1:-core}
OUT=$(mkdir -p "${OUT:-runs/bench}" && cd "${OUT:-runs/bench}" && pwd)
SERVICE_PRESET=${SERVICE_PRESET:-cifar10-fast}
SERVICE_DEVICE=${SERVICE_DEVICE:-cuda}
SERVICE_DATASET_PATH=${SERVICE_DATASET_PATH-cifar10-jpg.tar.gz}
SERVICE_EPOCHS=${SERVICE_EPOCHS:-}
SERVICE_MAX_LR=${SERVICE_MAX_LR-from-bench}
KIT=${KIT:-.whl}
REDIS_PORT=${REDIS_PORT:-6399}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

# The GPU image's python3 has torch, numpy, matplotlib and scikit-learn; the service's packages travel.
if [ -d "$KIT" ]; then
    tag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    wheels=()
    for wheel in "$KIT"/*.whl; do  # the kit's compiled wheel is for 3.12: another Python takes its own
        if [ "$tag" != cp312 ] && [[ $wheel == *pydantic_core-* ]]; then continue; fi
        wheels+=("$wheel")
    done
    if [ "$tag" != cp312 ]; then wheels+=("$KIT/$tag"/*.whl); fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}" || { echo "on_device: installing the kit failed under $("$PYTHON" -V)" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
fi
{ nvidia-smi; "$PYTHON" -c "import sys, torch; print(sys.version, torch.__version__, torch.cuda.is_available())"; } \
    >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if [ "$mode" = core ] || [ "$mode" = all ]; then
    "$PYTHON" bench/gpu_bench.py --data .data/cifar10-jpg.tar.gz --only "$mode" --out "$OUT" 2>&1 \
        | tee "$OUT/gpu_bench.log"
fi

if [ "$mode" = core ] || [ "$mode" = service ]; then
    redis=$(command -v redis-server || echo "$KIT/bin/redis-server")
    pidfile=/tmp/clr-bench-redis-$REDIS_PORT.pid
    "$redis" --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes --logfile "$OUT/redis.log" \
        --pidfile "$pidfile" || exit 1
    export CLR_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
    if [ "$SERVICE_MAX_LR" = from-bench ]; then
        # the max LR that cifar10-fast's own range test picked in gpu_bench: fixed, so no range test in the job
        SERVICE_MAX_LR=$("$PYTHON" -c '
import json, sys
try:
    records = [json.loads(line) for line in open(sys.argv[1])]
except OSError:
    records = []
print(next((r["max_lr"] for r in records if r.get("what") == "cifar10-fast" and "max_lr" in r), 2.0))
' "$OUT/bench.jsonl")
    fi
    args=(--preset "$SERVICE_PRESET" --device "$SERVICE_DEVICE" --data-dir .data --repeats 2 --no-direct)
    if [ -n "$SERVICE_MAX_LR" ]; then args+=(--max-lr "$SERVICE_MAX_LR"); fi
    if [ -n "$SERVICE_DATASET_PATH" ]; then args+=(--dataset-path "$SERVICE_DATASET_PATH"); fi
    if [ -n "$SERVICE_EPOCHS" ]; then args+=(--epochs "$SERVICE_EPOCHS"); fi
    "$PYTHON" bench/service_overhead.py "${args[@]}" 2>&1 | tee "$OUT/service.log"
    status=${PIPESTATUS[0]}
    grep '^{' "$OUT/service.log" >"$OUT/service.jsonl"
    pid=$(cat "$pidfile" 2>/dev/null) && kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    exit "$status"
fi
