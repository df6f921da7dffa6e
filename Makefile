# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip installs PyTorch (with its CUDA libraries), which this machine's pip takes from a local
# disk; uv then installs the rest, resolving and byte-compiling in parallel. uv does not read
# pip's configuration (local indexes), so PyTorch, when wanted, is always installed first and
# uv finds it satisfied. Byte-compiling up front matters where PYTHONDONTWRITEBYTECODE is set
# (as here): without it every process of the suite compiled what it imported (+28 % of time).
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints.txt
UV := $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -c constraints.txt
# onnxruntime and onnxruntime-gpu install one module and must never meet in one environment:
# the ONNX plugin takes exactly one of its [cpu] / [gpu] extras. GPU machines get [gpu].
ONNX_EXTRA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)
# In-tree backend plugins: each its own distribution, installed like a third-party one.
# `make run` installs the light ones, with no PyTorch (its CUDA wheels are most of a full
# install); XTTS=1 adds the XTTS plugin, PyTorch and Coqui TTS. `make test` installs them all.
LIGHT_PLUGINS := plugins/reference plugins/onnx[$(ONNX_EXTRA),joe] plugins/espeak plugins/kokoro[$(ONNX_EXTRA),ja]
XTTS ?=
PLUGINS := $(LIGHT_PLUGINS) $(if $(XTTS),plugins/xtts)
INSTALLED := $(VENV)/.installed$(if $(XTTS),-xtts)
CONFIG_REPO ?= var/config
STATE_DIR ?= var/state
MODELS_DIR ?= var/models
HOST ?= 127.0.0.1
PORT ?= 7851

# The browser tests drive Debian's chromium-headless-shell through the playwright package;
# never `playwright install`, which downloads a browser build of its own.
BROWSER ?= /usr/bin/chromium-headless-shell
# The version the browser suite was last verified with (Debian bookworm-security). Security
# updates remove old versions from the archive: then the current one is installed, saying so.
BROWSER_VERSION ?= 156.0.8078.108-1~deb12u1
APT := DEBIAN_FRONTEND=noninteractive apt-get -qq

.PHONY: install run test test-browser browser test-voice lint bench espeak-ng-cli clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: $(BIN)/python constraints.txt
	$(PIP) uv
	touch $@

# Re-install when any pyproject changes. With XTTS=1, [tools] too: Coqui and PyTorch, which
# also build the template's tiny test voice.
$(INSTALLED): $(BIN)/uv pyproject.toml $(wildcard plugins/*/pyproject.toml) constraints.txt
	$(if $(XTTS),$(PIP) torch)
	$(UV) -e '.$(if $(XTTS),[tools])' $(foreach p,$(PLUGINS),-e '$(p)')
	touch $@

# Everything, for the tests: [tools] builds the tiny test models (with Coqui), plus the XTTS
# plugin. piper-tts (the ONNX tests' reference) needs the CPU onnxruntime, which must not meet
# onnxruntime-gpu: where the GPU package is installed it is left out, its comparisons skip
# with that reason, and the CUDA provider tests run instead. One command on both machines.
# In CI (CI set) the downloaded wheels are dropped from uv's cache once installed: where the
# cache is on another filesystem than the checkout, uv copies instead of linking, and the
# copies (~2 GB) would sit beside the suite's files for nothing.
$(VENV)/.installed-test: $(INSTALLED)
	$(PIP) torch
	$(UV) -e '.[tools,test]' -e plugins/xtts
	@if $(BIN)/pip show -q onnxruntime-gpu 2>/dev/null; then \
	  echo "onnxruntime-gpu is installed: piper-tts is left out, its comparisons will skip"; \
	else $(UV) -e '.[piper-reference]'; fi
	@if [ -n "$$CI" ]; then $(BIN)/uv cache prune --ci -q; fi
	touch $@

install: $(INSTALLED)

# Serves the default voice on $(HOST):$(PORT); creates the config repo from the template and
# the template's tiny test voice if they are missing.
run: install
	$(BIN)/python tools/build_test_voice.py $(MODELS_DIR)/test-voice --if-missing --if-tools
	$(BIN)/alltalk-host serve --init-config --config-repo $(CONFIG_REPO) \
		--state-dir $(STATE_DIR) --host $(HOST) --port $(PORT)

# The suite runs in TEST_JOBS processes (pytest-xdist), a test file to each, so module-scoped
# fixtures (one Ray cluster, one built checkpoint) are made once. Two on two cores: three
# gained nothing on the whole suite, CPU-bound where it is long, and once starved a Ray
# deploy. The browser tests (tests/browser/) run among the others. Tests serve inline unless
# marked process_workers (tests/conftest.py). 45 min means something hangs that per-test
# timeouts missed: stopping with pytest's summary beats CI (90 min) killing the job without
# one. --durations names the slowest tests, to find where time goes. Files are given out
# longest first (LONG_FILES, tests/conftest.py), not by their number of tests.
# PYTHONDONTWRITEBYTECODE is emptied: set (as here), each of the suite's hundreds of Python
# processes (servers, CLI runs, workers) compiled the host's modules again (+9 % of the
# Wyoming and CLI tests' time).
TEST_JOBS ?= 2
TEST_ENV := PYTHONDONTWRITEBYTECODE= ALLTALK_TEST_BROWSER=$(BROWSER)
test: $(VENV)/.installed-test browser
	$(BIN)/ruff check .
	$(TEST_ENV) timeout --signal=INT --kill-after=60 45m $(BIN)/pytest \
		--durations=25 -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

# The browser tests alone.
test-browser: $(VENV)/.installed-test browser
	$(TEST_ENV) timeout --signal=INT --kill-after=60 20m $(BIN)/pytest \
		tests/browser

# The browser is installed when missing where that can be done (root on Debian: CI);
# elsewhere tests/browser/ skips, saying how to install it. In CI (CI set) it must be there.
browser:
	@if [ ! -x $(BROWSER) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium-headless-shell for the browser tests"; \
	  $(APT) install -y chromium-headless-shell=$(BROWSER_VERSION) >/dev/null 2>&1 \
	    || { $(APT) update && $(APT) install -y chromium-headless-shell=$(BROWSER_VERSION) >/dev/null 2>&1; } \
	    || { echo "chromium-headless-shell $(BROWSER_VERSION) is no longer in the archive: installing its current version"; \
	         $(APT) install -y chromium-headless-shell >/dev/null; }; \
	fi
	@if [ ! -x $(BROWSER) ] && [ -n "$$CI" ]; then \
	  echo "error: CI runs the browser tests, but $(BROWSER) could not be installed" >&2; exit 1; \
	elif [ ! -x $(BROWSER) ]; then \
	  echo "browser tests will skip: no $(BROWSER); install it with: sudo apt-get install chromium-headless-shell (Debian)"; \
	fi

# The template's second model, a tiny test voice (random weights), built with PyTorch.
test-voice:
	$(MAKE) --no-print-directory install XTTS=1
	$(BIN)/python tools/build_test_voice.py $(MODELS_DIR)/test-voice --if-missing

# Modules, not script paths: `tools` imports as a package from the project root.
bench: $(VENV)/.installed-test
	$(BIN)/python -m tools.bench_swap
	$(BIN)/python -m tools.bench_onnx
	$(BIN)/python -m tools.bench_xtts
	$(BIN)/python -m tools.bench_api
	$(BIN)/python -m tools.bench_espeak
	$(BIN)/python -m tools.bench_wyoming
	$(BIN)/python -m tools.bench_ray

# The espeak-ng command, only for bench_espeak's comparison (and the espeak plugin's test that
# compares with it); both say so and skip that part when it is missing. Debian's package.
espeak-ng-cli:
	@command -v espeak-ng >/dev/null || { apt-get update && apt-get install -y espeak-ng; }

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
