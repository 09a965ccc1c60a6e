# Set-up happens on first use: the virtual environment is created and the package installed with what the
# target needs: `make demo` the search extra, the test targets every extra and the test tools.
VENV ?= .venv
# more pytest options for the test targets, e.g. PYTEST_ARGS="-x", or CI's --junitxml report
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
SEARCH := $(VENV)/.installed-search
DEV := $(VENV)/.installed-dev

.PHONY: demo test test-all test-slow bench lint docs docs-build clean

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
	$(PY) -m pytest -q --durations=10 -m "not slow" $(PYTEST_ARGS)

test-all: $(DEV)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

# what `make test` leaves out or skips without the data: the slow tests and those reading $ITRA_TUNE_DATA (CI runs
# `make test` in a fresh clone without data, then this where the data is: together, `make test-all`), two at a
# time: most of a slow test's time is a subprocess starting, Ray starting, or a one-thread run
# (tests that start a Ray head carry the xdist group ray_head, and run one after another)
test-slow: $(DEV)
	$(PY) -m pytest -q --durations=25 -n 2 --dist loadgroup -m "slow or real_data" $(PYTEST_ARGS)

# the documentation site (mkdocs.yml): served with live reload at http://127.0.0.1:8000, or built strictly into site/
docs: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

docs-build: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(DEV)
	$(PY) -m benchmarks.bench

lint: $(DEV)
	$(PY) -m ruff check itra_tune tests pipelines benchmarks docs

clean:
	rm -rf $(VENV) runs site .pytest_cache
