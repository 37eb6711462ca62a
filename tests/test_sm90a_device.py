"""On an sm_90 GPU only (marked gpu, skipped elsewhere): the hardware's own check of the sm90a
foundations.  tests/sm90a_host/probe_main.cu runs the probe kernels (TMA 128B-swizzled loads read by
wgmma through our descriptors, V N-major, P re-laid in registers, stmatrix and a TMA store, partly
out-of-bounds boxes) against a host reference; tests/sm90a_host/driver_check.py encodes every
attention map of tma.py with the real driver and checks that the driver enforces the rules tma.py
enforces."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnplan.device import default_device
from attnplan.kernels import SOURCE_DIR

pytestmark = pytest.mark.gpu
HOST_DIR = Path(__file__).parent / "sm90a_host"


@pytest.fixture(scope="module")
def hopper():
    device = default_device()
    if device.kind != "cuda" or device.arch != 90:
        pytest.skip("needs an sm_90 GPU")


def test_probe_kernels_compute_attention_tiles_on_the_gpu(hopper, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    binary = tmp_path / "probe"
    # -gencode, not -arch=sm_90a: nvcc 13.0's shorthand also runs a plain sm_90 pass that rejects wgmma.
    subprocess.run([nvcc, "-std=c++17", "-O2", "-gencode", "arch=compute_90a,code=sm_90a", f"-I{SOURCE_DIR}",
                    "-o", str(binary), str(HOST_DIR / "probe_main.cu"), "-lcuda"], check=True)
    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ALL PASS" in done.stdout, done.stdout + done.stderr


def test_the_driver_enforces_what_tma_py_enforces(hopper):
    done = subprocess.run([sys.executable, str(HOST_DIR / "driver_check.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "ALL AGREE" in done.stdout, done.stdout + done.stderr
