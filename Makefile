# Set-up happens on first use: the virtual environment is created and the package installed with what the
# target needs: `make demo` the search extra, the test targets every extra and the test tools.
VENV ?= .venv
PY := $(VENV)/bin/python
SEARCH := $(VENV)/.installed-search
DEV := $(VENV)/.installed-dev

.PHONY: demo test test-all bench lint clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip

$(SEARCH): pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e ".[search]"
	touch $@

$(DEV): pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e ".[dev]"
	touch $@ $(SEARCH)

demo: $(SEARCH)
	$(PY) -m itra_tune.search --space demo

test: $(DEV)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -m "not slow"

test-all: $(DEV)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q --durations=25

bench: $(DEV)
	$(PY) -m benchmarks.bench

lint: $(DEV)
	$(PY) -m ruff check itra_tune tests pipelines benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
