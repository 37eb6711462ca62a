"""Parameter structs with opaque fields (a CUtensorMap: 128 bytes, 64-byte aligned): the Python
layout (offsets, alignment, size), the host packing, and the generated C struct, which NVRTC
compiles with static_asserts of the Python offsets and size."""

from __future__ import annotations

import ctypes
import struct

import pytest

from attnplan.backends.nvrtc import params, sm80
from attnplan.errors import KernelCompileError

TENSOR_MAP = params.Opaque(128, 64)
LAYOUT = params.StructLayout("TmaParams", [("q", "ptr"), ("flag", "i64"), ("tensor_map", TENSOR_MAP),
                                           ("scale", "f64"), ("tag", params.Opaque(4, 4))])


def test_offsets_alignment_and_size_follow_the_c_rules():
    assert LAYOUT.offsets == {"q": 0, "flag": 8, "tensor_map": 64, "scale": 192, "tag": 200}
    assert LAYOUT.alignment == 64
    assert LAYOUT.size == 256                       # 204 bytes of fields, rounded up to the 64-byte alignment
    made = LAYOUT.struct_class()
    assert ctypes.sizeof(made) == 256
    assert {name: getattr(made, name).offset for name in LAYOUT.offsets} == LAYOUT.offsets
    assert "  alignas(64) unsigned char tensor_map[128];" in LAYOUT.c_struct().splitlines()


def test_packing_puts_the_raw_bytes_at_their_offset_and_zeroes_the_padding():
    raw = bytes(range(128))
    block = bytes(LAYOUT.pack({"q": 0x1000, "flag": -1, "tensor_map": raw, "scale": 0.5, "tag": b"abcd"}))
    assert struct.unpack_from("<Qq", block, 0) == (0x1000, -1)
    assert block[16:64] == bytes(48) and block[64:192] == raw
    assert struct.unpack_from("<d", block, 192) == (0.5,) and block[200:204] == b"abcd" and block[204:] == bytes(52)
    with pytest.raises(ValueError, match="tensor_map: 127 bytes given, the field holds 128"):
        LAYOUT.pack({"tensor_map": raw[:-1]})
    with pytest.raises(KeyError, match="unknown"):
        LAYOUT.pack({"not_a_field": 1})


def test_a_param_block_fills_opaque_fields_per_call():
    block = params.ParamBlock(LAYOUT, {"flag": 3, "scale": 2.0}, ("q", "tensor_map"))
    per_call = {"q": 64, "tensor_map": bytes([7]) * 128}
    assert bytes(block.fill(per_call)) == bytes(LAYOUT.pack({"flag": 3, "scale": 2.0, **per_call}))


def test_the_sm80_structs_are_unchanged_eight_byte_fields():
    for direction, name in (("forward", "FwdParams"), ("backward", "BwdParams")):
        layout = sm80.GENERATION.module(direction).params
        assert layout is params.STANDARD[direction] and layout.name == name
        assert list(layout.offsets.values()) == [8 * i for i in range(len(layout.fields))]
        assert layout.size == 8 * len(layout.fields) and "alignas" not in layout.c_struct()
        assert params.c_struct(direction) == layout.c_struct()


def _layout_checks(layout: params.StructLayout, offsets: dict, size: int) -> str:
    """The C struct, then static_asserts of `offsets` / `size`, then a kernel that takes the struct."""
    lines = [layout.c_struct()]
    lines += [f'static_assert(__builtin_offsetof({layout.name}, {name}) == {offset}, "offset of {name}");'
              for name, offset in offsets.items()]
    lines.append(f'static_assert(sizeof({layout.name}) == {size}, "size");')
    lines.append(f'static_assert(alignof({layout.name}) == {layout.alignment}, "alignment");')
    lines.append(f'extern "C" __global__ void check_kernel(const __grid_constant__ {layout.name} p) {{}}')
    return "\n".join(lines) + "\n"


def _nvrtc():
    compiler = pytest.importorskip("attnplan.backends.nvrtc.compiler")
    try:
        compiler.nvrtc_version()
    except compiler.NvrtcUnavailable as exc:
        pytest.skip(f"NVRTC unavailable: {exc}")
    return compiler


@pytest.mark.parametrize("layout", [LAYOUT, params.STANDARD["forward"], params.STANDARD["backward"],
                                    params.STANDARD["forward"].extended([("tensor_map", TENSOR_MAP)])],
                         ids=lambda layout: f"{layout.name}-{len(layout.fields)}")
def test_nvrtc_agrees_with_the_python_layout(layout):
    compiler = _nvrtc()
    cubin, _ = compiler.compile_source(_layout_checks(layout, layout.offsets, layout.size), "layout_check",
                                       ["-std=c++17", "--gpu-architecture=sm_90"])
    assert cubin[:4] == b"\x7fELF"


def test_the_layout_check_would_catch_a_wrong_offset():
    compiler = _nvrtc()
    wrong = dict(LAYOUT.offsets, tensor_map=16)       # where 8-byte packing would have put it
    with pytest.raises(KernelCompileError, match="offset of tensor_map"):
        compiler.compile_source(_layout_checks(LAYOUT, wrong, LAYOUT.size), "layout_check",
                                ["-std=c++17", "--gpu-architecture=sm_90"])
