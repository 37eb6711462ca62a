"""backends/nvrtc/sm90a/tma.py: every documented cuTensorMapEncodeTiled rule accepted at its edge and
rejected one past it (naming the field), the maps of our attention layouts, and encode() against a
fake driver (argument order, returned bytes, the address check before any call)."""

from __future__ import annotations

import math
import struct
import types

import pytest

from attnplan.backends.nvrtc.sm90a import tma
from attnplan.backends.nvrtc.sm90a.tma import (DataType, Interleave, L2Promotion, OobFill, Swizzle, TensorMapError,
                                               attention_map, attention_maps, encode, tensor_map_params)

BF16 = DataType.BFLOAT16


def matrix(rows=64, cols=64, row_stride=None, **kwargs):
    """A row-major bf16 matrix map: dims (cols, rows), box (64, 64) unless given."""
    kwargs.setdefault("box", (64, 64))
    return tensor_map_params((rows, cols), (cols if row_stride is None else row_stride, 1), BF16, **kwargs)


def rejected(field: str, build):
    with pytest.raises(TensorMapError) as info:
        build()
    assert info.value.field == field and isinstance(info.value, ValueError)
    assert f"tensor map {field}=" in str(info.value) and "invalid" in str(info.value)
    return info.value


# -- Each rule: accepted at its edge, rejected one past it ----------------------------------------

def test_rank_is_one_to_five_and_three_with_interleave():
    assert tensor_map_params((16,), (1,), BF16, (16,)).rank == 1
    five = tensor_map_params((2, 2, 2, 2, 64), (256, 128, 64, 64, 1), BF16, (64, 1, 1, 1, 1))
    assert five.rank == 5 and five.global_dims == (64, 2, 2, 2, 2)
    rejected("rank", lambda: tensor_map_params((2,) * 5 + (64,), (64,) * 5 + (1,), BF16, (64,) + (1,) * 5))
    rejected("rank", lambda: tensor_map_params((), (), BF16, ()))
    three = tensor_map_params((4, 8, 16), (128, 16, 1), BF16, (16, 8, 1), Swizzle.NONE, interleave=Interleave.B16)
    assert three.interleave == Interleave.B16
    rejected("rank", lambda: matrix(swizzle=Swizzle.NONE, interleave=Interleave.B16))


def test_global_dims_are_one_to_two_to_the_32():
    assert matrix(rows=2**32, cols=64).global_dims == (64, 2**32)
    rejected("global_dims", lambda: matrix(rows=2**32 + 1))
    rejected("global_dims", lambda: matrix(rows=0))


def test_innermost_dimension_is_dense():
    assert matrix().global_strides_bytes == (128,)
    error = rejected("strides", lambda: tensor_map_params((64, 64), (128, 2), BF16, (64, 64)))
    assert "stride 1" in str(error)
    rejected("strides", lambda: tensor_map_params((64, 64), (64,), BF16, (64, 64)))
    rejected("dims", lambda: tensor_map_params((64, 64), (64, 1), BF16, (64, 64), dims=(1, 1)))


def test_strides_are_multiples_of_16_bytes_below_two_to_the_40():
    assert matrix(cols=8, row_stride=8, box=(8, 64)).global_strides_bytes == (16,)
    error = rejected("global_strides_bytes", lambda: matrix(cols=8, row_stride=9, box=(8, 64)))
    assert "(18,)" in str(error) and "multiple of 16" in str(error)
    top = 2**40 - 16                                          # bytes; bf16 elements are half that
    assert matrix(rows=2, row_stride=top // 2).global_strides_bytes == (top,)
    rejected("global_strides_bytes", lambda: matrix(rows=2, row_stride=2**39))


def test_interleave_32b_needs_32_byte_strides_and_the_32b_swizzle():
    def interleaved(stride, swizzle=Swizzle.B32):
        return tensor_map_params((4, 8, 16), (stride, 16, 1), BF16, (16, 8, 1), swizzle, interleave=Interleave.B32)
    assert interleaved(32).global_strides_bytes == (32, 64)
    rejected("global_strides_bytes", lambda: interleaved(24))                     # 48 bytes: a 16- not 32-multiple
    rejected("swizzle", lambda: interleaved(32, Swizzle.B128))


def test_box_dims_are_one_to_256():
    assert matrix(rows=512, box=(64, 256)).box_dims == (64, 256)
    rejected("box_dims", lambda: matrix(rows=512, box=(64, 257)))
    rejected("box_dims", lambda: matrix(box=(64, 0)))
    rejected("box_dims", lambda: matrix(box=(64,)))
    assert matrix(cols=512, box=(256, 1), swizzle=Swizzle.NONE).box_dims == (256, 1)


def test_inner_box_is_a_multiple_of_16_bytes():
    assert matrix(box=(8, 64)).box_dims == (8, 64)
    error = rejected("box_dims", lambda: matrix(box=(12, 64)))
    assert "24 bytes" in str(error)
    # With interleave the rule does not apply (the interleave sets the inner layout).
    three = tensor_map_params((4, 8, 16), (128, 16, 1), BF16, (12, 8, 1), Swizzle.NONE, interleave=Interleave.B16)
    assert three.box_dims[0] == 12


@pytest.mark.parametrize("swizzle, span", [(Swizzle.B32, 32), (Swizzle.B64, 64), (Swizzle.B128, 128)])
def test_inner_box_fits_the_swizzle_span(swizzle, span):
    assert matrix(box=(span // 2, 64), swizzle=swizzle).swizzle == swizzle
    error = rejected("box_dims", lambda: matrix(box=(span // 2 + 8, 64), swizzle=swizzle))
    assert f"{span} bytes for {swizzle.name}" in str(error)
    assert swizzle.span_bytes == span


def test_element_strides_are_one_to_eight():
    assert matrix(element_strides=(1, 8)).element_strides == (1, 8)
    rejected("element_strides", lambda: matrix(element_strides=(1, 9)))
    rejected("element_strides", lambda: matrix(element_strides=(0, 1)))
    rejected("element_strides", lambda: matrix(element_strides=(1,)))


def test_nan_fill_needs_a_float_type():
    assert matrix(oob_fill=OobFill.NAN_REQUEST_ZERO_FMA).oob_fill == OobFill.NAN_REQUEST_ZERO_FMA
    rejected("oob_fill", lambda: tensor_map_params((64, 64), (64, 1), DataType.UINT8, (64, 64),
                                                   oob_fill=OobFill.NAN_REQUEST_ZERO_FMA))


def test_box_bytes_count_what_a_load_writes():
    assert matrix().box_bytes == 64 * 64 * 2
    assert matrix(element_strides=(4, 2)).box_bytes == 64 * 32 * 2      # dim 0's stride is ignored
    assert tensor_map_params((64, 64), (64, 1), "e4m3", (64, 64)).box_bytes == 64 * 64


# -- The attention layouts -------------------------------------------------------------------------

SEQLENS = (1, 17, 113, 1023)
HEAD_DIMS = (64, 96, 128, 192, 256)


def expect_tile(m: tma.AttentionTensorMap, head_dim: int, rows: int, elem_bytes: int = 2):
    assert m.panel_columns == 128 // elem_bytes and m.params.swizzle == Swizzle.B128
    assert m.panels == math.ceil(head_dim / m.panel_columns)
    assert m.params.box_dims[0] * elem_bytes == 128 == Swizzle.B128.span_bytes
    assert m.box_rows * m.boxes_per_tile == rows
    assert m.tile_bytes == m.panels * m.panel_columns * rows * elem_bytes
    assert m.params.interleave == Interleave.NONE and m.params.oob_fill == OobFill.NONE    # zeros past the end
    assert m.params.l2_promotion == L2Promotion.B128 and m.params.element_strides == (1,) * m.params.rank


@pytest.mark.parametrize("seqlen", SEQLENS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_bshd_and_bhsd_maps(seqlen, head_dim):
    batch, heads, heads_kv, block_m, block_n = 2, 6, 2, 128, 64
    maps = attention_maps("bshd", (batch, seqlen, heads, head_dim), (batch, seqlen, heads_kv, head_dim),
                          (batch, seqlen, heads_kv, head_dim), "bf16", block_m, block_n)
    for role, h, rows in (("q", heads, block_m), ("k", heads_kv, block_n), ("v", heads_kv, block_n),
                          ("out", heads, block_m)):
        p = maps[role].params
        assert p.data_type == BF16 and p.rank == 4
        assert p.global_dims == (head_dim, seqlen, h, batch)
        assert p.global_strides_bytes == (h * head_dim * 2, head_dim * 2, seqlen * h * head_dim * 2)
        assert p.box_dims == (64, rows, 1, 1)
        expect_tile(maps[role], head_dim, rows)
    bhsd = attention_map("bhsd", (batch, heads, seqlen, head_dim), "f16", block_m).params
    assert bhsd.data_type == DataType.FLOAT16 and bhsd.global_dims == (head_dim, seqlen, heads, batch)
    assert bhsd.global_strides_bytes == (head_dim * 2, seqlen * head_dim * 2, heads * seqlen * head_dim * 2)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_thd_maps(head_dim):
    total, heads, block = sum(SEQLENS), 4, 128
    m = attention_map("thd", (total, heads, head_dim), "bf16", block)
    assert m.params.rank == 3 and m.params.global_dims == (head_dim, total, heads)
    assert m.params.global_strides_bytes == (heads * head_dim * 2, head_dim * 2)
    assert m.params.box_dims == (64, block, 1)
    expect_tile(m, head_dim, block)


@pytest.mark.parametrize("page_size, box_rows, boxes", [(16, 16, 8), (64, 64, 2), (128, 128, 1), (256, 128, 1)])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_paged_maps(page_size, box_rows, boxes, head_dim):
    pages, heads_kv, block_n = 37, 2, 128
    maps = attention_maps("bshd", (3, 113, 8, head_dim), (pages, page_size, heads_kv, head_dim),
                          (pages, page_size, heads_kv, head_dim), "bf16", 128, block_n, paged=True)
    for role in ("k", "v"):
        m = maps[role]
        assert m.params.global_dims == (head_dim, page_size, heads_kv, pages)
        assert m.params.global_strides_bytes == (heads_kv * head_dim * 2, head_dim * 2,
                                                 page_size * heads_kv * head_dim * 2)
        assert m.params.box_dims == (64, box_rows, 1, 1) and (m.box_rows, m.boxes_per_tile) == (box_rows, boxes)
        expect_tile(m, head_dim, block_n)
    assert maps["q"].params.global_dims == (head_dim, 113, 8, 3)


def test_pages_must_divide_or_be_multiples_of_the_tile():
    rejected("page_size", lambda: attention_map("paged", (8, 96, 2, 128), "bf16", 64))
    rejected("page_size", lambda: attention_map("paged", (8, 48, 2, 128), "bf16", 128))


def test_maps_of_other_types_and_strides():
    fp8 = attention_map("bshd", (1, 17, 2, 128), "e4m3", 128)
    assert fp8.params.data_type == DataType.UINT8 and fp8.panel_columns == 128 and fp8.panels == 1
    small = attention_map("bshd", (1, 17, 2, 32), "bf16", 128)            # a 64-byte row: the 64B swizzle
    assert small.params.swizzle == Swizzle.B64 and small.params.box_dims == (32, 128, 1, 1) and small.panels == 1
    heads, head_dim = 4, 128                                              # q sliced from a packed qkv tensor
    packed = attention_map("bshd", (2, 113, heads, head_dim), "bf16", 128,
                           strides=(113 * 3 * heads * head_dim, 3 * heads * head_dim, head_dim, 1))
    assert packed.params.global_strides_bytes == (3 * heads * head_dim * 2, head_dim * 2,
                                                  113 * 3 * heads * head_dim * 2)
    rejected("global_strides_bytes", lambda: attention_map("bshd", (1, 17, 2, 100), "bf16", 128))
    rejected("layout", lambda: attention_map("sbhd", (1, 17, 2, 64), "bf16", 128))
    rejected("dtype", lambda: attention_map("bshd", (1, 17, 2, 64), "int4", 128))
    rejected("shape", lambda: attention_map("thd", (1, 17, 2, 64), "bf16", 128))
    out = attention_maps("thd", (50, 4, 128), (50, 2, 128), (50, 2, 64), "e4m3", 128, 128, out_dtype="bf16")["out"]
    assert out.params.data_type == BF16 and out.params.global_dims == (64, 50, 4)


# -- encode() --------------------------------------------------------------------------------------

DRIVER_ARGUMENTS = ("tensorDataType", "tensorRank", "globalAddress", "globalDim", "globalStrides", "boxDim",
                    "elementStrides", "interleave", "swizzle", "l2Promotion", "oobFill")


class FakeDriver:
    """Stands in for cuda.bindings.driver: enum constructors tag their value, the call is recorded."""

    CUresult = types.SimpleNamespace(CUDA_SUCCESS="success")

    def __init__(self, result="success", words=tuple(range(0x1000, 0x1010))):
        self.calls, self.result, self.words = [], result, words
        for enum_name in ("CUtensorMapDataType", "CUtensorMapInterleave", "CUtensorMapSwizzle",
                          "CUtensorMapL2promotion", "CUtensorMapFloatOOBfill"):
            setattr(self, enum_name, lambda value, enum_name=enum_name: (enum_name, value))

    def cuTensorMapEncodeTiled(self, *args):
        self.calls.append(args)
        return self.result, types.SimpleNamespace(opaque=list(self.words))


def test_encode_passes_the_driver_argument_order_and_returns_its_bytes():
    params = attention_map("bshd", (2, 113, 6, 192), "bf16", 128).params
    driver = FakeDriver()
    blob = encode(params, 0x7F00_0000_1000, driver=driver)
    assert blob == struct.pack("<16Q", *range(0x1000, 0x1010)) and len(blob) == tma.TENSOR_MAP_BYTES
    (args,) = driver.calls
    assert len(args) == len(DRIVER_ARGUMENTS)
    assert args == (("CUtensorMapDataType", 9), 4, 0x7F00_0000_1000, [192, 113, 6, 2],
                    [6 * 192 * 2, 192 * 2, 113 * 6 * 192 * 2], [64, 128, 1, 1], [1, 1, 1, 1],
                    ("CUtensorMapInterleave", 0), ("CUtensorMapSwizzle", 3), ("CUtensorMapL2promotion", 2),
                    ("CUtensorMapFloatOOBfill", 0))


def test_encode_refuses_an_unaligned_address_before_the_driver():
    driver = FakeDriver()
    rejected("global_address", lambda: encode(matrix(), 0x1008, driver=driver))
    interleaved = tensor_map_params((4, 8, 16), (128, 16, 1), BF16, (16, 8, 1), Swizzle.B32,
                                    interleave=Interleave.B32)
    rejected("global_address", lambda: encode(interleaved, 0x1010, driver=driver))
    assert driver.calls == []
    encode(interleaved, 0x1020, driver=driver)
    assert len(driver.calls) == 1


def test_encode_reports_a_driver_failure():
    with pytest.raises(tma.TensorMapEncodeFailed, match="CUDA_ERROR_INVALID_VALUE"):
        encode(matrix(), 0x1000, driver=FakeDriver(result="CUDA_ERROR_INVALID_VALUE"))


def test_our_enums_and_argument_order_are_cuda_pythons():
    driver = pytest.importorskip("cuda.bindings.driver")
    signature = driver.cuTensorMapEncodeTiled.__doc__.split("(", 1)[1].split(")", 1)[0]
    assert tuple(part.split(":")[0].strip() for part in signature.split(",")) == DRIVER_ARGUMENTS
    def driver_name(member) -> str:             # B128 -> 128B; the L2 promotions add "L2_"
        if not (member.name[0] == "B" and member.name[1:].isdigit()):
            return member.name
        return ("L2_" if isinstance(member, L2Promotion) else "") + member.name[1:] + "B"
    for ours, theirs, prefix in ((DataType, driver.CUtensorMapDataType, "CU_TENSOR_MAP_DATA_TYPE_"),
                                 (Interleave, driver.CUtensorMapInterleave, "CU_TENSOR_MAP_INTERLEAVE_"),
                                 (Swizzle, driver.CUtensorMapSwizzle, "CU_TENSOR_MAP_SWIZZLE_"),
                                 (L2Promotion, driver.CUtensorMapL2promotion, "CU_TENSOR_MAP_L2_PROMOTION_"),
                                 (OobFill, driver.CUtensorMapFloatOOBfill, "CU_TENSOR_MAP_FLOAT_OOB_FILL_")):
        for member in ours:
            assert int(getattr(theirs, prefix + driver_name(member))) == member
    assert int(driver.CU_TENSOR_MAP_NUM_QWORDS) * 8 == tma.TENSOR_MAP_BYTES
