# Set up, run and test. Every target first builds the venv if it is missing or older than the
# requirements. See README.md, Troubleshooting, for why the set-up is more than one pip install.
# PYTHON picks the interpreter (3.11: visdom 0.2.4; 3.12 and newer: visdom 0.3), VENV the folder.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup server run test lint

setup: $(VENV)/ready

$(VENV)/ready: requirements.txt tools/visdom_assets.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "setuptools>=77.0.3,<82"
	$(BIN)/pip install --no-build-isolation -r requirements.txt
	$(BIN)/python tools/visdom_assets.py
	touch $@

server: setup
	$(BIN)/python -m visdom.server -bind_local

run: setup
	$(BIN)/python main.py $(ARGS)

test: setup
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
