# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[codecs,cloud,dev,notebooks,docs]"
	touch $(STAMP)

demo: install
	$(BIN)/dicomflow demo --out demo-out

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/scan.py

# The documentation site (MkDocs Material + mkdocstrings) into ./site; warnings fail it.
docs: install
	$(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check dicomflow tests benchmarks
	$(BIN)/mypy dicomflow

clean:
	rm -rf $(VENV) demo-out demo-out-deidentified .pytest_cache site
