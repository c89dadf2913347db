# Two entry points (see README): `make demo` runs the workflow on the embedded demo data,
# `make test` runs the test suite. Both first install everything into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: install demo test test-unit bench clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/python -m pytest -q -ra

bench: install
	$(BIN)/python benchmarks/bench_fusion.py
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf results logs .snakemake report.html
