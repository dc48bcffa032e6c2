# Entry points: `make run` serves with embedded defaults, `make test` runs every test.
VENV ?= .venv
PYTHON ?= python3

.PHONY: install run test bench bench-quick fuzz lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,dev]'
	touch $@

run: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/dev-run

test: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/test

fuzz: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/fuzz

bench: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python bench/run

bench-quick: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python bench/run --quick

lint: install
	$(VENV)/bin/ruff format --check service tests bench
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
