# Each target builds its own virtualenv (.venv) on first use; nothing else is needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean docs chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/touchpoint demo

# (the tests run on every core: about 2,000 of them, half on SQLite and half on PostgreSQL)
test: $(STAMP) lint typecheck chromium
	$(BIN)/python -m pytest -n auto

chromium:
	.ci/chromium

lint: $(STAMP)
	$(BIN)/ruff check engine tests bench

typecheck: $(STAMP)
	$(BIN)/mypy engine

clean:
	rm -rf $(VENV) touchpoint-demo.db* .mypy_cache .ruff_cache .pytest_cache screenshots

bench: $(STAMP)
	$(BIN)/python -m bench

docs: $(STAMP)
	$(BIN)/python docs/update_settings.py
