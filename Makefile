PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean browser postgres-bin

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

# The status page is tested in Debian's chromium (headless, through chromedriver). As root
# the packages are installed when missing (the package lists refreshed only if no other
# step did so in the last hour); otherwise the browser test fails and says what to install.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  if [ -z "$$(find /var/lib/apt/lists -name '*Packages*' -mmin -60 2>/dev/null | head -1)" ]; then \
	    apt-get update -q; \
	  fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else \
	  echo "chromium and chromium-driver are missing and this is not root:" \
	    "run 'sudo apt-get install chromium chromium-driver' or the browser test fails" >&2; \
	fi

test: $(STAMP) postgres-bin browser
	$(BIN)/ruff check monitor tests benchmarks migrations
	$(BIN)/ruff format --check monitor tests benchmarks migrations
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/probe_load.py

clean:
	rm -rf $(VENV) build *.egg-info
