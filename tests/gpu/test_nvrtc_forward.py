"""The NVRTC sm80 forward kernels against the float64 reference, FlashAttention's rule."""

import pytest

from cases import forward_cases
from support import check_forward, seed_for

CASES = forward_cases()


@pytest.mark.parametrize("desc", [d for _, d in CASES], ids=[n for n, _ in CASES])
def test_forward_matches_reference(desc):
    errors = check_forward(desc, "nvrtc", seed=seed_for(desc))
    assert errors["out"] < 0.05      # and never wildly off, whatever the baseline
