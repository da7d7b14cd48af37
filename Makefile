# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both set up .venv from pyproject.toml first, so a fresh clone needs nothing else.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint lock bench-cpu stop clean

EXTRAS := train,service,client,dev

# The versions come from constraints.txt (what CI last passed with); pyproject.toml holds the ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Re-resolve pyproject.toml's ranges in a throwaway venv and pin the result; then run `make test`.
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q -e '.[$(EXTRAS)]'
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# `make test` starts (or reuses) one object store for the tests on a known port, data in
# runs/objectstore-test; every test session makes a bucket of its own there. Plain `pytest` without
# CLR_TEST_S3_ENDPOINT starts a store of its own on free ports instead. Loopback-only test credentials.
TEST_S3_PORT ?= 8433
TEST_S3_KEY ?= clr-test
TEST_S3_SECRET ?= clr-test-secret
export CLR_TEST_S3_ENDPOINT ?= http://127.0.0.1:$(TEST_S3_PORT)
export CLR_TEST_S3_ACCESS_KEY ?= $(TEST_S3_KEY)
export CLR_TEST_S3_SECRET_KEY ?= $(TEST_S3_SECRET)

# The suite waits on workers, leases and restarts more than it computes, so `make test` runs it as
# TEST_JOBS pytest sessions side by side (pytest-xdist, whole files per session): each session has
# its own Redis key prefix, workers and bucket, as parallel sessions always could. TEST_JOBS=0: one.
TEST_JOBS ?= 2

test: $(STAMP)
	scripts/redis.sh
	S3_PORT=$(TEST_S3_PORT) S3_DIR=runs/objectstore-test S3_BUCKET=clr-test \
	  AWS_ACCESS_KEY_ID=$(TEST_S3_KEY) AWS_SECRET_ACCESS_KEY=$(TEST_S3_SECRET) scripts/objectstore.sh
	@# pytest exits 5 when it collected no tests: that is a failure, not a green run.
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy clrcore clrclient jobs service worker

bench-cpu: $(STAMP)
	$(BIN)/python bench/cpu_bench.py

stop:
	-$(BIN)/python scripts/demo.py --stop

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
