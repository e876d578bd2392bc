# LesionLens developer entry points. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: app test lint fmt clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.app-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[train,test]"
	touch $@ $(VENV)/.app-installed

## Install the app (no TensorFlow) and start it on the bundled default model.
app: $(VENV)/.app-installed
	$(BIN)/lesionlens $(ARGS)

## Install everything (app, trainer, test tools), lint, then run the whole test suite.
test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(VENV)/.test-installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Packaging (docs/packaging.md): `make dist` builds the GPU flavour (onnxruntime-gpu, the
## default), `make dist FLAVOUR=cpu` (or `make dist-cpu`) the CPU-only one, each in its own build
## venv: dist/<flavour>/LesionLens/ and, on Linux, dist/LesionLens-<version>-linux-<flavour>.run.
FLAVOUR ?= gpu
.PHONY: dist dist-cpu dist-gpu

dist:
	PYTHON=$(PYTHON) packaging/build.sh $(FLAVOUR)

dist-cpu:
	PYTHON=$(PYTHON) packaging/build.sh cpu

dist-gpu:
	PYTHON=$(PYTHON) packaging/build.sh gpu

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
