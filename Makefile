PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch is pinned first so that pip never pulls the multi-GB CUDA wheels.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install clean

$(BIN)/difflab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q "$(TORCH_SPEC)" -e ".[dev,diffusers]"
	touch $(BIN)/difflab

install: $(BIN)/difflab

demo: install
	$(BIN)/difflab demo --overwrite

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs
