# Two entry points, each creates its own environment in .venv:
#   make quickstart   install, then run the main job
#   make test         install, then run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medvit-installed
DEV_STAMP := $(VENV)/.medvit-dev-installed

.PHONY: install quickstart test lint format clean

# medvit and its runtime dependencies only: what `make quickstart` runs with
$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on these machines; an unpinned torch pulls the CUDA stack
	$(BIN)/python -m pip install --quiet "torch==$${MEDVIT_TORCH_VERSION:-2.13.0}"
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

# plus the test-only packages of the dev extra (pytest, ruff, transformers, SimpleITK, psycopg2, shapely, openvino)
$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(DEV_STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/medvit run pipelines/quickstart.yaml

test: $(STAMP) $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --durations=15

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
