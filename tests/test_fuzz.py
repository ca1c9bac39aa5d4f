"""Bounded fuzzing of the C parsers in the test suite (issue: reliability).

Each libFuzzer harness of tests/fuzz/ (safetensors header + loader, its JSON grammar,
the RLE grammar) is built with gcc + ASan + UBSan against tests/fuzz/driver.c, a
mutational driver that needs no clang, and run from its committed seeds for
FUZZ_TEST_SECONDS (default 10 s per target). Not coverage guided: the coverage-guided
run is `make fuzz` (libFuzzer; docs/build.md). The sources of each target are read from
the Makefile, the one place they are listed. A self-test builds a harness with a planted
out-of-bounds read and checks that the driver finds and reports it.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"
SECONDS = float(os.environ.get("FUZZ_TEST_SECONDS", "10"))
CFLAGS = ["-g", "-O1", "-std=c11", "-D_GNU_SOURCE", f"-I{ROOT / 'csrc'}", "-Wno-unknown-pragmas",
          "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def makefile_sources():
    text = (ROOT / "Makefile").read_text()
    core = re.search(r"^FUZZ_CORE = (.+)$", text, re.M).group(1).split()
    targets = re.search(r"^FUZZ_TARGETS = (.+)$", text, re.M).group(1).split()
    out = {}
    for t in targets:
        src = re.search(rf"^fuzz_{t}_SRC = (.+)$", text, re.M).group(1).split()
        out[t] = [core_file for s in src for core_file in (core if s == "$(FUZZ_CORE)" else [s])]
    return out


TARGETS = makefile_sources()


def plain_env(**extra):
    # Under `make asan-test` this process runs with libasan preloaded and the suite's
    # sanitizer options; gcc and the driver (which links its own runtime) must not inherit them.
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONMALLOC")}
    return dict(env, **extra)


def build(tmp_path, name, harness, sources):
    exe = tmp_path / f"fuzz_{name}"
    cmd = ["gcc", *CFLAGS, "-o", str(exe), str(harness), str(FUZZ / "driver.c"),
           *(str(ROOT / s) for s in sources), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=plain_env())
    assert r.returncode == 0, r.stderr
    return exe


def run(exe, corpus, seconds, seed=1):
    env = plain_env(ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    return subprocess.run([str(exe), str(seconds), str(seed), str(corpus)], capture_output=True, text=True,
                          cwd=exe.parent, env=env, timeout=seconds + 120)


pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the fuzz harnesses")


def test_makefile_lists_every_harness():
    harnesses = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.c"))
    assert sorted(TARGETS) == harnesses
    for t in TARGETS:
        assert any((FUZZ / "corpus" / t).iterdir()), f"no seeds for {t}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_bounded_fuzz(tmp_path, target):
    exe = build(tmp_path, target, FUZZ / f"fuzz_{target}.c", TARGETS[target])
    r = run(exe, FUZZ / "corpus" / target, SECONDS)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    execs = int(re.search(r"(\d+) executions, no crash", r.stdout).group(1))
    assert execs > 1000, r.stdout  # the driver really ran mutations, not only the seeds
    print(f"fuzz_{target}: {r.stdout.strip()}")


def test_driver_finds_a_planted_bug(tmp_path):
    # A parser that reads one byte past its input after the prefix "{\"a" - reachable from
    # the seed "{}" by a few mutations: the driver must report it and save the input.
    harness = tmp_path / "planted.c"
    harness.write_text("""
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
    if (n >= 2 && d[0] == '{' && d[1] == '"') return d[n];  /* off by one */
    return 0;
}
""")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "s").write_bytes(b'{}')
    exe = build(tmp_path, "planted", harness, [])
    r = run(exe, seeds, 60)
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr, (r.stdout + r.stderr)[-2000:]
    crash = (tmp_path / "crash-input").read_bytes()
    assert crash[:2] == b'{"'
