# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints.txt
# onnxruntime and onnxruntime-gpu install one module and must never meet in one environment:
# the ONNX plugin takes exactly one of its [cpu] / [gpu] extras. GPU machines get [gpu].
ONNX_EXTRA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)
# In-tree backend plugins: each its own distribution, installed like a third-party one.
PLUGINS := plugins/reference plugins/onnx[$(ONNX_EXTRA),joe] plugins/xtts
CONFIG_REPO ?= var/config
STATE_DIR ?= var/state
MODELS_DIR ?= var/models
HOST ?= 127.0.0.1
PORT ?= 7851

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when any pyproject changes. [tools] builds the tiny test models (with Coqui).
$(VENV)/.installed: $(BIN)/python pyproject.toml $(wildcard plugins/*/pyproject.toml) constraints.txt
	$(PIP) -e '.[tools]' $(foreach p,$(PLUGINS),-e '$(p)')
	touch $@

# piper-tts (the ONNX tests' reference) needs the CPU onnxruntime, which must not meet
# onnxruntime-gpu: where the GPU package is installed it is left out, its comparisons skip
# with that reason, and the CUDA provider tests run instead. One command on both machines.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	@if $(BIN)/pip show -q onnxruntime-gpu 2>/dev/null; then \
	  echo "onnxruntime-gpu is installed: piper-tts is left out, its comparisons will skip"; \
	else $(PIP) -e '.[piper-reference]'; fi
	touch $@

install: $(VENV)/.installed

# Serves the default voice on $(HOST):$(PORT); creates the config repo from config_repo/ and
# the template's tiny test voice if they are missing.
run: install
	$(BIN)/python tools/build_test_voice.py $(MODELS_DIR)/test-voice --if-missing
	$(BIN)/alltalk-host serve --init-config --config-repo $(CONFIG_REPO) \
		--state-dir $(STATE_DIR) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/pytest

# Modules, not script paths: `tools` imports as a package from the project root.
bench: $(VENV)/.installed-test
	$(BIN)/python -m tools.bench_swap
	$(BIN)/python -m tools.bench_onnx
	$(BIN)/python -m tools.bench_xtts
	$(BIN)/python -m tools.bench_api
	$(BIN)/python -m tools.bench_wyoming

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
