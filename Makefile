# Two entry points (see README): `make demo` runs the workflow on the embedded demo data,
# `make test` runs the test suite. Both first install everything into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: install demo test test-fast bench pretrained clean

# The package install compiles the CPU kernels (setup.py, lpmnet.ops.build) against the venv's torch.
$(STAMP): requirements.txt pyproject.toml setup.py lpmnet/ops/build.py \
		$(wildcard lpmnet/ops/csrc/*.cpp lpmnet/ops/csrc/*.h lpmnet/methods/*/csrc/*.cpp lpmnet/methods/*/csrc/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/snakemake --cores $(CORES)
	@echo "Done: open results/report.html in a browser."

test: install
	$(BIN)/python -m pytest -q -ra --durations=20

# The unit tests (tests/unit) without the slow ones (a kernel build, real-data registrations): what a
# developer runs while working (3 minutes on 2 cores). The workflow runs are in tests/workflow, SLURM's
# in tests/slurm (.ci/run).
test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow" tests/unit

# Trains the pretrained models (config/pretrained.yaml) and copies them and their card into the package.
PRETRAINED_KINDS := mri-mri mri-pet
pretrained: install
	$(BIN)/snakemake pretrained --cores $(CORES) --configfile config/pretrained.yaml
	for kind in $(PRETRAINED_KINDS); do \
		cp results/pretrained/$$kind/model.pt lpmnet/methods/lpmnet/weights/.lpmnet_$$kind.pt.tmp && \
		mv lpmnet/methods/lpmnet/weights/.lpmnet_$$kind.pt.tmp lpmnet/methods/lpmnet/weights/lpmnet_$$kind.pt || exit 1; \
	done
	cp results/pretrained/MODEL_CARD.md lpmnet/methods/lpmnet/weights/.MODEL_CARD.md.tmp && \
		mv lpmnet/methods/lpmnet/weights/.MODEL_CARD.md.tmp lpmnet/methods/lpmnet/weights/MODEL_CARD.md

bench: install
	$(BIN)/python benchmarks/bench_fusion.py
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf results logs .snakemake report.html
