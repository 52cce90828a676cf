# tokred developer entry points. `make compare` and `make test` each set everything up on a fresh machine
# (a virtual environment in .venv with the CPU build of torch 2.13.0 from the machine's local wheel) and run.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tokred-installed
PYTEST_ARGS ?=
# lmms-eval for the lmms-eval backend and its tests (tests/lmms), installed without its own requirements (see
# docs/how-to/lmms-eval.md); scripts/transformers_matrix.py installs the same into .venv-oldest.
LMMS_EVAL ?= lmms-eval==0.7.3

.PHONY: setup compare test test-oldest test-latest lint typecheck docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,lmms]"
	$(BIN)/python -m pip install -q --no-deps $(LMMS_EVAL)
	touch $(STAMP)

setup: $(STAMP)

compare: setup
	$(BIN)/tokred compare --strategies aim,fastv

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tokred
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

# The suite on the oldest transformers pyproject.toml admits (its lower bound), in its own venv (.venv-oldest).
# CI runs it after `make test`, which runs on the newest admitted version.
test-oldest:
	$(PY) scripts/transformers_matrix.py oldest

# The canary: the suite on the newest transformers release the registry offers, ignoring our upper bound
# (.venv-latest). It prints the version it tried and every failing test. Not part of CI; see README "Development".
test-latest:
	$(PY) scripts/transformers_matrix.py latest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy tokred

# The documentation site (mkdocs-material + mkdocstrings), built strictly into site/: broken links, anchors,
# cross-references or docstring sections fail. Generated pages: scripts/gen_cli_docs.py, scripts/gen_strategy_docs.py.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .venv-oldest .venv-latest .venv-lmms build dist site *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
