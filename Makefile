# salon-bridge: `make run` to try it, `make test` to run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?= --dry-run

.PHONY: install run test lint bench chaos clean

$(BIN)/salon-bridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/salon-bridge

config.yaml:
	cp config.example.yaml config.yaml
	@echo "created config.yaml from config.example.yaml: edit it, then run without --dry-run (make run ARGS=)"

# Starts the web server, 2 workers and (without REDIS_URL) an embedded Redis in ./var.
run: install config.yaml
	$(BIN)/salon-bridge up --config config.yaml $(ARGS)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run_all.py

chaos: install
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
