# The two commands a user needs are `make run` and `make test`; both set up everything themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv gen gen-check lint typecheck test test-fast run bench clean proto-baseline

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## Regenerate the contract package xsha_api/ from protos/.
gen: $(STAMP)
	$(BIN)/python -m xsha_common.protogen

## Fail when the committed generated code differs from what protos/ produces.
gen-check: $(STAMP)
	$(BIN)/python -m xsha_common.protogen --check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

# Test processes (pytest-xdist): one per core. Most tests wait on child processes, sockets and databases, so
# two workers on two cores finish the suite in about two thirds of the time of one. TEST_WORKERS=0 runs it in-process.
# loadfile keeps each test module whole, in order, on one worker: a module's last test may check what its others
# counted (tests/reliability/test_bad_input.py).
TEST_WORKERS ?= auto

## The whole suite: generated code current, lint, types, tests (DB tests need XSHA_TEST_MYSQL_URL / XSHA_TEST_POSTGRES_URL).
test: $(STAMP) gen-check lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -x -q -m "not slow" $(PYTEST_ARGS)

run: $(STAMP)
	$(BIN)/python -m xsha_demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache var

## Record the current contract as the baseline that `buf breaking` compares against (on a release).
proto-baseline: $(STAMP)
	$(BIN)/buf build -o protos/breaking-baseline.binpb
