"""kernels/sm90a/layouts.cuh (and tile_scheduler.cuh) against the PTX ISA's tables, restated here.

tests/sm90a_host/dump_layouts.cpp, built with g++, prints every index function as JSON; each test
compares one of them with an independent statement of the ISA ("Asynchronous Warpgroup Level Matrix
Multiply-Accumulate Instructions": the register-fragment figures, "Shared Memory Matrix Layout" and
its swizzle-atom table, "Matrix Descriptor Format") or with brute-force properties.  The last test
compiles the header for sm_90a with NVRTC, so the same functions are known to be device code.
"""

from __future__ import annotations

import collections

import pytest

from sm90a_host.nvrtc_sm90a import compile_sm90a, host_dump

WIDTHS = (64, 96, 128, 192, 256)
ELEM_BYTES = 2
TILE_COLUMNS = 128  # the tile width dump_layouts.cpp uses (a 128-element head dim)
SPAN = {0: 16, 1: 32, 2: 64, 3: 128}  # swizzle mode (log2(span / 16)) -> span in bytes


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> dict:
    return host_dump("dump_layouts", tmp_path_factory.mktemp("sm90a_layouts"))


# -- The ISA's register-fragment figures, restated ---------------------------------------------------

def isa_accumulator(n: int) -> dict:
    """(thread, reg) -> (row, col): figure "WGMMA .m64nNk16 register fragment layout for accumulator
    matrix D".  Warp w covers rows 16w..16w+15; each 8-column block j is one m16n8 C fragment:
    d[4j], d[4j+1] in row lane/4 at columns 2(lane%4), +1; d[4j+2], d[4j+3] eight rows lower."""
    layout = {}
    for warp in range(4):
        for lane in range(32):
            row, col = 16 * warp + lane // 4, 2 * (lane % 4)
            for block in range(n // 8):
                for i, (dr, dc) in enumerate(((0, 0), (0, 1), (8, 0), (8, 1))):
                    layout[(32 * warp + lane, 4 * block + i)] = (row + dr, 8 * block + col + dc)
    return layout


def cute_accumulator(n: int) -> dict:
    """The same layout as CUTLASS states it (CLayout_64xN, cute/atom/mma_traits_sm90_gmma.hpp):
    ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)) onto a column-major 64 x N matrix."""
    layout = {}
    for thread in range(128):
        t0, t1, t2 = thread % 4, thread // 4 % 8, thread // 32
        for reg in range(n // 2):
            v0, v1, v2 = reg % 2, reg // 2 % 2, reg // 4
            index = 128 * t0 + t1 + 16 * t2 + 64 * v0 + 8 * v1 + 512 * v2
            layout[(thread, reg)] = (index % 64, index // 64)
    return layout


def isa_a_fragment() -> dict:
    """(thread, reg, half) -> (row, k): figure "WGMMA .m64nNk16 register fragment layout for matrix A",
    per warp the mma.m16n8k16 A fragment: a0,a1 (g, 2t..2t+1), a2,a3 (g+8, ..), a4,a5 (g, 2t+8..),
    a6,a7 (g+8, 2t+8..); register r holds a_{2r} (low half) and a_{2r+1}."""
    offsets = ((0, 0), (0, 1), (8, 0), (8, 1), (0, 8), (0, 9), (8, 8), (8, 9))
    layout = {}
    for thread in range(128):
        lane = thread % 32
        g, t = lane // 4, lane % 4
        for element, (dr, dk) in enumerate(offsets):
            layout[(thread, element // 2, element % 2)] = (16 * (thread // 32) + g + dr, 2 * t + dk)
    return layout


@pytest.mark.parametrize("n", WIDTHS)
def test_accumulator_layout_is_the_isa_figure(dump, n):
    coords = dump["accumulator"][str(n)]["coord"]
    ours = {(thread, reg): tuple(coords[thread * (n // 2) + reg]) for thread in range(128) for reg in range(n // 2)}
    assert ours == isa_accumulator(n) == cute_accumulator(n)
    assert sorted(ours.values()) == [(row, col) for row in range(64) for col in range(n)]   # a bijection onto 64 x N
    for (thread, _), (row, _) in ours.items():
        assert row // 16 == thread // 32                    # warp w owns rows 16w..16w+15


@pytest.mark.parametrize("n", WIDTHS)
def test_accumulator_owner_is_the_inverse(dump, n):
    coords, owners = dump["accumulator"][str(n)]["coord"], dump["accumulator"][str(n)]["owner"]
    for row in range(64):
        for col in range(n):
            thread, reg = owners[row * n + col]
            assert 0 <= reg < n // 2 and tuple(coords[thread * (n // 2) + reg]) == (row, col)


def test_a_fragment_layout_is_the_isa_figure(dump):
    ours = {(thread, reg, half): tuple(dump["a_fragment"][(thread * 4 + reg) * 2 + half])
            for thread in range(128) for reg in range(4) for half in range(2)}
    assert ours == isa_a_fragment()
    assert sorted(ours.values()) == [(row, k) for row in range(64) for k in range(16)]


@pytest.mark.parametrize("block_n", (64, 128, 176))
def test_p_relayout_keeps_every_element_in_its_thread(dump, block_n):
    """A register r, half h of k-step kk of O += P V must hold the S element at the same (row, key):
    the dumped source register of S, looked up in the accumulator figure, gives that coordinate."""
    sources, accumulator, a_fragment = dump["p_source"][str(block_n)], isa_accumulator(block_n), isa_a_fragment()
    assert len(sources) == block_n // 16 * 8
    for thread in range(128):
        for k_step in range(block_n // 16):
            for reg in range(4):
                for half in range(2):
                    source = sources[(k_step * 4 + reg) * 2 + half]
                    row, k = a_fragment[(thread, reg, half)]
                    assert accumulator[(thread, source)] == (row, 16 * k_step + k)
    assert sorted(sources) == list(range(block_n // 2))     # every S register is used once


# -- Swizzles --------------------------------------------------------------------------------------

def isa_swizzle(mode: int, address: int) -> int:
    """The swizzle as the TMA and wgmma pattern tables draw it: in rows of `span` bytes, the 16-byte
    chunk c of row r moves to chunk c ^ ((r / (128 / span)) % (span / 16)); the pattern repeats every
    8 rows (1024, 512, 256 bytes for 128B, 64B, 32B)."""
    span = SPAN[mode]
    row, chunk, byte = address // span, address % span // 16, address % 16
    return row * span + (chunk ^ (row // (128 // span) % (span // 16))) * 16 + byte


@pytest.mark.parametrize("mode", sorted(SPAN))
def test_swizzle_matches_the_xor_rule_and_the_pattern_table(dump, mode):
    entry, span = dump["swizzle"][str(mode)], SPAN[mode]
    assert entry["span"] == span and entry["atom"] == 8 * span
    addresses = range(0, 4096, 16)
    swizzled = dict(zip(addresses, entry["address"]))
    mask = (1 << mode) - 1
    for address, moved in swizzled.items():
        assert moved == address ^ (((address >> 7) & mask) << 4)     # bits [4, 4+b) ^= bits [7, 7+b)
        assert moved == isa_swizzle(mode, address)
        assert moved // span == address // span                     # a chunk never leaves its row
    for atom in range(0, 4096, 8 * span):                            # a bijection within every atom
        inside = [a for a in addresses if atom <= a < atom + 8 * span]
        assert sorted(swizzled[a] for a in inside) == inside
    if mode == 3:
        assert [swizzled[a] for a in range(0, 128, 16)] == list(range(0, 128, 16))     # row 0 unchanged
        assert [swizzled[128 + a] for a in range(0, 128, 16)] == [128 + (c ^ 1) * 16 for c in range(8)]


def isa_tile_offset(mode: int, rows: int, row: int, col: int) -> int:
    span = SPAN[mode]
    panel, inside = divmod(col * ELEM_BYTES, span)
    return isa_swizzle(mode, panel * rows * span + row * span + inside)


@pytest.mark.parametrize("mode", sorted(SPAN))
@pytest.mark.parametrize("rows", (64, 128))
def test_tile_is_span_wide_panels_swizzled(dump, mode, rows):
    offsets = dump["swizzle"][str(mode)]["tile"][str(rows)]
    assert offsets == [isa_tile_offset(mode, rows, row, col) for row in range(rows) for col in range(TILE_COLUMNS)]
    assert sorted(offsets) == list(range(0, rows * TILE_COLUMNS * ELEM_BYTES, ELEM_BYTES))


# -- Matrix descriptors ----------------------------------------------------------------------------

DESCRIPTOR_CODE = {0: 0, 3: 1, 2: 2, 1: 3}       # "Matrix Descriptor Format": 0 none, 1 128B, 2 64B, 3 32B


def isa_descriptor(start, lbo, sbo, base, mode) -> int:
    encode = lambda x: (x & 0x3FFFF) >> 4       # matrix-descriptor-encode(x)
    return encode(start) | encode(lbo) << 16 | encode(sbo) << 32 | (base & 7) << 49 | DESCRIPTOR_CODE[mode] << 62


def test_descriptor_fields_sit_at_the_documented_bits(dump):
    assert dump["bits"] == {"start": 0, "lbo": 16, "sbo": 32, "base": 49, "swizzle": 62}
    singles = {(16, 0, 0, 0, 0): 1, (0, 16, 0, 0, 0): 1 << 16, (0, 0, 16, 0, 0): 1 << 32,
               (0, 0, 0, 1, 3): 1 << 49 | 1 << 62, (0, 0, 0, 0, 1): 3 << 62, (0, 0, 0, 0, 2): 2 << 62,
               (0, 0, 0, 0, 3): 1 << 62, (0, 0, 0, 0, 0): 0}
    seen = set()
    for case in dump["encoded"]:
        f = case["fields"]
        values = (f["start"], f["lbo"], f["sbo"], f["base"], f["swizzle"])
        assert case["descriptor"] == isa_descriptor(*values)
        assert case["decoded"] == f                                 # the packing round-trips
        if values in singles:
            assert case["descriptor"] == singles[values]
            seen.add(values)
        if f["start"] == f["lbo"] == f["sbo"] == 0x3FFF0:           # 14-bit fields, nothing outside them
            desc = case["descriptor"]
            assert (desc >> 0) & 0xFFFF == (desc >> 16) & 0xFFFF == (desc >> 32) & 0xFFFF == 0x3FFF
            assert desc & ~(0x3FFF | 0x3FFF << 16 | 0x3FFF << 32 | 7 << 49 | 3 << 62) == 0
    assert seen == set(singles)


def test_base_offset_formula(dump):
    for mode, address, base in dump["base_offset"]:
        assert base == (0 if mode == 0 else (address >> 7) & 7)      # (pattern start addr >> 0x7) & 0x7


def isa_operand_address(desc: int, mn_major: bool, mn: int, k: int) -> int:
    """The byte wgmma reads for element (mn, k) of an operand, from the descriptor's bits and the
    canonical layouts, counted in 16-byte cells as the ISA's swizzle-atom table does: K-major atoms
    are 8 MN-rows x W K-cells, MN-major atoms W MN-cells x 8 K-rows, W = span / 16.  Atoms repeat with
    the strides: K-major MN by SBO, K by LBO; MN-major swizzled MN by LBO, K by SBO; MN-major
    without swizzle MN by SBO, K by LBO."""
    start, lbo, sbo = ((desc >> shift & 0x3FFF) << 4 for shift in (0, 16, 32))
    mode = {code: m for m, code in DESCRIPTOR_CODE.items()}[desc >> 62 & 3]
    span = SPAN[mode]
    cells = span // 16
    if mn_major:
        cell, byte = divmod(mn * ELEM_BYTES, 16)
        mn_stride, k_stride = (sbo, lbo) if mode == 0 else (lbo, sbo)
        linear = (cell // cells) * mn_stride + (k // 8) * k_stride + (k % 8) * span + (cell % cells) * 16 + byte
    else:
        cell, byte = divmod(k * ELEM_BYTES, 16)
        linear = (mn // 8) * sbo + (cell // cells) * lbo + (mn % 8) * span + (cell % cells) * 16 + byte
    address = start + linear
    return address - address % 1024 + isa_swizzle(mode, address % 1024)


def test_descriptors_read_back_exactly_the_tile(dump):
    """For every swizzle, major-ness, tile height and k-step, the descriptor (tile fields advanced by
    the k-step offset) makes wgmma read each (mn, k) from where tile_offset() put that element, and
    the fields are the ISA's: SBO = 8 rows of a span; LBO unused (16) for swizzled K-major."""
    cases = dump["operands"]
    assert len({(c["swizzle"], c["mn_major"], c["rows"]) for c in cases}) == 16
    for case in cases:
        mode, rows, mn_major, k_step = case["swizzle"], case["rows"], bool(case["mn_major"]), case["k_step"]
        span, tile, fields = SPAN[mode], case["tile_address"], case["tile_fields"]
        if mn_major:
            expected = (8 * 16, 16 * rows) if mode == 0 else (span * rows, 8 * span)
        else:
            expected = (16 * rows, 8 * 16) if mode == 0 else (16, 8 * span)
        assert (fields["lbo"], fields["sbo"], fields["base"], fields["start"]) == (*expected, 0, tile)
        assert case["descriptor"] == isa_descriptor(tile + case["advance"], *expected, 0, mode)
        mn_extent = TILE_COLUMNS if mn_major else rows
        for mn in range(mn_extent):
            for k in range(16):
                row, col = (16 * k_step + k, mn) if mn_major else (mn, 16 * k_step + k)
                want = tile + isa_tile_offset(mode, rows, row, col)
                got = case["address"][mn * 16 + k]
                assert got == want == isa_operand_address(case["descriptor"], mn_major, mn, k), (case["k_step"], mn, k)


def test_k_step_advance_of_a_128b_k_major_tile(dump):
    advances = collections.defaultdict(dict)
    for case in dump["operands"]:
        if case["swizzle"] == 3 and not case["mn_major"]:
            advances[case["rows"]][case["k_step"]] = case["advance"]
    # Four 32-byte k-steps per 128-byte span, then the next 64-column panel (rows x 128 bytes on).
    assert [advances[64][k] for k in range(8)] == [0, 32, 64, 96, 8192, 8224, 8256, 8288]
    assert [advances[128][k] for k in range(8)] == [0, 32, 64, 96, 16384, 16416, 16448, 16480]


# -- The persistent tile order ---------------------------------------------------------------------

@pytest.mark.parametrize("case", range(9))
def test_schedule_is_a_permutation_longest_first_within_l2_waves(dump, case):
    entry = dump["schedule"][case]
    m_blocks, heads, batch, per_wave = entry["m_blocks"], entry["heads"], entry["batch"], entry["pairs_per_wave"]
    order = [tuple(item) for item in entry["order"]]
    assert sorted(order) == sorted((m, h, b) for m in range(m_blocks) for h in range(heads) for b in range(batch))
    pairs = [(p % heads, p // heads) for p in range(heads * batch)]
    expected = []
    for first in range(0, len(pairs), per_wave):
        wave = pairs[first:first + per_wave]
        expected += [(m, h, b) for m in reversed(range(m_blocks)) for h, b in wave]
    assert order == expected
    position = 0
    for first in range(0, len(pairs), per_wave):                   # each wave: its own pairs only,
        wave = set(pairs[first:first + per_wave])                  # causal work (m + 1) never grows
        items = order[position:position + len(wave) * m_blocks]
        position += len(items)
        assert {(h, b) for _, h, b in items} == wave
        work = [m + 1 for m, _, _ in items]
        assert work == sorted(work, reverse=True) and work[-1] == 1
    if per_wave >= heads * batch:                                  # one wave: longest first overall
        work = [m + 1 for m, _, _ in order]
        assert work == sorted(work, reverse=True)


def test_l2_wave_pairs(dump):
    for l2, seqlen, head_dim, elem_bytes, group, pairs in dump["l2_wave_pairs"]:
        assert pairs == max(1, l2 // (2 * seqlen * head_dim * elem_bytes)) * group


# -- Device compilation ----------------------------------------------------------------------------

def test_layouts_compile_as_device_code_for_sm90a():
    source = r'''
#include "sm90a/layouts.cuh"
using namespace attn::sm90a;
static_assert(p_source_register(1, 3, 1) == 15, "constexpr in device code");
extern "C" __global__ void layouts_probe(int* out, unsigned long long* desc, int index) {
  const int t = threadIdx.x;
  const RowCol acc = accumulator_coord(t, index);
  const ThreadReg owner = accumulator_owner(acc.row, acc.col);
  const RowCol a = a_fragment_coord(t, index & 3, index & 1);
  const WorkTile tile = work_tile(index, 8, 16, 2, l2_wave_pairs(50ll << 20, 4096, 128, 2, 4));
  out[t] = acc.row + acc.col + owner.thread + owner.reg + a.row + a.col + tile.m_block + tile.head + tile.batch +
           static_cast<int>(tile_offset(Swizzle::k128B, 64, t, index, 2));
  desc[t] = descriptor_advance(encode_descriptor(k_major_tile_fields(Swizzle::k128B, 1024u * index, 64)),
                               k_major_k_step_offset(Swizzle::k128B, 64, t & 7));
}
'''
    cubin, log = compile_sm90a(source, "layouts_probe")
    assert cubin[:4] == b"\x7fELF" and log == ""
