"""Runs tests/jax_cases.py (JAX arrays in and out) in a fresh process: a process that has imported JAX
is multithreaded, and the rest of the suite forks (the kernel compile pool)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


def test_jax_round_trip_cases_pass_in_their_own_process():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed")
    cases = Path(__file__).with_name("jax_cases.py")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(cases)],
                          capture_output=True, text=True, cwd=cases.parent, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]
