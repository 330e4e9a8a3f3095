# The few commands everyone runs. Use them inside a virtualenv.
PYTHON ?= python

.PHONY: install test test-only build lint demo clean

install:            ## the gateway and the demo's SDK backends
	$(PYTHON) -m pip install ".[demo]"

test:               ## install everything the tests need, build the extensions in place, run the suite
	$(PYTHON) -m pip install -e ".[test]"
	npm ci --no-audit --no-fund --loglevel=error
	$(PYTHON) -m ruff check gateway tests benchmarks
	$(PYTHON) -m pytest

test-only:          ## run the suite without installing
	$(PYTHON) -m pytest

build:              ## compile gateway/_fast in place (GATEWAY_DEBUG_BUILD=1 for annotation + tracing)
	$(PYTHON) setup.py build_ext --inplace

demo:
	mcp-gateway serve

clean:
	rm -rf build dist *.egg-info gateway/_fast/*.c gateway/_fast/*.so gateway/_fast/*.html
