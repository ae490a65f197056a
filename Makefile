# Large Models, Measured — two commands do everything on a fresh clone:
#   make book   creates .venv, installs, builds the HTML book into _build/html
#   make test   installs, runs the unit tests, nbval on every notebook at cpu scale,
#               the warnings-as-errors book build and the browser checks, then prints a
#               summary ending in "N passed, M failed"; exits non-zero if any stage failed
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JB     := $(VENV)/bin/jupyter-book
REPORT := _build/test-reports
NBVAL  := --nbval-lax --nbval-current-env -p no:randomly --ignore-glob='*.failed.ipynb' --ignore=notebooks/artifacts
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install book test unit notebooks book-strict browser lab run-notebooks clean

install: $(STAMP)
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

book: install
	$(JB) build . --builder html
	@echo "open _build/html/index.html"

# The stages of `make test`, each runnable on its own.
unit: install
	$(PY) -m pytest tests -q -m "not browser"

notebooks: install
	BMLIB_SCALE=cpu $(PY) -m pytest -q $(NBVAL) notebooks/

book-strict: install
	$(JB) build . --builder html --all --warningiserror --nitpick --keep-going

browser: install
	$(PY) -m pytest tests/test_book_browser.py -q -m browser

# Every stage runs even if an earlier one failed; tools/test_summary.py reads their JUnit XML and
# exit statuses, prints one table and the closing "N passed, M failed", and sets the exit status.
test: install
	@rm -rf $(REPORT) && mkdir -p $(REPORT)
	@echo "== 1/4 unit tests"
	$(PY) -m pytest tests -q -m "not browser" --junitxml=$(REPORT)/unit.xml; echo $$? > $(REPORT)/unit.rc
	@echo "== 2/4 notebooks at cpu scale (nbval)"
	BMLIB_SCALE=cpu $(PY) -m pytest -q $(NBVAL) --junitxml=$(REPORT)/notebooks.xml notebooks/; echo $$? > $(REPORT)/notebooks.rc
	@echo "== 3/4 book build, warnings as errors"
	set -o pipefail; $(JB) build . --builder html --all --warningiserror --nitpick --keep-going 2>&1 | tee $(REPORT)/book.log | tail -n 25; echo $$? > $(REPORT)/book.rc
	@echo "== 4/4 the rendered book in headless Chromium"
	$(PY) -m pytest tests/test_book_browser.py -q -m browser --junitxml=$(REPORT)/browser.xml; echo $$? > $(REPORT)/browser.rc
	$(PY) tools/test_summary.py $(REPORT)

lab: install
	$(VENV)/bin/jupyter lab notebooks/

run-notebooks: install
	$(PY) -m bmlib run-notebooks

clean:
	rm -rf _build .pytest_cache
