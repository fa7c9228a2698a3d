# The two commands a newcomer runs (README): `make demo` and `make test`.
# Each creates .venv and installs everything on first use (tools/setup_env.sh);
# later runs install nothing.
PY := .venv/bin/python
RUN_DIR ?= runs/demo

.PHONY: setup demo test test-fast bench clean

setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) jobs/demo.py --run-dir $(RUN_DIR)

# pytest exits 5 when no test ran; make turns every non-zero exit into a failure.
test: setup
	$(PY) -m pytest -q tests

# While iterating: everything but the tests marked slow (pytest.mark.slow, > ~30 s on 2 CPUs).
# Not the newcomer's command: `make test` stays the whole suite.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf runs .pytest_cache
