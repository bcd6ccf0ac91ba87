# One entry point for developers: `make dev` runs the stack, `make test` checks everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test soak proto lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[scheduler,dev]'
	touch $(STAMP)

## dev: start PostgreSQL (embedded), the scheduler and a worker with the built-in job types
dev: $(STAMP)
	$(VENV)/bin/jobwire dev

## test: the whole suite against a real PostgreSQL and real gRPC servers
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## soak: the soak test at full size (20,000 jobs; make test runs a reduced one)
soak: $(STAMP)
	JOBWIRE_SOAK_JOBS=20000 $(PY) -m pytest tests/test_soak.py -s $(PYTEST_ARGS)

## proto: regenerate the Python code and type stubs from protos/
proto: $(STAMP)
	PYTHON=$(PY) scripts/genproto

## lint: ruff and mypy
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy services

clean:
	rm -rf $(VENV) .jobwire .pytest_cache
