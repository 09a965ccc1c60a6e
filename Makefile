# Set-up happens on first use: the virtual environment is created and the package installed with its
# test extra. `make demo` runs the main job on the embedded default space; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m itra_tune.search --space demo

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.bench

lint: $(STAMP)
	$(PY) -m ruff check itra_tune tests pipelines benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
