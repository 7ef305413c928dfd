# `make run`: set up .venv and start the dashboard on the shipped model.
# `make test`: set up .venv (and the test browser), lint (ruff, configured in pyproject.toml), run the whole test suite.
# `make lint`: ruff only.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint browser clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/streamlit run Home.py

browser:
	bash scripts/install-browser.sh

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) browser lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not browser and not slow"

clean:
	rm -rf $(VENV) .pytest_cache
