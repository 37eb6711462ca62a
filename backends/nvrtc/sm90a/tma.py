"""TMA tensor maps for the sm_90a kernels: the parameters of `cuTensorMapEncodeTiled` as a pure,
checked function, the maps of our attention layouts, and `encode`, the one call into the driver.

`tensor_map_params` turns a tensor (shape and strides in elements, as NumPy or PyTorch report them),
the box one load brings and the swizzle into `TensorMapParams`, enforcing every rule the driver API
reference gives for cuTensorMapEncodeTiled; a broken rule raises `TensorMapError` naming the field,
the value and the rule, before any driver is involved.  `attention_map` / `attention_maps` give the
q, k, v and out maps of the bshd, bhsd, thd (varlen) and paged layouts for a tile: `block_rows` rows
by 64-element (128-byte) column panels with the 128-byte swizzle that the wgmma descriptors of
kernels/sm90a/layouts.cuh describe.  `encode` checks the address and calls the driver (cuda-python's
`cuda.bindings.driver`, imported only then; tests pass a fake).

Packed sub-byte types (16U4, 16U6) and the 128B_ATOM swizzles are left out: no kernel of ours uses
them, and their extra rules are not modelled.
"""

from __future__ import annotations

import enum
import math
import functools
import struct
from typing import Optional, Sequence

import attrs

from attnplan.errors import AttnPlanError

MAX_RANK = 5
MAX_GLOBAL_DIM = 2**32          # "globalDim ... must be non-zero and less than or equal to 2^32"
STRIDE_LIMIT = 2**40            # "globalStrides ... must be a multiple of 16 and less than 2^40"
MAX_BOX_DIM = 256               # "boxDim ... must be non-zero and less than or equal to 256"
MAX_ELEMENT_STRIDE = 8          # "elementStrides ... must be non-zero and less than or equal to 8"
TENSOR_MAP_BYTES = 128          # sizeof(CUtensorMap): 16 64-bit words, 64-byte aligned
PANEL_BYTES = 128               # the column panel of our tiles: one 128-byte swizzle span


class TensorMapError(AttnPlanError, ValueError):
    """A tensor-map parameter breaks a rule of cuTensorMapEncodeTiled (or of our tile layouts)."""

    def __init__(self, field: str, value, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"tensor map {field}={value!r} is invalid: {rule}")


class TensorMapEncodeFailed(AttnPlanError, RuntimeError):
    """The driver refused parameters that passed our checks; carries its CUresult."""


class DataType(enum.IntEnum):
    """CUtensorMapDataType (the values are the driver's)."""

    UINT8 = 0
    UINT16 = 1
    UINT32 = 2
    INT32 = 3
    UINT64 = 4
    INT64 = 5
    FLOAT16 = 6
    FLOAT32 = 7
    FLOAT64 = 8
    BFLOAT16 = 9
    FLOAT32_FTZ = 10
    TFLOAT32 = 11
    TFLOAT32_FTZ = 12

    @property
    def element_bytes(self) -> int:
        return _ELEMENT_BYTES[self]

    @property
    def is_float(self) -> bool:
        return self >= DataType.FLOAT16


_ELEMENT_BYTES = {DataType.UINT8: 1, DataType.UINT16: 2, DataType.UINT32: 4, DataType.INT32: 4, DataType.UINT64: 8,
                  DataType.INT64: 8, DataType.FLOAT16: 2, DataType.FLOAT32: 4, DataType.FLOAT64: 8,
                  DataType.BFLOAT16: 2, DataType.FLOAT32_FTZ: 4, DataType.TFLOAT32: 4, DataType.TFLOAT32_FTZ: 4}

# attnplan's dtype names -> the map's type: fp8 moves as bytes (Hopper TMA has no fp8 type).
DATA_TYPES = {"f16": DataType.FLOAT16, "bf16": DataType.BFLOAT16, "f32": DataType.FLOAT32,
              "f64": DataType.FLOAT64, "e4m3": DataType.UINT8, "e5m2": DataType.UINT8}


class Interleave(enum.IntEnum):
    """CUtensorMapInterleave."""

    NONE = 0
    B16 = 1
    B32 = 2


class Swizzle(enum.IntEnum):
    """CUtensorMapSwizzle; the same numbering as attn::sm90a::Swizzle in kernels/sm90a/layouts.cuh."""

    NONE = 0
    B32 = 1
    B64 = 2
    B128 = 3

    @property
    def span_bytes(self) -> Optional[int]:
        """The inner box dimension's limit in bytes (None: no swizzle, no limit)."""
        return None if self == Swizzle.NONE else 16 << self


class L2Promotion(enum.IntEnum):
    """CUtensorMapL2promotion."""

    NONE = 0
    B64 = 1
    B128 = 2
    B256 = 3


class OobFill(enum.IntEnum):
    """CUtensorMapFloatOOBfill: NONE fills out-of-bound elements with zeros."""

    NONE = 0
    NAN_REQUEST_ZERO_FMA = 1


@attrs.frozen
class TensorMapParams:
    """The arguments of cuTensorMapEncodeTiled but the address, dimensions innermost first."""

    data_type: DataType
    rank: int
    global_dims: tuple
    global_strides_bytes: tuple     # dims 1 .. rank-1 (dim 0 is dense)
    box_dims: tuple
    element_strides: tuple
    interleave: Interleave
    swizzle: Swizzle
    l2_promotion: L2Promotion
    oob_fill: OobFill

    @property
    def element_bytes(self) -> int:
        return self.data_type.element_bytes

    @property
    def box_bytes(self) -> int:
        """Bytes one load writes to shared memory (its mbarrier expect_tx count): ceil(box / element
        stride) elements per dimension, dimension 0 whole when there is no interleave (its stride is
        ignored then); out-of-bound elements are filled, so they count."""
        counts = [math.ceil(box / stride) for box, stride in zip(self.box_dims, self.element_strides)]
        if self.interleave == Interleave.NONE:
            counts[0] = self.box_dims[0]
        return math.prod(counts) * self.element_bytes


def _check_each(field: str, values: Sequence[int], low: int, high: int, rule: str) -> None:
    for value in values:
        if not low <= value <= high:
            raise TensorMapError(field, tuple(values), rule)


def _check_rank(rank: int, interleave: Interleave) -> None:
    if not 1 <= rank <= MAX_RANK:
        raise TensorMapError("rank", rank, f"1 to {MAX_RANK} dimensions")
    if interleave != Interleave.NONE and rank < 3:
        raise TensorMapError("rank", rank, "at least 3 dimensions with an interleaved layout")


def _check_strides(strides: Sequence[int], interleave: Interleave) -> None:
    multiple = 32 if interleave == Interleave.B32 else 16
    for stride in strides:
        if stride % multiple or not 0 <= stride < STRIDE_LIMIT:
            raise TensorMapError("global_strides_bytes", tuple(strides),
                                 f"each a multiple of {multiple} bytes below 2^40"
                                 + (" (32 with 32-byte interleave)" if multiple == 32 else ""))


def _check_box(box: Sequence[int], rank: int, element_bytes: int, interleave: Interleave, swizzle: Swizzle) -> None:
    if len(box) != rank:
        raise TensorMapError("box_dims", tuple(box), f"one entry per dimension ({rank})")
    _check_each("box_dims", box, 1, MAX_BOX_DIM, f"each 1 to {MAX_BOX_DIM} elements")
    inner = box[0] * element_bytes
    if interleave == Interleave.NONE:
        if inner % 16:
            raise TensorMapError("box_dims", tuple(box),
                                 f"box_dims[0] * element size ({inner} bytes) must be a multiple of 16 bytes")
        if swizzle.span_bytes is not None and inner > swizzle.span_bytes:
            raise TensorMapError("box_dims", tuple(box),
                                 f"box_dims[0] * element size ({inner} bytes) must be at most the swizzle span "
                                 f"({swizzle.span_bytes} bytes for {swizzle.name})")


def _check_modes(data_type: DataType, interleave: Interleave, swizzle: Swizzle, oob_fill: OobFill) -> None:
    if interleave == Interleave.B32 and swizzle != Swizzle.B32:
        raise TensorMapError("swizzle", swizzle.name, "32-byte interleave requires the 32-byte swizzle")
    if oob_fill == OobFill.NAN_REQUEST_ZERO_FMA and not data_type.is_float:
        raise TensorMapError("oob_fill", oob_fill.name, f"NaN fill needs a floating-point type, not {data_type.name}")


def tensor_map_params(shape: Sequence[int], strides: Sequence[int], data_type, box: Sequence[int],
                      swizzle: Swizzle = Swizzle.B128, *, dims: Optional[Sequence[int]] = None,
                      element_strides: Optional[Sequence[int]] = None, interleave: Interleave = Interleave.NONE,
                      l2_promotion: L2Promotion = L2Promotion.B128, oob_fill: OobFill = OobFill.NONE
                      ) -> TensorMapParams:
    """Checked cuTensorMapEncodeTiled parameters for a tensor of `shape` with `strides` (elements,
    outermost axis first, as NumPy and PyTorch report them).  `dims` names the array axis of each map
    dimension, innermost first (default: the axes reversed); the first must be the dense one (stride
    1).  `box` and `element_strides` are per map dimension.  `data_type`: a DataType or one of
    attnplan's dtype names."""
    data_type = DATA_TYPES[data_type] if isinstance(data_type, str) else DataType(data_type)
    interleave, swizzle = Interleave(interleave), Swizzle(swizzle)
    l2_promotion, oob_fill = L2Promotion(l2_promotion), OobFill(oob_fill)
    shape, strides = tuple(int(s) for s in shape), tuple(int(s) for s in strides)
    if len(strides) != len(shape):
        raise TensorMapError("strides", strides, f"one stride per axis of shape {shape}")
    dims = tuple(reversed(range(len(shape)))) if dims is None else tuple(int(d) for d in dims)
    if sorted(dims) != list(range(len(shape))):
        raise TensorMapError("dims", dims, f"each axis of shape {shape} exactly once")
    rank = len(dims)
    _check_rank(rank, interleave)
    global_dims = tuple(shape[axis] for axis in dims)
    _check_each("global_dims", global_dims, 1, MAX_GLOBAL_DIM, "each 1 to 2^32 elements")
    if strides[dims[0]] != 1:
        raise TensorMapError("strides", strides,
                             f"the innermost map dimension (axis {dims[0]}) must be dense: stride 1 element")
    global_strides = tuple(strides[axis] * data_type.element_bytes for axis in dims[1:])
    _check_strides(global_strides, interleave)
    _check_box(tuple(box), rank, data_type.element_bytes, interleave, swizzle)
    element_strides = (1,) * rank if element_strides is None else tuple(element_strides)
    if len(element_strides) != rank:
        raise TensorMapError("element_strides", element_strides, f"one entry per dimension ({rank})")
    _check_each("element_strides", element_strides, 1, MAX_ELEMENT_STRIDE, f"each 1 to {MAX_ELEMENT_STRIDE}")
    _check_modes(data_type, interleave, swizzle, oob_fill)
    return TensorMapParams(data_type=data_type, rank=rank, global_dims=global_dims,
                           global_strides_bytes=global_strides, box_dims=tuple(int(b) for b in box),
                           element_strides=element_strides, interleave=interleave, swizzle=swizzle,
                           l2_promotion=l2_promotion, oob_fill=oob_fill)


# -- The maps of our attention layouts -----------------------------------------------------------------

# Layout -> the array axes of the map's dims (head_dim, rows, heads, batch), innermost first.
#   bshd  [batch, seqlen, heads, head_dim]        -> (head_dim, seqlen, heads, batch)
#   bhsd  [batch, heads, seqlen, head_dim]        -> (head_dim, seqlen, heads, batch)
#   thd   [total_tokens, heads, head_dim]         -> (head_dim, total_tokens, heads)
#   paged [pages, page_size, heads_kv, head_dim]  -> (head_dim, page_size, heads_kv, pages)
LAYOUT_DIMS = {"bshd": (3, 1, 2, 0), "bhsd": (3, 2, 1, 0), "thd": (2, 0, 1), "paged": (3, 1, 2, 0)}


@attrs.frozen
class AttentionTensorMap:
    """One operand's map and how a tile of `block_rows` rows x the whole head dim is loaded with it:
    `panels` boxes of `panel_columns` columns across the head dim (columns past it are filled with
    zeros) times `boxes_per_tile` boxes of `box_rows` rows down (more than one only for pages
    smaller than the tile).  Coordinates of a box: (panel * panel_columns, row, head, batch or page)."""

    params: TensorMapParams
    panels: int
    panel_columns: int
    box_rows: int
    boxes_per_tile: int

    @property
    def tile_bytes(self) -> int:
        """Shared-memory bytes of one tile: the transaction bytes its loads complete."""
        return self.panels * self.boxes_per_tile * self.params.box_bytes


def _dense_strides(shape: Sequence[int]) -> tuple:
    strides, running = [], 1
    for extent in reversed(shape):
        strides.append(running)
        running *= extent
    return tuple(reversed(strides))


def attention_map(layout: str, shape: Sequence[int], dtype: str, block_rows: int,
                  strides: Optional[Sequence[int]] = None) -> AttentionTensorMap:
    """The map of one attention operand (q, k, v or out) of `layout` ('bshd', 'bhsd', 'thd' or
    'paged' for a paged KV cache) with array `shape` (and `strides` in elements, dense by default),
    for tiles of `block_rows` rows.  The box is (panel, rows, 1, 1): panels of 128 bytes (64 16-bit
    elements, the 128-byte swizzle) when the head dim fills one, else of the smallest span that holds
    it; rows = block_rows, or the page size when a page is smaller than the tile.

    Varlen (thd): a tile's rows run on into the next sequence, not out of bounds, so loads must be
    masked by the kernel and out must not be written by a TMA store of a partial tile."""
    if layout not in LAYOUT_DIMS:
        raise TensorMapError("layout", layout, f"one of {', '.join(LAYOUT_DIMS)}")
    dims = LAYOUT_DIMS[layout]
    if len(shape) != len(dims):
        raise TensorMapError("shape", tuple(shape), f"{len(dims)} axes for layout {layout!r}")
    if dtype not in DATA_TYPES:
        raise TensorMapError("dtype", dtype, f"one of {', '.join(DATA_TYPES)}")
    data_type = DATA_TYPES[dtype]
    head_dim = shape[dims[0]]
    row_bytes = head_dim * data_type.element_bytes
    panel_bytes = PANEL_BYTES if row_bytes >= PANEL_BYTES else max(32, 1 << (row_bytes - 1).bit_length())
    panel_columns = panel_bytes // data_type.element_bytes
    box_rows, boxes = block_rows, 1
    if layout == "paged":       # a tile must not straddle a page boundary inside one box
        page_size = shape[dims[1]]
        if block_rows % page_size and page_size % block_rows:
            raise TensorMapError("page_size", page_size, f"a divisor or a multiple of the tile's {block_rows} rows")
        if page_size < block_rows:
            box_rows, boxes = page_size, block_rows // page_size
    box = (panel_columns, box_rows) + (1,) * (len(dims) - 2)
    swizzle = Swizzle(panel_bytes.bit_length() - 5)             # 32 B -> B32 ... 128 B -> B128
    params = tensor_map_params(shape, _dense_strides(shape) if strides is None else strides, data_type, box, swizzle,
                               dims=dims)
    return AttentionTensorMap(params=params, panels=math.ceil(head_dim / panel_columns), panel_columns=panel_columns,
                              box_rows=box_rows, boxes_per_tile=boxes)


def attention_maps(layout: str, q_shape, k_shape, v_shape, dtype: str, block_m: int, block_n: int,
                   out_dtype: Optional[str] = None, paged: bool = False) -> dict:
    """{"q", "k", "v", "out"} -> AttentionTensorMap for dense arrays: q and out in tiles of block_m
    rows, k and v in tiles of block_n (a paged KV cache: k_shape and v_shape are the caches)."""
    kv_layout = "paged" if paged else layout
    out_shape = tuple(q_shape[:-1]) + (v_shape[-1],)
    return {"q": attention_map(layout, q_shape, dtype, block_m),
            "k": attention_map(kv_layout, k_shape, dtype, block_n),
            "v": attention_map(kv_layout, v_shape, dtype, block_n),
            "out": attention_map(layout, out_shape, out_dtype or dtype, block_m)}


# -- The driver ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _driver():
    """cuda-python's driver module, initialised once (cuTensorMapEncodeTiled needs cuInit)."""
    try:
        from cuda.bindings import driver
    except ImportError:       # cuda-python 12 before the cuda.bindings layout
        from cuda import cuda as driver
    (result,) = driver.cuInit(0)
    if result != driver.CUresult.CUDA_SUCCESS:
        raise TensorMapEncodeFailed(f"cuInit failed ({result})")
    return driver


def encode(params: TensorMapParams, global_address: int, driver=None) -> bytes:
    """The 128 bytes of the CUtensorMap for `params` at `global_address` (a device pointer), from
    cuTensorMapEncodeTiled; `driver` stands in for cuda-python's `cuda.bindings.driver`."""
    alignment = 32 if params.interleave == Interleave.B32 else 16
    if global_address % alignment:
        raise TensorMapError("global_address", hex(global_address),
                             f"{alignment}-byte aligned" + (" with 32-byte interleave" if alignment == 32 else ""))
    driver = _driver() if driver is None else driver
    # cuda-bindings 13 takes the sizes as cuuint64_t / cuuint32_t values, not ints ("Cannot convert int
    # to cuda.bindings.driver.cuuint32_t"); a driver without those types gets the ints as they are.
    u64, u32 = getattr(driver, "cuuint64_t", int), getattr(driver, "cuuint32_t", int)
    result, tensor_map = driver.cuTensorMapEncodeTiled(
        driver.CUtensorMapDataType(int(params.data_type)), u32(params.rank), global_address,
        [u64(x) for x in params.global_dims], [u64(x) for x in params.global_strides_bytes],
        [u32(x) for x in params.box_dims], [u32(x) for x in params.element_strides],
        driver.CUtensorMapInterleave(int(params.interleave)), driver.CUtensorMapSwizzle(int(params.swizzle)),
        driver.CUtensorMapL2promotion(int(params.l2_promotion)), driver.CUtensorMapFloatOOBfill(int(params.oob_fill)))
    if result != driver.CUresult.CUDA_SUCCESS:
        raise TensorMapEncodeFailed(f"cuTensorMapEncodeTiled failed ({result}) for {params}")
    words = [int(word) for word in tensor_map.opaque]
    return struct.pack(f"<{len(words)}Q", *words)
