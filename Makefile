# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU torch for the parity tests: this exact version is the CPU build; a range would pull CUDA.
TORCH := torch==2.13.0
PYTEST_FLAGS ?= -n 2 --dist loadgroup

.PHONY: setup demo test test-all clean

$(STAMP): setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,tpu]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m kosmos.demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache
