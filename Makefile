# Quick start: `make demo` and `make test`. Both create and reuse .venv, install the pinned
# requirements (requirements.txt) and build kmgan_ext (C++ kernels, and CUDA kernels when nvcc
# is present), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch guesses CUDA_HOME from `which nvcc`, a wrapper script here: point it at the toolkit.
CUDA_HOME ?= $(shell for d in /usr/local/cuda /usr/local/cuda-*; do [ -x $$d/bin/nvcc ] && echo $$d && break; done)
export CUDA_HOME
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
export TORCH_CUDA_ARCH_LIST
MAX_JOBS ?= $(shell nproc)
export MAX_JOBS
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: test test-wheel demo bench bench-quick bench-sweep gpu-check install data clean mutants

$(VENV)/.requirements: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Debian's full Fashion-MNIST, used by the seeding quality tests and the trainer (optional:
# tests that need it skip when it is absent, e.g. without root or apt).
$(VENV)/.data: | $(VENV)/.requirements
	-@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
		|| echo "dataset-fashion-mnist not installed: its tests will skip"; fi
	touch $@

$(VENV)/.built: $(VENV)/.requirements $(SOURCES)
	@$(PY) -m pip install -v --no-build-isolation --no-deps -e . > $(VENV)/build.log 2>&1 || (cat $(VENV)/build.log; exit 1)
	@# The log shows what was compiled: one line per source, nvcc's for csrc/cuda.
	@grep -E "^ *kmgan_ext: |\[[0-9]+/[0-9]+\]" $(VENV)/build.log | sed -E 's/^ *//; s/(\[[0-9]+\/[0-9]+\] [^ ]+).* -c ([^ ]+).*/\1 ... -c \2/' || true
	touch $@

install: $(VENV)/.built

data: $(VENV)/.data

test: install data
	$(PY) -m pytest -q tests
	@$(PY) tests/wheel/check_wheel.py

# The package as users get it: an sdist, a wheel built from it (CPU kernels only), installed
# into a fresh venv outside the source tree with only torch and the declared dependencies,
# then a smoke test there; again with [train] and a few trainer steps (tests/wheel/).
test-wheel: install
	@$(PY) tests/wheel/check_wheel.py

# Deliberately broken copies of the library that the tests must catch (tests/mutants/mutants.py);
# minutes, not in CI. Run before resolving an issue that touches a kernel; paste its table.
mutants: install
	$(PY) tests/mutants/run.py --out mutants.md

demo: install
	$(PY) -m kmgan_ext.demo

bench: install
	$(PY) bench/run_all.py --out bench/results

bench-quick: install
	$(PY) bench/run_all.py --quick --out bench/results/quick

# How each op's time grows with N, K and d against its peers (bench/sweep.py). The CPU quick
# sweep fits in 10 minutes on the 2-core machine: no cell starts after its 480 s budget (cells
# run cheapest first; those left are listed as skipped in results.json, never dropped), and
# the cell then running, the roofline measurement and the plots take the rest. Run it idle.
# On a GPU (the GPU grid: N to 1e6, K to 4096, d to 512), bench/gpu_check.sh runs
# make bench-sweep SWEEP_ARGS="--device cuda --budget-s 60 --out gpu-run/sweep"
SWEEP_ARGS ?= --quick --budget-s 480 --out bench/results/sweep-cpu
bench-sweep: install
	$(PY) bench/sweep.py $(SWEEP_ARGS)

# One command for a lent GPU machine: build, full tests, full benchmarks, into $(OUT_DIR).
OUT_DIR ?= gpu-run
gpu-check:
	mkdir -p $(OUT_DIR)
	bash bench/gpu_check.sh $(OUT_DIR)

clean:
	rm -rf build *.egg-info kmgan_ext/_C*.so $(VENV)/.built
