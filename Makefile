# Two commands: `make demo` runs the whole pipeline in a real local Airflow against localaws;
# `make test` runs the suite. Both create .venv and install the pinned dependencies first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The pin set in requirements.txt is resolved for Python 3.11 (Airflow 3.3 itself supports 3.10-3.14).
PYTHON ?= $(or $(shell command -v python3.11 2>/dev/null),$(shell command -v python3 2>/dev/null),python3)
UV_VERSION := 0.13.9

.PHONY: demo test lint install clean-demo

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@version="$$("$(PYTHON)" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"; \
	if [ "$$version" != "3.11" ]; then \
		echo "error: this project needs Python 3.11 (requirements.txt is pinned for it; Airflow 3.3 supports it)."; \
		echo "       '$(PYTHON)' is $${version:-not a working Python interpreter}."; \
		echo "       Install Python 3.11, or point make at one: make PYTHON=/path/to/python3.11 $(or $(MAKECMDGOALS),install)"; \
		exit 1; \
	fi
	@if [ -x "$(PY)" ] && ! "$(PY)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then rm -rf "$(VENV)"; fi
	@[ -x "$(PY)" ] || "$(PYTHON)" -m venv "$(VENV)"
	"$(PY)" -m pip install --quiet "uv==$(UV_VERSION)"
	# Compiled to bytecode as pip does (uv does not by default): without .pyc files, every process (each
	# Airflow task, the export CLI) compiles what it imports again, and where PYTHONDONTWRITEBYTECODE is set
	# it never stops doing so.
	"$(VENV)/bin/uv" pip install --quiet --compile-bytecode --python "$(PY)" -r requirements.txt -r requirements-dev.txt
	# The package itself, editable: what `pip install .` installs for a user, without copying it.
	"$(VENV)/bin/uv" pip install --quiet --python "$(PY)" --no-deps -e .
	"$(PY)" -m compileall -q -j 0 plugins
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	"$(PY)" -m devstack.demo

test: $(VENV)/.installed
	"$(VENV)/bin/ruff" check .
	# The layer contracts in .importlinter, from the repo root (localaws/, devstack/, dags/ resolve from it);
	# --no-cache: no .import_linter_cache/ left in the checkout.
	"$(VENV)/bin/lint-imports" --no-cache --no-logo
	"$(PY)" -m pytest

lint: $(VENV)/.installed
	"$(VENV)/bin/ruff" check .
	"$(VENV)/bin/lint-imports" --no-cache --no-logo

clean-demo:
	rm -rf .demo
