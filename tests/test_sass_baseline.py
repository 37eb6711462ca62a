"""The refactor guard: the sm80 generation's SASS fingerprints (registers, shared memory, stack,
spills, opcode histogram of every kernel) on the `ci` compile matrix of bench/sass_fingerprint.py
equal tests/data/sm80_sass_baseline.json, made from the CUDA sources before the generation refactor:

    python bench/sass_fingerprint.py --kernels-dir <copy of kernels/> --matrix ci -o tests/data/sm80_sass_baseline.json

A change that is meant to change the code regenerates the baseline in the same commit and says why."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "data" / "sm80_sass_baseline.json"
SCRIPT = HERE.parent / "bench" / "sass_fingerprint.py"


@pytest.fixture(scope="module")
def sass():
    if not SCRIPT.is_file():        # the tests run from outside a source tree (an installed wheel)
        pytest.skip(f"{SCRIPT} is not beside the tests")
    # Imported by name from its folder: the compile workers unpickle its functions by that name.
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module(SCRIPT.stem)
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_differences_name_every_change(sass):
    fingerprint = {"registers": 96, "shared_bytes": 1024, "stack_bytes": 0, "spill_bytes": 0,
                   "opcodes": {"HMMA.16816.F32.BF16": 64, "NOP": 3}}
    baseline = {"_meta": {"nvrtc": "13.5"}, "key_a": {"attn_fwd_kernel": fingerprint}, "key_b": {}}
    changed = {**fingerprint, "registers": 98, "opcodes": {"HMMA.16816.F32.BF16": 64, "LDL": 2}}
    current = {"key_a": {"attn_fwd_kernel": changed, "extra_kernel": fingerprint}, "key_c": {}}
    assert sass.differences(baseline, current) == [
        "key_a: attn_fwd_kernel: registers 96 -> 98",
        "key_a: attn_fwd_kernel: LDL 0 -> 2",
        "key_a: attn_fwd_kernel: NOP 3 -> 0",
        "key_a: extra_kernel: new kernel",
        "key_b: missing key",
        "key_c: new key"]
    assert sass.differences(baseline, {k: v for k, v in baseline.items() if k != "_meta"}) == []


def test_live_kernels_match_the_pre_refactor_baseline(sass):
    from attnplan.backends.nvrtc import compiler
    from attnplan.kernel_inspect import InspectToolMissing, tool_path
    try:
        made_with = compiler.nvrtc_version()
        for tool in ("cuobjdump", "nvdisasm"):
            tool_path(tool)
    except (compiler.NvrtcUnavailable, InspectToolMissing) as exc:
        pytest.skip(str(exc))
    baseline = json.loads(BASELINE.read_text())
    if baseline["_meta"]["nvrtc"] != made_with:
        pytest.skip(f"the baseline's SASS is NVRTC {baseline['_meta']['nvrtc']}'s, this is NVRTC {made_with}")
    keys = sass.MATRICES[baseline["_meta"]["matrix"]]()
    found = sass.differences(baseline, sass.fingerprints(keys))
    assert not found, f"{len(found)} SASS differences from {BASELINE.name}:\n" + "\n".join(found)
