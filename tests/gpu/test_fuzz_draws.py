"""The GPU fuzz record's failures as regular cases (tests/results/2026-12-02-h200-fuzz.json): each draw of
tests/gpu/fuzz_record.py that once failed, on every GPU backend that accepts it, against the brute
force.  All 18 were cuDNN with a varlen sequence of no keys (rows left unwritten, now defined by
backends/cudnn/runner.py _define_rows_without_keys); the sequences of no keys are checked here on
every backend."""

import pytest

from attnplan.device import default_device

import fuzz_record
import test_fuzz

pytestmark = pytest.mark.gpu

FAILED_DRAWS = (367, 431, 753, 760, 917, 1673, 1722, 1744, 1966, 2020, 2167, 2170, 2991, 3153, 3544, 3603, 3604, 4159)


@pytest.mark.parametrize("number", FAILED_DRAWS)
def test_a_draw_that_once_failed(number):
    device = default_device()
    if device.kind != "cuda":
        pytest.skip("needs a CUDA GPU")
    desc, args, seed = fuzz_record.draw(number)
    ran = test_fuzz.check(desc, args, seed, device)
    assert "cudnn" in ran, (ran, desc)          # the backend that failed it takes it
