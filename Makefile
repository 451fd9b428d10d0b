# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/imgsearch demo

test: $(VENV)/.installed
	$(BIN)/ruff check app models indexer migrations bench tests
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check app models indexer migrations bench tests
