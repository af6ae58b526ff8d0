# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv on first use. torch is installed first, pinned to the
# CPU build this machine has, so pip never pulls a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean postgres migration

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	@$(MAKE) --no-print-directory postgres
	touch $(STAMP)

# PostgreSQL's server binaries: the store's tests start a throwaway server (tests/control/postgres.py).
# Installed when missing (as root: CI); without them those tests skip, and fail under CI=true.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing PostgreSQL (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "PostgreSQL is missing: sudo apt-get install postgresql (its tests skip without it)"; fi; \
	fi

demo: $(STAMP)
	$(BIN)/corral demo

# Lint first: a style or type error fails CI before the 13-minute suite runs.
test: lint postgres
	$(BIN)/python -m pytest -q

# Lint, format check and types: ruff and mypy as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# A new revision of the database schema, after changing the models: make migration m="what changed"
migration: $(STAMP)
	$(BIN)/python -m corral.control.migrations "$(m)"

clean:
	rm -rf $(VENV)
