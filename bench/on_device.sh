#!/usr/bin/env bash
# The one command for a lent H200 (issue 4's and 18's figures), run from the repository root there.
# Prepare here first: `bash bench/device_kit.sh` (wheels + redis-server in .whl/) and the archive in
# .data/ (`mkdir -p .data && cp ../shared/data/cifar10-jpg.tar.gz .data/`); then, with the device tool,
#   run  carry=[".whl", ".data/cifar10-jpg.tar.gz"]  timeout_s=600  command="bash bench/on_device.sh core"
# (never carry all of .data: its decode cache is 180 MB). The whole script is budgeted to TOTAL_S
# (570 s, inside the tool's 600): the kit and a 5 s compile smoke test first, then gpu_bench's core
# items (most valuable first, with whatever time the service half's reserve leaves), then cifar10-fast
# through the API and a worker twice (a cold worker, then a warm one). `all` runs the whole benchmark
# and leaves the service item to a second call: `bash bench/on_device.sh service`.
# Everything lands under $OUT as it is measured: machine.txt, compile_smoke.txt, bench.jsonl (a line per
# result), compile_artifacts.bin.gz (what was compiled: copy it into .whl/ and the next machine's
# compiles are cache hits), the plot, the reports, service.log/.jsonl and the logs.
# - No working torch.compile on CUDA (Triton builds C at run time: gcc, Python headers, libcuda)?
#   The smoke test says so and everything runs eager (TORCHDYNAMO_DISABLE=1).
# - python3 outside 3.11-3.13? The kit's compiled wheel may not fit it: said so, the service half is
#   skipped, the clrcore half (gpu_bench) still runs.
# SERVICE_PRESET, SERVICE_DEVICE, SERVICE_DATASET_PATH, SERVICE_MAX_LR, SERVICE_EPOCHS (each: empty for the
# preset's own), REDIS_PORT, KIT, PYTHON, TOTAL_S, SERVICE_RESERVE_S and SMOKE_DEVICE change the run;
# tests/bench/test_on_device.py runs the service item on the CPU with the digits preset that way.
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

TOTAL_S=${TOTAL_S:-570}
SERVICE_RESERVE_S=${SERVICE_RESERVE_S:-160}  # cold worker (compile from the on-disk cache) + warm worker
LONGEST_ITEM_S=90  # gpu_bench's budget only stops *starting* items: the longest may overrun it by this
SMOKE_DEVICE=${SMOKE_DEVICE:-cuda}
left() { echo $((TOTAL_S - SECONDS)); }
note() { echo "on_device: $*" | tee -a "$OUT/machine.txt" >&2; }
: >"$OUT/machine.txt"

# 1. the image's Python: the kit's compiled wheel is for 3.11-3.13
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
service_ok=1
case "$pyver" in
    3.11|3.12|3.13) ;;
    *) service_ok=0
       note "python3 is $pyver, outside 3.11-3.13: the service half is skipped; the clrcore half runs" ;;
esac

# 2. the kit: the service's packages always, the image's usual ones only where their import fails
if [ -d "$KIT" ]; then
    "$PYTHON" bench/kit_install.py "$KIT" /tmp/site | tee -a "$OUT/machine.txt" \
        || note "installing the kit failed under python $pyver"
    export PYTHONPATH="/tmp/site:$PWD"
fi
{ nvidia-smi; "$PYTHON" -c "import sys, torch; print(sys.version, torch.__version__, torch.cuda.is_available())"; } \
    >>"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 3. torch.compile on the device in a few seconds, or everything eager
if timeout 120 "$PYTHON" - "$SMOKE_DEVICE" >"$OUT/compile_smoke.txt" 2>&1 <<'EOF'
import sys, time, torch
started = time.perf_counter()
x = torch.randn(4096, device=sys.argv[1])
f = torch.compile(lambda t: torch.nn.functional.gelu(t * 2 + 1), dynamic=False)
torch.testing.assert_close(f(x), torch.nn.functional.gelu(x * 2 + 1))
print(f"torch.compile works on {sys.argv[1]}: {time.perf_counter() - started:.1f} s")
EOF
then
    cat "$OUT/compile_smoke.txt"
else
    export TORCHDYNAMO_DISABLE=1
    note "torch.compile failed on $SMOKE_DEVICE (compile_smoke.txt): everything runs eager, TORCHDYNAMO_DISABLE=1"
fi

if [ "$mode" = core ] || [ "$mode" = all ]; then
    reserve=$([ "$mode" = core ] && [ "$service_ok" = 1 ] && echo "$SERVICE_RESERVE_S" || echo 0)
    budget=$(( $(left) - reserve - LONGEST_ITEM_S )); [ "$budget" -lt 30 ] && budget=30
    artifacts=(); [ -f "$KIT/compile_artifacts.bin.gz" ] && artifacts=(--compile-artifacts "$KIT/compile_artifacts.bin.gz")
    # killed at its share of the time, it still leaves every line it measured in bench.jsonl
    timeout --kill-after=10 $(( $(left) - reserve )) "$PYTHON" bench/gpu_bench.py --data .data/cifar10-jpg.tar.gz \
        --only "$mode" --out "$OUT" --budget-s "$budget" "${artifacts[@]}" 2>&1 | tee "$OUT/gpu_bench.log"
fi
if [ "$service_ok" != 1 ]; then exit 0; fi

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
    timeout --kill-after=10 "$(left)" "$PYTHON" bench/service_overhead.py "${args[@]}" 2>&1 | tee "$OUT/service.log"
    status=${PIPESTATUS[0]}
    grep '^{' "$OUT/service.log" >"$OUT/service.jsonl"
    pid=$(cat "$pidfile" 2>/dev/null) && kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    exit "$status"
fi
