# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AZURITE := .tools/node_modules/.bin/azurite-blob
OIDC_PROVIDER := .tools/node_modules/oidc-provider/package.json

.PHONY: install demo test bench fuzz lint docs clean

# Compiled as pip compiles an installed package: an editable install is compiled only
# where Python may write its cache, which PYTHONDONTWRITEBYTECODE forbids.
install: $(STAMP)
	$(BIN)/python -m compileall -q dicomflow

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[codecs,cloud,dev,notebooks,docs]"
	touch $(STAMP)

demo: install
	$(BIN)/dicomflow demo --out demo-out

test: install $(AZURITE) $(OIDC_PROVIDER)
	$(BIN)/python -m pytest

# Microsoft's Azure Blob Storage emulator, for the az:// tests (npm; without npm they skip).
$(AZURITE):
	@if command -v npm >/dev/null; then \
		npm install --prefix .tools --no-audit --no-fund --silent azurite@3; \
	else echo "npm not found: the Azure Blob Storage tests will skip (CI installs it)"; fi

# An OpenID Connect provider (panva's oidc-provider), the token issuer of the OAuth2 tests.
$(OIDC_PROVIDER):
	@if command -v npm >/dev/null; then \
		npm install --prefix .tools --no-audit --no-fund --silent oidc-provider@8; \
	else echo "npm not found: the OAuth2 tests will skip (CI installs it)"; fi

bench: install
	$(BIN)/python benchmarks/scan.py

# The mutation campaign: 5,000 mutants of the corpus through scan, ingest --pixels and
# ingest --anonymize --dicom, then ten minutes of coverage-guided fuzzing of the header
# reader (CI runs a fixed 500 mutants and 20 seconds in make test).
fuzz: install
	$(BIN)/python -m tests.fuzz.campaign --count 5000 --work fuzz-out
	mkdir -p fuzz-out/header-seeds
	find ../shared/corpus -name '*.dcm' -size -20k | head -60 | xargs -I{} cp {} fuzz-out/header-seeds/
	cd fuzz-out && ../$(BIN)/python ../tests/fuzz/header_harness.py header-seeds -max_total_time=600 -rss_limit_mb=2048 -timeout=10

# The documentation site (MkDocs Material + mkdocstrings) into ./site; warnings fail it.
docs: install
	$(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check dicomflow tests benchmarks
	$(BIN)/mypy dicomflow

clean:
	rm -rf $(VENV) demo-out demo-out-deidentified demo-out-model-seg.dcm .pytest_cache site fuzz-out
