# `make run`: set up .venv and start the dashboard on the shipped model.
# `make test`: set up .venv with the optional Ray engine too (requirements-ray.txt) and the test browser, lint (ruff,
#   configured in pyproject.toml), run the whole test suite.
# `make ray`: install the optional Ray engine (classify --engine ray) into .venv.
# `make lint`: ruff only.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray

.PHONY: run test test-fast lint browser ray clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

$(RAY_STAMP): $(STAMP) requirements-ray.txt
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-ray.txt
	touch $(RAY_STAMP)

ray: $(RAY_STAMP)

run: $(STAMP)
	$(BIN)/streamlit run Home.py

browser:
	bash scripts/install-browser.sh

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(RAY_STAMP) browser lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: $(RAY_STAMP)
	$(BIN)/python -m pytest -q -m "not browser and not slow"

clean:
	rm -rf $(VENV) .pytest_cache
