# Two entry points that work on a fresh machine: `make train` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A Python 3.12 interpreter: python3.12 on PATH, else pyenv's 3.12 install.
PY312  := $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do \
            $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo $$p; break; }; done)
PYTEST_WORKERS ?= 2

.PHONY: setup train test test-gpu bench clean

setup: $(STAMP)

$(STAMP): setup.cfg requirements/ci.txt requirements/ci-nodeps.txt
	@test -x $(PY) || { test -n "$(PY312)" || { echo "error: no Python 3.12 found (python3.12 or pyenv)"; exit 1; }; \
	  $(PY312) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/ci.txt
	$(PY) -m pip install -q --no-deps -r requirements/ci-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/xlstm-flax train --config configs/train_tiny.yaml overwrite=true

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not gpu" tests --ignore=tests/triton_interpret
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider tests/triton_interpret

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests

bench: $(STAMP)
	$(PY) benchmarks/kernels.py

clean:
	rm -rf $(VENV) build *.egg-info
