"""What to install for a missing optional part, in words that work: attnplan is installed from a
checkout (it is not on PyPI), so a hint names the extra as `pip install -e '.[extra]'` and the
packages that extra brings (pyproject.toml [project.optional-dependencies])."""

from __future__ import annotations

# The packages each extra installs (kept to the ones a user would install by hand).
EXTRA_PACKAGES = {
    "cuda13": "cupy-cuda13x cuda-python nvidia-cuda-nvrtc nvidia-cudnn-frontend nvidia-cudnn-cu13",
    "cuda12": "cupy-cuda12x cuda-python nvidia-cuda-nvrtc-cu12 nvidia-cudnn-frontend nvidia-cudnn-cu12",
    "nvrtc": "cuda-python nvidia-cuda-nvrtc nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm",
    "bench": "matplotlib rich",
}


def install_hint(*extras: str) -> str:
    """"from the attnplan checkout: pip install -e '.[cuda13]' (or '.[cuda12]'); or pip install cupy-cuda13x ..."."""
    first, *others = extras
    checkout = f"pip install -e '.[{first}]'" + "".join(f" (or '.[{e}]')" for e in others)
    return f"from the attnplan checkout: {checkout}; or pip install {EXTRA_PACKAGES[first]}"
