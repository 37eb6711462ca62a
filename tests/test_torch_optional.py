"""PyTorch is optional: `import attnplan` never imports it and works without it; `attnplan.torch`
says what it needs."""

import subprocess
import sys

WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None                     # as if PyTorch were not installed
import numpy as np
import attnplan
q = np.random.default_rng(0).standard_normal((1, 4, 2, 8))
assert attnplan.attention(q, q, q, causal=True).shape == (1, 4, 2, 8)
try:
    import attnplan.torch
except ModuleNotFoundError as error:
    print("refused:", error)
"""


def test_attnplan_imports_and_runs_without_torch():
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: attnplan.torch needs PyTorch" in done.stdout


def test_importing_attnplan_does_not_import_torch():
    check = "import sys, attnplan, attnplan.api, attnplan.descriptor; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
