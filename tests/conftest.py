"""Suite-wide checks."""
import os

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
