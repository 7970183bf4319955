# Developer entry points. `make run` starts the whole stack on this machine;
# `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
# Prefer python3.11 (the version CI and the images use), else whatever python3 is.
PYTHON ?= $(or $(shell command -v python3.11 2>/dev/null),$(shell command -v python3 2>/dev/null),python3)
PIP := $(VENV)/bin/python -m pip --disable-pip-version-check
# Records which requirements the virtualenv was built from; newer inputs trigger a reinstall.
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: help venv run test lint fmt bench migrate clean distclean

help:
	@echo "make venv     create .venv and install the pinned requirements (only when they changed)"
	@echo "make run      start Redis (if needed), API :8000, worker, beat and Flower :5555"
	@echo "make test     install the system test tools if missing, then run pytest (ARGS=...)"
	@echo "make lint     ruff check, ruff format --check and mypy"
	@echo "make fmt      ruff format and ruff check --fix"
	@echo "make bench    run the benchmarks (ARGS=...)"
	@echo "make migrate  apply database migrations (engine db upgrade)"
	@echo "make clean    remove caches and build files (keeps .venv and var/)"

venv: $(STAMP)

$(VENV)/bin/pip:
	@$(PYTHON) -m venv $(VENV) || { \
		echo "Could not create $(VENV) with $(PYTHON): on Debian install python3-venv" >&2; \
		exit 1; }

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml | $(VENV)/bin/pip
	$(PIP) install --quiet -r requirements-dev.txt
	$(PIP) install --quiet -e .
	@touch $@

run: venv
	exec bash scripts/run.sh

test: venv
	bash scripts/setup-test-deps.sh
	$(VENV)/bin/python -m pytest $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(VENV)/bin/python -m bench $(ARGS)

migrate: venv
	$(VENV)/bin/engine db upgrade

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info

distclean: clean
	rm -rf $(VENV)
