# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU torch for the parity tests: this exact version is the CPU build; a range would pull CUDA.
TORCH := torch==2.13.0
PYTEST_FLAGS ?= -n 2 --dist loadfile
# libtpu (the tpu extra) is installed for AOT TPU compiles; keep runtime JAX on the CPU here.
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: setup system demo demo-short test test-all clean

$(STAMP): setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,tpu]"
	touch $(STAMP)

# Java runs pycocoevalcap's PTB tokenizer; shellcheck lints launch/. Both from Debian when
# we may install them; tests that need them skip with the reason otherwise.
system:
	@command -v java >/dev/null && command -v shellcheck >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless shellcheck >/dev/null; \
	  else echo "note: java/shellcheck missing and not root: their tests will skip"; fi; }

setup: $(STAMP) system

demo: setup
	$(PY) -m kosmos.demo --out demo_out

test: setup
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not slow" tests

test-all: setup
	$(PY) -m pytest $(PYTEST_FLAGS) tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache
