# Healthscore — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt bench soak migrate clean install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the whole stack on the embedded default (Ctrl-C stops it); DEMO=1 adds demo traffic
	$(BIN)/healthscore dev $(if $(DEMO),--demo,)

test: $(STAMP) lint  ## lint, type-check and the whole test suite on real Postgres and a real broker
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check services shared tests
	$(BIN)/ruff format --check services shared tests bench
	$(BIN)/mypy services shared

fmt: $(STAMP)
	$(BIN)/ruff format services shared tests
	$(BIN)/ruff check --fix services shared tests

bench: $(STAMP)
	$(BIN)/python -m bench

soak: $(STAMP)
	$(BIN)/python -m bench --soak

migrate: $(STAMP)
	$(BIN)/healthscore migrate

clean:
	rm -rf $(VENV) .healthscore test-artifacts .pytest_cache .mypy_cache .ruff_cache *.egg-info
