# Two entry points, both used by the README Quickstart and by CI (.ci/run).
#   make repro  - set up the virtualenv and run the default DVC pipeline end to end
#   make test   - set up the virtualenv and run the whole test suite (slow end-to-end tests included)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the tested versions (constraints.txt); `make venv CONSTRAINTS=` installs the newest pyproject allows
CONSTRAINTS ?= constraints.txt

.PHONY: venv repro test

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Installed once per pyproject.toml (a stamp file, not the venv's existence: a GPU node creates
# .venv itself with its CUDA build of torch, which is kept; otherwise torch==2.13.0 comes first).
$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4"
	$(BIN)/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# stage commands run `python`: put the virtualenv first on PATH
repro: venv
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 dvc repro

# tests run single-threaded in-process (tests/conftest.py), so test files are spread over
# TEST_WORKERS processes (pytest-xdist; a file's tests stay on one worker, sharing its fixtures)
TEST_WORKERS ?= 2
test: venv
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile
