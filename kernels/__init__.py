"""CUDA C++ sources of attnplan's kernels, shipped as package data."""

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
