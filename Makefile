# Set-up and the two README commands. pip + venv (uv/poetry do not see the local torch wheel);
# torch is installed first and pinned, so nothing can pull a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,tasks]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/surgery demo

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) surgery-demo .pytest_cache
