# Quick start: `make demo` runs the pipeline end to end on generated sample episodes;
# `make test` installs everything and runs the tests. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: all install demo lint test bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The demo uploads to local folders laid out like the two Hub repos.
DEMO_ABS = $(abspath $(DEMO_DIR))
DEMO_ARGS = --config $(DEMO_DIR)/config.yaml \
	--set metadata_repo=file://$(DEMO_ABS)/hub/droid-metadata \
	--set full_repo=file://$(DEMO_ABS)/hub/droid-full

demo: $(STAMP)
	$(PY) -m droid_pipeline.demo --out $(DEMO_DIR) --episodes 3
	$(PY) -m droid_pipeline.episodes --config $(DEMO_DIR)/config.yaml --outcome all
	./run_pipeline_metadata_only.sh $(DEMO_ARGS) --workers 2
	./run_pipeline_compressed_depth.sh $(DEMO_ARGS) --workers 2 --depth-backend stereo
	$(PY) -m droid_pipeline.timing review "$$(ls -d $(DEMO_DIR)/runs/full-* | tail -n 1)"
	$(PY) upload_batches.py $(DEMO_ARGS) status
	$(PY) -m droid_pipeline.verify $(DEMO_DIR)/output --no-progress
	$(PY) render_tracks.py --config $(DEMO_DIR)/config.yaml --no-progress --out $(DEMO_DIR)/renders \
	    --episode-dir "$$(dirname "$$(find $(DEMO_DIR)/output -name tracks.npz | sort | head -n 1)")"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	bash tests/setup_system.sh
	$(PY) -m pytest

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) "$$b" || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
