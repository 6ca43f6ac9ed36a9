# Sophia: `make demo` runs the product, `make test` runs the tests. Both set everything up.
SHELL := /bin/bash
PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Test services: real PostgreSQL and Redis on this machine (scripts/ensure-services starts them).
TEST_ENV := DATABASE_URL=$${TEST_DATABASE_URL:-postgresql://sophia:sophia@127.0.0.1:5432/sophia} \
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} \
	SECRET_KEY=sophia-tests-only SOPHIA_NETWORK_GUARD=raise

.PHONY: demo test lint format bench messages screenshots clean

$(STAMP): pyproject.toml scripts/find-python
	@python=$$(scripts/find-python) || exit 1; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then \
		rm -rf $(VENV) && $$python -m venv $(VENV); fi
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

messages: $(STAMP)
	@$(PY) scripts/i18n.py compile

demo: $(STAMP) messages
	@PORT=$(PORT) scripts/demo

test: $(STAMP) messages
	@scripts/ensure-services
	@$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The console photographed from the demo (SQLite, in-process layers) into docs/screenshots/.
screenshots: $(STAMP) messages
	@scripts/ensure-services
	@$(PY) scripts/screenshots.py

bench: $(STAMP) messages
	@scripts/ensure-services
	@$(TEST_ENV) $(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
