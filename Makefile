# durabert: two commands do all the set-up on a fresh machine.
#   make test   installs uv if missing, syncs the locked workspace, runs lint and the whole suite (coverage last)
#   make demo   local Temporal server, three workers, a real fine-tune with a forced crash and resume, inference
#               (STORE=s3: the same with the artifacts in a bucket of a local S3 API, no shared folder)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
STATE_DIR ?= .state
PYTEST_ARGS ?=
# Test processes (pytest-xdist, whole modules each): much of the suite waits on worker processes and
# timers, so two keep two cores busy. PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
KILL ?= 1
STORE ?= local
# Hard links from uv's cache: the workspace (torch with its CUDA libraries, 6.5 GB) syncs in seconds
# instead of minutes of copying. uv falls back to copying where the cache is on another filesystem.
export UV_LINK_MODE ?= hardlink

.PHONY: help setup test lint unit isolation demo demo-data server-start server-stop clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(UV):
	python3 -m pip install --quiet --user 'uv>=0.13,<0.14' || python3 -m pip install --quiet 'uv>=0.13,<0.14'

setup: | $(UV)  ## install uv if missing and sync the locked workspace (all four packages + dev tools)
	@if [ ! -x "$(UV)" ]; then echo "uv not found at $(UV)"; exit 1; fi
	time "$(UV)" sync --all-packages --locked

lint: setup  ## ruff (with docstring rules) and mypy --strict
	"$(UV)" run --no-sync ruff check .
	"$(UV)" run --no-sync ruff format --check .
	"$(UV)" run --no-sync mypy

isolation: setup  ## each light role in an environment of its own: no torch, transformers or datasets
	UV_PROJECT_ENVIRONMENT=.venv-isolation/orchestrator "$(UV)" run --exact --locked --no-default-groups \
	  --package durabert-orchestrator --group test pytest tests/isolation -q -p no:cacheprovider -k orchestrator
	UV_PROJECT_ENVIRONMENT=.venv-isolation/data-worker "$(UV)" run --exact --locked --no-default-groups \
	  --package durabert-data-worker --group test pytest tests/isolation -q -p no:cacheprovider -k data

# Coverage of */src is printed last, whether the tests passed or not. The floor (pyproject.toml,
# [tool.coverage.report] fail_under) applies to the whole suite only, not to a PYTEST_ARGS subset.
unit: setup  ## the whole pytest suite (warnings are errors), then its coverage of */src
	rc=0; time "$(UV)" run --no-sync pytest -n $(PYTEST_WORKERS) --dist loadfile --cov --cov-report= --cov-fail-under=0 $(PYTEST_ARGS) || rc=$$?; \
	"$(UV)" run --no-sync coverage report $(if $(PYTEST_ARGS),--fail-under=0,) || rc=$$(( rc ? rc : $$? )); \
	exit $$rc

test: lint isolation unit  ## everything CI runs

server-start: setup  ## start the local Temporal dev server (Web UI on :8233), state in $(STATE_DIR)/temporal
	"$(UV)" run --no-sync durabert-dev-server start --state-dir $(STATE_DIR)/temporal --ui-port 8233

server-stop:  ## stop the local Temporal dev server by PID
	"$(UV)" run --no-sync durabert-dev-server stop --state-dir $(STATE_DIR)/temporal

demo: setup  ## the main job (see README): KILL=0 runs it without the forced crash; STORE=s3 on an object store
	"$(UV)" run --no-sync python -m durabert.orchestrator.demo --kill $(KILL) --state-dir $(STATE_DIR)/demo --data-dir data --store $(STORE)

clean:  ## remove local state (server db, demo artifacts) and the isolation environments
	rm -rf $(STATE_DIR) .venv-isolation
