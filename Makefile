# The two commands: `make demo` (the whole pipeline on the tiny default) and `make test`.
# Both create or refresh .venv themselves; they are quick when it is up to date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean-state

venv: $(STAMP)

# torch goes in first and stays pinned (constraints.txt), so no resolver ever pulls a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/alignpipe run configs/tiny.yaml

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean-state:
	rm -rf .alignpipe
