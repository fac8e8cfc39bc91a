# Every target sets itself up: a fresh clone needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU-only torch, installed before the project so the `torch>=2.4` range keeps it; a bare
# `torch` requirement would pull a multi-GB CUDA build. GPU users: see the README.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
OUT ?= out

.PHONY: setup reconstruct test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $(STAMP)

# The main job on the shipped default: tokenize a held-out photo and decode it back.
reconstruct: setup
	mkdir -p $(OUT)
	$(BIN)/vqedge reconstruct \
	  "$$($(BIN)/python -c 'from vqedge.models.data import held_out_paths; print(held_out_paths()[2])')" \
	  -o $(OUT)/chelsea-reconstruction.png

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
