# Large Models, Measured — two commands do everything on a fresh clone:
#   make book   creates .venv, installs, builds the HTML book into _build/html
#   make test   installs, runs the unit tests, nbval on every notebook at ci scale,
#               the warnings-as-errors book build and the browser checks
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JB     := $(VENV)/bin/jupyter-book
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install book test unit notebooks book-strict lab run-notebooks clean

install: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

book: install
	$(JB) build . --builder html
	@echo "open _build/html/index.html"

unit: install
	$(PY) -m pytest tests -q

notebooks: install
	BMLIB_SCALE=ci $(PY) -m pytest -q --nbval-lax --nbval-current-env -p no:randomly notebooks/

book-strict: install
	$(JB) build . --builder html --warningiserror --nitpick --keep-going

test: install
	$(PY) -m pytest tests -q
	BMLIB_SCALE=ci $(PY) -m pytest -q --nbval-lax --nbval-current-env notebooks/
	$(JB) build . --builder html --warningiserror --nitpick --keep-going

lab: install
	$(VENV)/bin/jupyter lab notebooks/

run-notebooks: install
	$(PY) -m bmlib run-notebooks

clean:
	rm -rf _build .pytest_cache
