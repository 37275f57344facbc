# Clarion's developer commands. `make serve` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install serve migrate format lint typecheck importlint unit test bench clean

$(STAMP): pyproject.toml
	sh scripts/ensure-python.sh $(PYTHON)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/clarion serve

migrate: install
	$(BIN)/clarion migrate

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

importlint: install
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest tests/unit -q

test: lint typecheck importlint
	BIN=$(BIN) sh scripts/test.sh

bench: install
	sh scripts/ensure-bench-tools.sh
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/apns.py
	$(BIN)/python bench/email_pipeline.py

clean:  # keeps var/: it holds the database and the sealing key
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
