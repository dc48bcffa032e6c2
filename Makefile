# Entry points: `make run` serves with embedded defaults, `make test` runs every test.
VENV ?= .venv
PYTHON ?= python3

# Locked dependencies: requirements.lock (what the image runs) and requirements-dev.lock (that plus the
# test and dev extras, what `make install` and CI use), every file pinned by hash. `make lock` updates
# them after a change to pyproject.toml's dependencies, keeping every other pin; `make lock-upgrade`
# moves every pin to the newest release allowed.
LOCK = $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 --python-platform linux \
	--no-emit-package secrets-client
# Resolved with the project: setuptools (the build backend) and the client from client/ (the service depends
# on secrets-client by name, which is not on PyPI); its dependencies are locked, not itself.
LOCK_ALSO = 'setuptools>=69' './client[events]'

.PHONY: install run test bench bench-quick fuzz lint lock lock-upgrade clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-dev.lock client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes -r requirements-dev.lock
	# The client before the service, which depends on secrets-client (client/, not on PyPI) by name.
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e ./client
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

lock: install
	printf '%s\n' $(LOCK_ALSO) | $(LOCK) pyproject.toml - -o requirements.lock
	printf '%s\n' $(LOCK_ALSO) | $(LOCK) pyproject.toml - --extra test --extra dev -o requirements-dev.lock

lock-upgrade: install
	printf '%s\n' $(LOCK_ALSO) | $(LOCK) --upgrade pyproject.toml - -o requirements.lock
	printf '%s\n' $(LOCK_ALSO) | $(LOCK) --upgrade pyproject.toml - --extra test --extra dev -o requirements-dev.lock

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
	$(VENV)/bin/ruff format --check service tests bench client
	$(VENV)/bin/ruff check service tests bench client
	$(VENV)/bin/mypy
	cd client && $(abspath $(VENV))/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
