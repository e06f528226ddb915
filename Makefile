# fastconv developer targets. `make demo` sets everything up and runs the main job;
# `make test` runs the whole test suite. Both create .venv and build the extension on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: all venv build demo test test-slow bench bench-quick gpu-check sanitize clean

all: build

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps

# --no-build-isolation: compile against the torch already in the venv (same C++ ABI and CUDA)
# instead of a second torch that pip would download into an isolated build environment.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

# The main job: a 1-D CNN on MNIST-1D trained with fastconv and with torch.nn side by side (accuracy,
# time, pictures in out/mnist1d/).
demo: build
	$(PY) examples/train_mnist1d.py

test: build
	$(PY) -m pytest -q

test-slow: build
	FASTCONV_SLOW=1 $(PY) -m pytest -q

bench: build
	$(PY) benchmarks/run.py --out benchmarks/results

bench-quick: build
	$(PY) benchmarks/run.py --quick --out out/bench-quick

gpu-check:
	bash scripts/gpu_check.sh out/gpu-check

# CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer into build/sanitize (the normal
# build is untouched), then the test suite under them; see scripts/sanitize_cpu.sh.
sanitize: venv
	PYTHON=$(PY) bash scripts/sanitize_cpu.sh

clean:
	rm -rf build *.egg-info fastconv/_C*.so fastconv/_build_config.py $(VENV)/.built
