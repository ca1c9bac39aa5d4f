# Developer shortcuts. The README's two commands are the supported entry points.
PY ?= .venv/bin/python

.PHONY: build test
build:  ## rebuild the C extension in place after editing csrc/
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m pytest -q
