# Quickstart: `make demo` runs the demo; `make test` runs the whole suite (SQLite + PostgreSQL).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench bench-smoke

$(STAMP): pyproject.toml constraints.txt sdk/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' -e ./sdk
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/openpse demo

lint: $(STAMP)
	$(BIN)/ruff check src sdk tests bench examples
	$(BIN)/mypy
	$(BIN)/mypy --strict sdk/openpse_sdk
	$(BIN)/lint-imports

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/test.sh

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-smoke: $(STAMP)
	$(BIN)/python -m bench.run --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .openpse
