# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The CPU build of torch; GPU users: `make install TORCH=` after installing their own torch in .venv.
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-fast lint docs format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install --quiet "$(TORCH)")
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/pvn quickstart

test: install
	$(BIN)/python -m pytest -q --durations=15

# development loop: the slowest end-to-end tests (marked `slow`) are left to `make test` and CI
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# the documentation site, strict: a broken link or a stale config reference fails
docs: install
	$(BIN)/python scripts/gen_config_reference.py --check
	$(BIN)/mkdocs build --strict --quiet
	@echo "docs: site in build/site/ (open build/site/index.html, or \`$(BIN)/mkdocs serve\` for http://127.0.0.1:8000); screenshots: scripts/docs_screenshots.sh"

# ruff, then the package layers (the import-linter contracts in pyproject.toml; docs/layout.md)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python scripts/bench_replay.py
	$(BIN)/python scripts/bench_envs.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .import_linter_cache
