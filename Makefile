# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# In-tree backend plugins: each its own distribution, installed like a third-party one.
PLUGINS := plugins/reference
CONFIG_REPO ?= var/config
STATE_DIR ?= var/state
HOST ?= 127.0.0.1
PORT ?= 7851

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when any pyproject changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(BIN)/pip install --disable-pip-version-check -e . $(addprefix -e ,$(PLUGINS))
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Serves the default voice on $(HOST):$(PORT); creates the config repo from config_repo/ if
# there is none yet.
run: install
	$(BIN)/alltalk-host serve --init-config --config-repo $(CONFIG_REPO) \
		--state-dir $(STATE_DIR) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	$(BIN)/python tools/bench_swap.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
