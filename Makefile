# `make test` and `make demo` each create .venv if missing and install the pinned requirements first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= results/demo
PYTEST_ARGS ?= --durations=15

.PHONY: test demo install clean

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(BIN)/omnimouse demo --out $(OUT)

clean:
	rm -rf $(VENV) results build *.egg-info
