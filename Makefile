# The two commands of the README. Both set up .venv on first use (CPU build of torch from this machine's
# disk; on a CUDA machine set TORCH_SPEC, e.g. TORCH_SPEC='torch>=2.11').
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test setup

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glacompiler demo

test: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 --durations=15
