# make demo: set up, then compile a small Mamba with corey and show what it did.
# make test: set up, then run the test suite (CPU; Triton kernels run in its interpreter).
#
# Set-up makes .venv with the Python in $(PYTHON). Where that Python already has
# torch (a GPU user's own build, say), the venv sees it and keeps it; otherwise
# it installs torch: the CPU build where no GPU is visible.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CPU_TORCH ?= torch==2.13.0
# The newest transformers release the suite was run on (5.25 changed how Mamba's functions are called): a
# release after it may change them again, so `make test` runs on this one; `make test
# NEWEST_TRANSFORMERS=transformers` tries the latest.
NEWEST_TRANSFORMERS ?= transformers==5.25.0
LEGACY_TRANSFORMERS ?= transformers==5.2.0
LEGACY_DIR := $(VENV)/legacy

.PHONY: demo test test-legacy setup legacy clean

$(BIN)/.ready: pyproject.toml
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
		echo "set-up: keeping the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else $(PYTHON) -m venv $(VENV); fi
	@if ! $(BIN)/python -c "import torch" >/dev/null 2>&1; then \
		if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
			echo "set-up: GPU visible, installing torch"; $(BIN)/pip install -q torch; \
		else echo "set-up: no GPU visible, installing the CPU build $(CPU_TORCH)"; $(BIN)/pip install -q "$(CPU_TORCH)"; fi; \
	fi
	$(BIN)/pip install -q -e ".[test]" "$(NEWEST_TRANSFORMERS)"
	@touch $@

setup: $(BIN)/.ready

$(LEGACY_DIR)/.ready: $(BIN)/.ready Makefile
	$(BIN)/pip install -q --upgrade --target $(LEGACY_DIR) $(LEGACY_TRANSFORMERS)
	@# transformers 5.25 and later bring the kernels package, which transformers 5.2 cannot use (the newest
	@# fails at its import; its own release fetches kernels from the Hub): hidden from the old release
	mkdir -p $(LEGACY_DIR)/kernels
	echo 'raise ImportError("kernels is hidden from the legacy transformers by the Makefile")' > $(LEGACY_DIR)/kernels/__init__.py
	@touch $@

legacy: $(LEGACY_DIR)/.ready

demo: setup
	$(BIN)/corey demo

# The whole suite on the newest transformers, then the model tests again on a release
# before 5.3 (its Python-loop form, decoding one step at a time through the same loop).
test: setup legacy
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-legacy

test-legacy: setup legacy
	PYTHONPATH=$(LEGACY_DIR) $(BIN)/python -m pytest -q tests/models

clean:
	rm -rf $(VENV) .pytest_cache
