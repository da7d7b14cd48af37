# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both set up .venv from pyproject.toml first, so a fresh clone needs nothing else.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-cpu stop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,service,client,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	scripts/redis.sh
	@# pytest exits 5 when it collected no tests: that is a failure, not a green run.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
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
