PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean postgres-bin

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/convai-monitor demo

# The suite starts its own PostgreSQL from the machine's server binaries (tests/conftest.py);
# as root, install Debian's package when none are found.
PG_BIN := $(firstword $(shell command -v initdb 2>/dev/null) $(wildcard /usr/local/bin/initdb /usr/lib/postgresql/*/bin/initdb))

postgres-bin:
	@if [ -z "$(PG_BIN)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y postgresql; \
	  else echo "PostgreSQL server binaries (initdb) are missing: install the postgresql package" >&2; exit 1; fi; \
	fi

test: $(STAMP) postgres-bin
	$(BIN)/ruff check monitor tests benchmarks migrations
	$(BIN)/ruff format --check monitor tests benchmarks migrations
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/probe_load.py

clean:
	rm -rf $(VENV) build *.egg-info
