"""Suite-wide checks."""
import os

import pytest

import densemllm


def pytest_report_header(config):
    info = densemllm.build_info()
    return [f"densemllm core: {densemllm._core.__file__}",
            f"oneDNN {info['onednn']} [{info['onednn_isa']}], {info['openblas']}, threads={info['threads']}"]


def pytest_sessionstart(session):
    # `make asan-test` sets this: make sure the sanitized copy is what the tests import,
    # so a green run cannot come from the ordinary build by accident.
    if os.environ.get("DENSEMLLM_EXPECT_SANITIZED") == "1":
        path = densemllm._core.__file__
        if os.sep + os.path.join("build", "asan", "pkg") + os.sep not in path:
            raise RuntimeError(f"asan-test imported an unsanitized extension: {path}")


def pytest_collection_modifyitems(config, items):
    # Under `make asan-test` the process's RSS is ASan's (redzones, a 256 MB quarantine of
    # freed blocks): the `rss` tests measure our allocator's footprint and run in the
    # ordinary suite only.
    if os.environ.get("DENSEMLLM_EXPECT_SANITIZED") == "1":
        skip = pytest.mark.skip(reason="peak-RSS measurement; run in the unsanitized suite")
        for item in items:
            if "rss" in item.keywords:
                item.add_marker(skip)
