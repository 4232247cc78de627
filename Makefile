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

# The unit tests of the modules compiled with mypyc (pyproject.toml [tool.sceau.compiled]),
# run once more on the pure Python sources by `make test` (`make test-pure` alone).
PURE_TESTS ?= tests/core tests/jose tests/store tests/service/test_e2e_crypto.py

.PHONY: run test test-pure compile lint bench fuzz supply-chain system test-provider clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

system:
	@bash scripts/setup-system.sh

# The OpenID provider of the console's OpenID Connect tests (npm ci into tests/oidc).
test-provider: system
	@bash scripts/setup-test-provider.sh

run: $(STAMP) compile
	@test -d $(DATA_DIR) || $(VENV)/bin/sceau init --data-dir $(DATA_DIR)
	$(VENV)/bin/sceau serve --data-dir $(DATA_DIR)

# mypyc-compiled modules: built in place when a C compiler exists (skipped with a message
# when not; SCEAU_REQUIRE_COMPILED=1 makes that an error), rebuilt when a source changed.
compile: $(STAMP)
	$(PY) scripts/compile.py $(if $(SCEAU_REQUIRE_COMPILED),--require)

# The whole suite on the compiled modules (when built), then their unit tests pure.
test: $(STAMP) system test-provider compile
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-pure

test-pure: $(STAMP)
	SCEAU_PURE_PYTHON=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PURE_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

bench: $(STAMP) system compile
	@bash scripts/bench-setup.sh
	$(PY) -m bench.run

fuzz: $(STAMP)
	$(PY) -m pip install --quiet -e '.[fuzz]'
	$(PY) tests/fuzz/fuzz_envelope.py -max_total_time=60

supply-chain: $(STAMP)
	bash scripts/supply-chain.sh check

clean:
	@test ! -x $(PY) || $(PY) scripts/compile.py --clean
	find src -name '*.so' -delete
	rm -rf $(VENV) build dist src/*.egg-info src/sceau/_compiled.json tests/oidc/node_modules
