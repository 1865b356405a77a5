# Quick start: `make demo` runs the pipeline end to end on generated sample episodes;
# `make test` installs everything and runs lint and the tests (all but the end-to-end ones marked
# slow, which `make test-slow` runs). Both create .venv when missing. `make test-compat` runs the
# tests again in .venv-compat, with the versions a LeRobot install pins (constraints/lerobot.txt).
# `make test-faults` runs the long fault suite. CI (.ci/run) runs test, test-slow and test-compat.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMPAT_VENV := .venv-compat
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed
COMPAT_CONSTRAINTS := constraints/lerobot.txt
# The versions each dependency set resolved, printed before its test run.
SHOW_VERSIONS = -c "from importlib.metadata import version as v; \
print(' '.join(f'{p}=={v(p)}' for p in ('numpy', 'opencv-python-headless', 'huggingface_hub', 'av', \
'scipy', 'h5py', 'matplotlib')))"
DEMO_DIR ?= demo
# The default suite, and the end-to-end tests behind their own target (pyproject's markers).
FAST_TESTS := -m 'not faults and not slow'
SLOW_TESTS := -m 'slow and not faults'

.PHONY: all install demo lint test test-slow test-faults test-compat bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(COMPAT_PY):
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install --quiet --upgrade pip

$(COMPAT_STAMP): pyproject.toml $(COMPAT_CONSTRAINTS) | $(COMPAT_PY)
	$(COMPAT_PY) -m pip install --quiet -c $(COMPAT_CONSTRAINTS) -e '.[test]'
	touch $(COMPAT_STAMP)

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
	$(VENV)/bin/mypy

test: $(STAMP) lint
	bash tests/setup_system.sh
	$(PY) $(SHOW_VERSIONS)
	$(PY) -m pytest $(FAST_TESTS)

# The end-to-end tests that take tens of seconds each (drivers interrupted and killed, the fault
# suite's short subset, gs:// runs, consumers reading a published repo, SLURM, the wheel).
test-slow: $(STAMP)
	bash tests/setup_system.sh
	$(PY) -m pytest $(SLOW_TESTS)

# The fault suite (tests/faults, docs/reliability.md): the whole corpus of damaged episodes through
# both drivers, 50 worker and 20 uploader kills, full disks (a tmpfs: run as root). About a
# quarter of an hour on two cores; -s prints the figures it measured. make test runs a short subset.
test-faults: $(STAMP)
	bash tests/setup_system.sh
	$(PY) -m pytest tests/faults -m 'faults or not faults' -s -q

# The drivers run the interpreter of DROID_PYTHON, so they too use the compat set.
test-compat: $(COMPAT_STAMP)
	bash tests/setup_system.sh
	$(COMPAT_PY) $(SHOW_VERSIONS)
	DROID_PYTHON=$(abspath $(COMPAT_PY)) $(COMPAT_PY) -m pytest $(FAST_TESTS)

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) "$$b" || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
