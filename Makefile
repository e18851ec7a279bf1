# judgeflow: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench lint system-deps clean

## run the whole job embedded (mock Kafka, chdb, local simulated judge) on sample traffic
demo: $(VENV)/.installed-embedded
	$(VENV)/bin/judgeflow demo $(ARGS)

## install everything the tests need (pip and apt), lint, and run them
test: $(VENV)/.installed-dev system-deps
	$(VENV)/bin/ruff check core flows operators judges sinks simulators tests bench scripts
	$(VENV)/bin/ruff format --check core flows operators judges sinks simulators tests bench scripts
	$(VENV)/bin/mypy core flows operators judges sinks simulators
	$(PY) -m pytest -q $(ARGS)

## benchmarks (print tables; numbers go in the README)
bench: $(VENV)/.installed-dev system-deps
	$(PY) bench/throughput.py --events 100000 --sinks
	$(PY) bench/cost_path.py
	$(PY) bench/spend_metrics.py
	$(PY) bench/judge_throughput.py
	$(PY) bench/judge_savings.py
	$(PY) bench/judged_share.py
	$(PY) bench/local_model.py
	$(PY) bench/cache_stage.py
	$(PY) bench/alerts.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check core flows operators judges sinks simulators tests bench scripts
	$(VENV)/bin/ruff format --check core flows operators judges sinks simulators tests bench scripts
	$(VENV)/bin/mypy core flows operators judges sinks simulators

$(VENV)/.installed-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[$*]'
	touch $@

## redis-server and promtool come from Debian packages
system-deps:
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing redis-server and prometheus (promtool) from apt"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server prometheus >/dev/null; }

clean:
	rm -rf .judgeflow .pytest_cache
