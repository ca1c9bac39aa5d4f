# Developer shortcuts. The README's two commands are the supported entry points.
PY ?= .venv/bin/python
EXT := $(shell $(PY) -c "import sysconfig; print('densemllm/_core' + sysconfig.get_config_var('EXT_SUFFIX'))")

.PHONY: build test asan-test portable-test
# Rebuild the C extension after editing csrc/. The new .so replaces the old one by
# rename, so processes that have the old one mapped keep running.
build:
	$(PY) setup.py -q build_ext --build-lib build/lib --build-temp build/tmp
	cp build/lib/$(EXT) $(EXT).tmp && mv -f $(EXT).tmp $(EXT)

test: build
	$(PY) -m pytest -q

# AddressSanitizer + UBSan: a sanitized build of the extension in build/asan, a copy of the
# package beside it, and the test suite run against that copy with libasan preloaded
# (Python itself is not instrumented). Leak checking is off because CPython and torch
# keep allocations alive at exit by design; memory errors and UB abort the run.
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)
asan-test:
	rm -rf build/asan && mkdir -p build/asan/pkg
	DENSEMLLM_SANITIZE=1 $(PY) setup.py -q build_ext --build-lib build/asan/lib --build-temp build/asan/tmp
	cp -r densemllm build/asan/pkg/ && rm -f build/asan/pkg/densemllm/_core*.so
	cp build/asan/lib/$(EXT) build/asan/pkg/$(EXT)
	cd build/asan/pkg && DENSEMLLM_EXPECT_SANITIZED=1 LD_PRELOAD=$(ASAN_LIB) \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider $(CURDIR)/tests $(ASAN_PYTEST_ARGS)

# The portable build (DENSEMLLM_PORTABLE=1: -march=x86-64-v3, no AVX-512) in build/portable,
# a copy of the package beside it, and tests run against it: exercises the C fallbacks
# of the AVX-512 kernels on a machine that has AVX-512. PORTABLE_TESTS picks the files.
PORTABLE_TESTS ?= tests
portable-test:
	rm -rf build/portable && mkdir -p build/portable/pkg
	DENSEMLLM_PORTABLE=1 $(PY) setup.py -q build_ext --build-lib build/portable/lib --build-temp build/portable/tmp
	cp -r densemllm build/portable/pkg/ && rm -f build/portable/pkg/densemllm/_core*.so
	cp build/portable/lib/$(EXT) build/portable/pkg/$(EXT)
	cd build/portable/pkg && $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider \
	  $(addprefix $(CURDIR)/,$(PORTABLE_TESTS))
