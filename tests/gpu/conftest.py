"""GPU tests: marked `gpu`, skipped cleanly when no CUDA device (or no CuPy) is present."""

import pytest

from attnplan.device import default_device


def _has_gpu() -> bool:
    return default_device().kind == "cuda"


def pytest_collection_modifyitems(config, items):
    present = _has_gpu()
    skip = pytest.mark.skip(reason="no CUDA device present")
    for item in items:
        if "tests/gpu" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if not present:
                item.add_marker(skip)
