# Two commands on a fresh machine: `make demo` and `make test`. Both create or
# reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint protos proto-baseline bench demo clean engines browser

# Installing says nothing on stdout, so `make bench` prints only its JSON.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/python -m pip install -q --upgrade pip >&2
	@$(BIN)/python -m pip install -q -e '.[dev]' >&2
	@touch $(STAMP)

# The batch engines the engine tests start (`pytest -m slurm`): Debian's Slurm and
# MUNGE, installed with apt-get when missing (as root); a no-op when present.
engines:
	@bash tools/engines.sh

# The browser the dashboard's tests drive (`pytest -m browser`): Debian's chromium,
# installed with apt-get when missing (as root); a no-op when present.
browser:
	@bash tools/browser.sh

test: $(STAMP) engines browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true
	$(BIN)/mypy

# Regenerates the committed Python code; tests/test_protos.py fails when it is stale.
protos: $(STAMP)
	$(BIN)/python -m tools.genprotos .

# A deliberate release step: the protos as they are now become the baseline that
# `buf breaking` (tests/test_buf.py) holds every later change to.
proto-baseline: $(STAMP)
	$(BIN)/python -m tools.bufcli baseline

# One JSON document on stdout (progress on stderr); `make bench BENCH_ARGS=--quick`.
bench: $(STAMP)
	@$(BIN)/python -m bench $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/python -m examples.demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
