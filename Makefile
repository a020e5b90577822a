# Every target installs what it needs into .venv first, so each works from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format dev clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Seed the demo tables, sync them into Qdrant with the offline default model, search once.
demo: $(STAMP)
	$(BIN)/vector-pipeline demo

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check vector_pipeline vector_pipeline_tests
	$(BIN)/ruff format --check vector_pipeline vector_pipeline_tests

format: $(STAMP)
	$(BIN)/ruff format vector_pipeline vector_pipeline_tests
	$(BIN)/ruff check --fix vector_pipeline vector_pipeline_tests

dev: $(STAMP)
	$(BIN)/vector-pipeline dev

clean:
	-$(BIN)/vector-pipeline stop-db
	rm -rf .vector_pipeline
