# Quick start: `make demo` runs the pipeline end to end on generated sample episodes;
# `make test` installs everything and runs the tests. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: all install demo test bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m droid_pipeline.demo --out $(DEMO_DIR) --episodes 3
	$(PY) -m droid_pipeline.episodes --config $(DEMO_DIR)/config.yaml --outcome all

test: $(STAMP)
	bash tests/setup_system.sh
	$(PY) -m pytest

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) "$$b" || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
