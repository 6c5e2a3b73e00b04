# salon-bridge: `make run` to try it, `make test` to run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?= --dry-run

.PHONY: install run test lint bench chaos clean messages

# The admin's translations: .po files in git, compiled to .mo here (Flask-Babel reads the .mo).
CATALOGS := $(patsubst %.po,%.mo,$(wildcard bridge/admin/translations/*/LC_MESSAGES/messages.po))
# axe-core (npm) for the admin's accessibility test; skipped, with a note, where npm is missing.
AXE := tests/node_modules/axe-core/axe.min.js

$(BIN)/salon-bridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/salon-bridge $(CATALOGS) $(AXE)

%.mo: %.po $(BIN)/salon-bridge
	$(BIN)/pybabel compile --statistics -i $< -o $@

$(AXE): tests/package.json
	@if command -v npm >/dev/null; then npm install --prefix tests --no-audit --no-fund --silent && touch $@; \
	else echo "npm not found: the admin's accessibility test (axe-core) will fail; install nodejs and npm"; fi

# After changing the admin's texts: extract them and merge them into each catalog, then translate.
messages: install
	$(BIN)/pybabel extract -F bridge/admin/babel.cfg -k _l -k _e:2 --no-location --sort-output -o bridge/admin/translations/messages.pot bridge/admin
	$(BIN)/pybabel update -i bridge/admin/translations/messages.pot -d bridge/admin/translations --no-fuzzy-matching

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
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info tests/node_modules $(CATALOGS)
