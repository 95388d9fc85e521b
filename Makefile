# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# Every target is idempotent: the stamps below are rebuilt only when setup.py changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TRAIN_ARGS ?=
# Fashion-MNIST ships as a Debian package; install it where apt and root allow.
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup setup-runtime data train test bench bench-report clean gpu-data gpu-check

$(VENV)/.runtime: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# torch/torchvision are pinned in setup.py's `reference` extra (2.14.1 / 0.29.1); `mpi-local`
# brings mpi4py and Open MPI's wheel for the data-parallel tests.
$(VENV)/.test: $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[test,reference,bench,mpi-local]'
	touch $@

setup-runtime: $(VENV)/.runtime data
setup: $(VENV)/.test data

data:
	@if [ -d $(FASHION_DIR) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: could not install dataset-fashion-mnist; the data tests will skip"; \
	else echo "note: no apt-get or not root; Fashion-MNIST will be searched for or downloaded"; fi

# Trains the default model (see `python -m minitorch_cnn.train --help`) on real data.
# It needs only the engine's runtime dependencies, not torch.
train: setup-runtime
	$(PY) -m minitorch_cnn.train $(TRAIN_ARGS)

test: setup
	$(PY) -m pytest -q tests

# Benchmarks run without the OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE settings meant for old
# OpenBLAS builds, which halve a current NumPy's matrix speed (benchmarks only, never tests).
# The full sweep by default; `make bench BENCH_ARGS=` times only the quick set.
BENCH_ARGS ?= --bench-full
bench: setup
	mkdir -p .benchmarks
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m pytest benchmarks --benchmark-only \
		$(BENCH_ARGS) --benchmark-json=.benchmarks/latest.json
	$(PY) -m benchmarks.report .benchmarks/latest.json --out .benchmarks

# The one-shot device check of the CuPy backend (benchmarks/gpu_check.py), on a GPU
# machine with its own python3 (CuPy, PyTorch CUDA, pytest): it installs nothing. Its data
# travels in the working tree: `make gpu-data` first, where Fashion-MNIST is installed.
# GPU_CHECK_STANDIN=1 runs it here on the CuPy stand-in (CPU) with the venv's python.
GPU_DATA := data/fashion-mnist
GPU_CHECK_STANDIN ?=
GPU_CHECK_ARGS ?=
GPU_CHECK_PYTHON ?= $(if $(GPU_CHECK_STANDIN),$(PY),python3)

gpu-data:
	mkdir -p $(GPU_DATA)
	cp -u $(FASHION_DIR)/*.gz $(GPU_DATA)/

gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_CHECK_PYTHON) -m benchmarks.gpu_check $(if $(GPU_CHECK_STANDIN),--standin) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
