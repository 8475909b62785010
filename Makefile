# Two commands do all the set-up on a fresh machine (Python >= 3.9 and a C++ compiler):
#   make demo   the main job: refine the bundled sample maps into masks, no GPU needed
#   make test   lint + the test suite (what CI runs)
# Both create .venv on first use. torch==2.13.0 is pinned here only; the package needs torch>=2.4.
# make test also runs tests/test_anomalib.py in .venv-anomalib: anomalib needs torchvision, whose PyPI
# build does not import beside torch==2.13.0, so that venv has torch 2.14.1 + torchvision 0.29.1.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
ANOMALIB_VENV ?= .venv-anomalib
ABIN := $(ANOMALIB_VENV)/bin
PACKAGE_SOURCES := pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/cpu/*) $(wildcard csrc/cuda/*) \
	$(wildcard topoot_gpu/*.py topoot_gpu/*/*.py) $(wildcard topoot_gpu/data/*)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/python $(PACKAGE_SOURCES)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -q '.[test]'
	touch $@

# anomalib 2.7.0 (+ onnxscript for its ONNX export) over torch 2.14.1 / torchvision 0.29.1.
$(ANOMALIB_VENV)/.test: $(PACKAGE_SOURCES)
	test -x $(ABIN)/python || $(PYTHON) -m venv $(ANOMALIB_VENV)
	$(ABIN)/python -m pip install -q --upgrade pip
	$(ABIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(ABIN)/pip install -q anomalib==2.7.0 onnxscript pytest scipy
	$(ABIN)/pip install -q .
	touch $@

.PHONY: demo test test-anomalib bench cuda-check
demo: $(VENV)/.runtime
	$(BIN)/topoot demo

# pytest (not python -m pytest) so that the installed package is tested, not the source tree.
test: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/pytest -q -rs
	$(MAKE) test-anomalib

test-anomalib: $(ANOMALIB_VENV)/.test
	$(ABIN)/pytest -q -rs tests/test_anomalib.py

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_persistence.py
	$(BIN)/python benchmarks/bench_sinkhorn.py
	$(BIN)/python benchmarks/bench_selection.py
	$(BIN)/python benchmarks/bench_refine.py

# nvcc compiles csrc/cuda/*.cu for sm_80 and sm_90 (no GPU needed): a compile error fails.
cuda-check:
	cmake -S . -B build/cuda_check -DTOPOOT_CUDA_CHECK=ON
	cmake --build build/cuda_check
