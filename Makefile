# samcache: `make demo` runs the embedded demo end to end, `make test` runs the tests.
# Both create .venv with python3 (>= 3.11) and install the package into it on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# The demo's config is complete in itself (standalone: true): config.yaml is not read.
DEMO := --configfile workflow/config/demo.yaml
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo demo-tables test lint dry-run report clean-demo help

help:
	@echo "make demo      run the whole pipeline on the embedded synthetic demo (CPU, minutes)"
	@echo "make demo-tables  every demo table of the papers' layouts (snakemake all_tables)"
	@echo "make test      run the test suite (unit tests and one end-to-end demo run)"
	@echo "make lint      ruff, snakefmt and snakemake --lint"
	@echo "make dry-run   show the demo's plan without running it"
	@echo "make report    every demo table, then results/report.html: tables, plots, galleries"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "samcache needs Python >= 3.11; run make PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(DEMO)

demo-tables: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all_tables $(DEMO)

dry-run: $(STAMP)
	$(BIN)/snakemake --dry-run $(DEMO)

# Every demo table and its galleries, then one self-contained HTML report of them.
report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all_tables all_galleries $(DEMO)
	$(BIN)/snakemake --report results/report.html all_tables all_galleries $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks)
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint $(DEMO)

clean-demo:
	rm -rf data/stores/demo.zarr cache/features/demo cache/superpixels/demo \
	  cache/sam_priors/demo results/runs/demo \
	  results/tables/demo_* results/galleries/demo_* results/report.html logs
