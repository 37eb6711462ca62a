"""The package as installed: sub-packages mapped from backends/ and kernels/ are importable and
the CUDA sources ship with it."""

import os
from pathlib import Path

import pytest

import attnplan
import attnplan.backends.reference
import attnplan.kernels


def test_kernel_sources_ship_with_the_package():
    sources = attnplan.kernels.SOURCE_DIR
    assert (sources / "mask.cuh").is_file()
    assert (sources / "sm80" / "fwd.cu").is_file()


def test_installed_copy_is_used_when_ci_says_so():
    if os.environ.get("ATTNPLAN_EXPECT_INSTALLED") != "1":
        pytest.skip("only when CI tests the installed wheel")
    beside_the_tests = (Path(__file__).resolve().parents[1] / "attnplan").resolve()
    assert "site-packages" in attnplan.__file__
    assert Path(attnplan.__file__).resolve().parent != beside_the_tests


def test_cli_entry_point_parses():
    from attnplan.cli import build_parser
    args = build_parser().parse_args(["run", "--causal", "--window", "8", "0", "--dtype", "f16"])
    assert args.causal and tuple(args.window) == (8, 0) and args.dtype == "f16"
