# Every target installs what it needs first, so each works on a fresh machine.
VENV ?= .venv
BIN := $(VENV)/bin
# The RQ integration supports RQ 2.x and 3.x: its end-to-end tests run on both.
RQ2 ?= .venv-rq2
# The Celery integration supports Celery 5.3 to 5.7: its end-to-end tests run on the oldest as well.
CELERY53 ?= .venv-celery53

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(RQ2)/bin/.installed: pyproject.toml
	python3 -m venv $(RQ2)
	$(RQ2)/bin/python -m pip install --quiet --upgrade pip
	$(RQ2)/bin/python -m pip install --quiet -e '.[test]' 'rq>=2.0,<3'
	touch $@

$(CELERY53)/bin/.installed: pyproject.toml
	python3 -m venv $(CELERY53)
	$(CELERY53)/bin/python -m pip install --quiet --upgrade pip
	$(CELERY53)/bin/python -m pip install --quiet -e '.[test]' 'celery[redis]==5.3.6' 'kombu>=5.3.4,<5.4'
	touch $@

.PHONY: demo test lint bench
demo: $(BIN)/.installed
	$(BIN)/zombieguard demo

test: $(BIN)/.installed $(RQ2)/bin/.installed $(CELERY53)/bin/.installed
	$(BIN)/pytest
	$(RQ2)/bin/pytest tests/e2e/test_rq_*.py
	$(CELERY53)/bin/pytest tests/e2e/test_celery_*.py

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict

bench: $(BIN)/.installed
	$(BIN)/python -m bench.core
	$(BIN)/python -m bench.rq
	$(BIN)/python -m bench.celery
