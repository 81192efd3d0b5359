# One Makefile; the README and CI call these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps demo test unit integration lint bench bench-curve broker-start broker-stop clean clean-numba

setup: $(STAMP)

# Under a lock, and checked again once it is held: two set-ups at once (`make demo` and `make test`
# in two terminals of a fresh clone) ran pip into one virtualenv together, and one failed.
$(STAMP): pyproject.toml
	flock $(VENV).lock sh -c '[ "$(STAMP)" -nt pyproject.toml ] || { \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/python -m pip install --quiet --upgrade pip && \
	  $(BIN)/python -m pip install --quiet -e ".[test]" && \
	  touch $(STAMP); }'

## The demo stack on a local broker: models + rendezvous + load, live table. DEMO_ARGS="--duration 20"
demo: setup
	$(BIN)/rendezvous demo $(DEMO_ARGS)

## Java/Maven (broker), Prometheus and Chromium (metrics and report tests), from Debian if missing.
system-deps:
	bash deploy/ci/system-deps.sh

## Lint, type-check, then every test (the broker is provisioned from Maven Central on first use),
## in TEST_WORKERS processes (pytest-xdist; a test file stays in one process, each its own broker).
TEST_WORKERS ?= 2
test: system-deps setup lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

unit: setup
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check services tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/e2e_latency.py
	$(BIN)/python bench/rendezvous_throughput.py

## Latency vs rate (floor and rendezvous) + the first 30 s of a cold broker, ~6 min on 2 cores:
## writes bench/results/latency_curve.json and .svg. BENCH_ARGS="--rates 100,200,500"
bench-curve: setup
	$(BIN)/python bench/latency_curve.py $(BENCH_ARGS)

broker-start: setup
	$(BIN)/rendezvous broker start

broker-stop: setup
	$(BIN)/rendezvous broker stop

clean:
	-$(BIN)/rendezvous broker stop
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache *.egg-info
	$(MAKE) clean-numba

# numba's compiled loops, wherever services/core/compiled.py cached them: the package's __pycache__,
# NUMBA_CACHE_DIR, or the temp directory's fallback (and next to the sources, where it cached before).
clean-numba:
	rm -rf services/__pycache__/numba $(if $(NUMBA_CACHE_DIR),'$(NUMBA_CACHE_DIR)'/rendezvous-loops-*) \
		"$${TMPDIR:-/tmp}/rendezvous-numba-$$(id -u)"
	find services -name '*.nbi' -delete -o -name '*.nbc' -delete
