# Developer shortcuts. The README's two commands are the supported entry points.
PY ?= .venv/bin/python
EXT := $(shell $(PY) -c "import sysconfig; print('densemllm/_core' + sysconfig.get_config_var('EXT_SUFFIX'))")

.PHONY: build test asan-test dev-check fuzz portable-test
# The build requirements must be in the venv (pip builds in an isolated environment,
# so they are not there after a plain install): the README's test install adds them
# through the `dev` extra.
dev-check:
	@$(PY) -c "import importlib.metadata as m; [m.version(d) for d in ('setuptools', 'onednn-devel-cpu-gomp', 'scipy-openblas32')]" 2>/dev/null || \
	  { echo "make: the build requirements are missing from $(PY)'s environment; install them with:"; \
	    echo "  $(dir $(PY))pip install -e '.[test,dev]'"; exit 1; }

# Rebuild the C extension after editing csrc/. The new .so replaces the old one by
# rename, so processes that have the old one mapped keep running.
build: dev-check
	$(PY) setup.py -q build_ext --build-lib build/lib --build-temp build/tmp
	cp build/lib/$(EXT) $(EXT).tmp && mv -f $(EXT).tmp $(EXT)

test: build
	$(PY) -m pytest -q

# AddressSanitizer + UBSan + LeakSanitizer: a sanitized build of the extension in build/asan,
# a copy of the package beside it, and the test suite run against that copy with libasan
# preloaded (Python itself is not instrumented; libstdc++ is preloaded too so that C++
# exceptions in other extensions work under the interceptors). PYTHONMALLOC=malloc puts
# every Python object in malloc'd memory that LSan scans, so a core allocation owned by a
# Python object is not reported as a leak. tests/lsan.supp names what other libraries keep
# at exit; the core's own allocations are not suppressed. Every process writes its report
# to build/asan/log (pytest's and the CLI tests' subprocesses alike) and any report fails
# the target. A canary (a malloc through ctypes, never freed) must be reported, so a run
# in which leak detection is off cannot pass.
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)
STDCXX_LIB = $(shell gcc -print-file-name=libstdc++.so)
ASAN_ENV = DENSEMLLM_EXPECT_SANITIZED=1 PYTHONMALLOC=malloc LD_PRELOAD="$(ASAN_LIB) $(STDCXX_LIB)" \
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:log_path=$(CURDIR)/build/asan/log/asan \
  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
asan-test: dev-check
	rm -rf build/asan && mkdir -p build/asan/pkg build/asan/log
	DENSEMLLM_SANITIZE=1 $(PY) setup.py -q build_ext --build-lib build/asan/lib --build-temp build/asan/tmp
	cp -r densemllm build/asan/pkg/ && rm -f build/asan/pkg/densemllm/_core*.so
	cp build/asan/lib/$(EXT) build/asan/pkg/$(EXT)
	cd build/asan/pkg && $(ASAN_ENV) $(abspath $(PY)) -m pytest -q -p no:cacheprovider $(CURDIR)/tests $(ASAN_PYTEST_ARGS)
	@if grep -l "ERROR: \|runtime error" build/asan/log/asan.* 2>/dev/null; then \
	  echo "make: sanitizer reports above (build/asan/log)"; cat build/asan/log/asan.*; exit 1; fi
	@echo "asan-test: no sanitizer report from any process (build/asan/log is empty)"
	@cd build/asan/pkg && mkdir -p ../canary && $(ASAN_ENV) ASAN_OPTIONS=detect_leaks=1:log_path=../canary/asan \
	  $(abspath $(PY)) -c "import ctypes; ctypes.CDLL(None).malloc(4096) ^ 0x5a5a" ; \
	  grep -q "LeakSanitizer: detected memory leaks" ../canary/asan.* && echo "asan-test: leak canary reported (leak detection is on)" || \
	  { echo "make: the leak canary was not reported: leak detection is not working"; exit 1; }

# Coverage-guided fuzzing of the C parsers (safetensors header + its JSON grammar, RLE)
# with libFuzzer + ASan + UBSan. Needs clang (Debian: apt-get install clang). Each target
# starts from its committed seeds in tests/fuzz/corpus/<target> and keeps what it finds in
# build/fuzz/corpus/<target>; a crash stops the run and leaves crash-* in build/fuzz.
# FUZZ_SECONDS per target (the long run in docs/build.md: FUZZ_SECONDS=1200).
CLANG ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = safetensors json rle
FUZZ_CFLAGS = -g -O1 -std=c11 -D_GNU_SOURCE -Icsrc -Wno-unknown-pragmas \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_CORE = csrc/core/status.c csrc/core/alloc.c csrc/core/tensor.c csrc/core/dtype.c
fuzz_safetensors_SRC = csrc/io/safetensors.c $(FUZZ_CORE)
fuzz_json_SRC = csrc/io/safetensors.c $(FUZZ_CORE)
fuzz_rle_SRC = csrc/dense/rle.c csrc/core/status.c
.SECONDEXPANSION:
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $$(fuzz_$$*_SRC) $$(wildcard csrc/*/*.h)
	mkdir -p build/fuzz
	$(CLANG) $(FUZZ_CFLAGS) -o $@ $< $(fuzz_$*_SRC) -lm
fuzz: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
	set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus/$$t; echo "== fuzz_$$t ($(FUZZ_SECONDS) s)"; \
	  rc=0; (cd build/fuzz && ./fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -rss_limit_mb=2048 \
	    corpus/$$t $(CURDIR)/tests/fuzz/corpus/$$t > fuzz_$$t.log 2>&1) || rc=$$?; \
	  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::|ERROR|SUMMARY|artifact' build/fuzz/fuzz_$$t.log; \
	  test $$rc = 0; \
	done

# The portable build (DENSEMLLM_PORTABLE=1: -march=x86-64-v3, no AVX-512) in build/portable,
# a copy of the package beside it, and tests run against it: exercises the C fallbacks
# of the AVX-512 kernels on a machine that has AVX-512. PORTABLE_TESTS picks the files.
PORTABLE_TESTS ?= tests
portable-test: dev-check
	rm -rf build/portable && mkdir -p build/portable/pkg
	DENSEMLLM_PORTABLE=1 $(PY) setup.py -q build_ext --build-lib build/portable/lib --build-temp build/portable/tmp
	cp -r densemllm build/portable/pkg/ && rm -f build/portable/pkg/densemllm/_core*.so
	cp build/portable/lib/$(EXT) build/portable/pkg/$(EXT)
	cd build/portable/pkg && $(abspath $(PY)) -m pytest -q -p no:cacheprovider \
	  $(addprefix $(CURDIR)/,$(PORTABLE_TESTS))
