# Sceau developer entry points. Every install step lives here or in scripts/.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= ./sceau-data
# Test processes: the end-to-end tests mostly wait on their servers, so three workers on two
# cores halve the suite's time. Each module stays in one worker (its servers are
# module-scoped). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3

.PHONY: run test lint bench fuzz supply-chain system test-provider clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

system:
	@bash scripts/setup-system.sh

# The OpenID provider of the console's OpenID Connect tests (npm ci into tests/oidc).
test-provider: system
	@bash scripts/setup-test-provider.sh

run: $(STAMP)
	@test -d $(DATA_DIR) || $(VENV)/bin/sceau init --data-dir $(DATA_DIR)
	$(VENV)/bin/sceau serve --data-dir $(DATA_DIR)

test: $(STAMP) system test-provider
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

bench: $(STAMP) system
	@bash scripts/bench-setup.sh
	$(PY) -m bench.run

fuzz: $(STAMP)
	$(PY) -m pip install --quiet -e '.[fuzz]'
	$(PY) tests/fuzz/fuzz_envelope.py -max_total_time=60

supply-chain: $(STAMP)
	bash scripts/supply-chain.sh check

clean:
	rm -rf $(VENV) build dist src/*.egg-info tests/oidc/node_modules
