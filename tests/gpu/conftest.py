"""GPU tests: marked `gpu`, skipped cleanly when no CUDA device (or no CuPy) is present."""

import sys
from pathlib import Path

import pytest

from attnplan.device import default_device


# The GPU tests share helpers with the CPU suite (brute_force.py, torch_block.py) in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _has_gpu() -> bool:
    return default_device().kind == "cuda"


def pytest_configure(config):
    # Registered here too: CI runs a copy of tests/ without pyproject.toml beside it.
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    present = _has_gpu()
    skip = pytest.mark.skip(reason="no CUDA device present")
    for item in items:
        if "tests/gpu" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if not present:
                item.add_marker(skip)
