# Developer shortcuts. The README's two commands are the supported entry points.
PY ?= .venv/bin/python
EXT := $(shell $(PY) -c "import sysconfig; print('densemllm/_core' + sysconfig.get_config_var('EXT_SUFFIX'))")

.PHONY: build test
# Rebuild the C extension after editing csrc/. The new .so replaces the old one by
# rename, so processes that have the old one mapped keep running.
build:
	$(PY) setup.py -q build_ext --build-lib build/lib --build-temp build/tmp
	cp build/lib/$(EXT) $(EXT).tmp && mv -f $(EXT).tmp $(EXT)

test: build
	$(PY) -m pytest -q
