"""The sm90a forward generation without a GPU: kernels/sm90a/fwd.cu and its Python side.

- The index math (fwd_layout.cuh, fragment.cuh), printed by tests/sm90a_host/dump_fwd.cpp (g++):
  the wgmma accumulator's fragment coordinates are the mma.m16n8 C layout the shared mask and
  softmax assume; every wgmma operand element is read from the byte its TMA box wrote; the output is
  staged where its TMA store box reads, inside the consumer's own Q rows; the shared-memory regions
  are disjoint, aligned and sized as tiles.py says; the mbarrier ring, simulated, never deadlocks,
  overwrites a buffer in use or hands a consumer the wrong tile.
- A compile matrix (f16 / bf16 x d 64 / 128 / 256 x causal x each mask feature): every kernel
  compiles with NVRTC for sm_90a, cleanly, in under 20 s, and its SASS has the promised HGMMA shapes
  and TMA loads / stores, register reallocation, no local memory, registers within the setmaxnreg
  budgets, shared memory within 227 KB.
- The host plumbing: the parameter block with its four maps, the grid, map encoding through a fake
  driver (what it is asked, what lands in the block, what is cached), stride checks.
- The planner: unverified, the generation is rejected with its gate's reason unless opted in; what
  it declines, it declines with reasons.
"""

from __future__ import annotations

import ctypes
import json
import math
import random
import re
import struct
import time
import types
from pathlib import Path

import attrs
import ml_dtypes
import numpy as np
import pytest

from attnplan import AttentionDescriptor, PagedKV, Plan, explain, registry
from attnplan.arguments import bind_arguments, lse_shape
from attnplan.device import Device
from attnplan.errors import InvalidArguments
from attnplan.interop import wrap_storage
from attnplan.kernel_inspect import inspect_cubin

compiler = pytest.importorskip("attnplan.backends.nvrtc.compiler")
from attnplan.backends.nvrtc import sm90a  # noqa: E402
from attnplan.backends.nvrtc.backend import NvrtcBackend  # noqa: E402
from attnplan.backends.nvrtc.dispatch import TileConfig  # noqa: E402
from attnplan.backends.nvrtc.generation import verified_rungs  # noqa: E402
from attnplan.backends.nvrtc.sm90a import runner as sm90a_runner, tiles, tma  # noqa: E402
from sm90a_host.nvrtc_sm90a import compile_and_read, host_dump, sass_by_function  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SM90 = Device.cuda(arch=90)
NAME = "nvrtc.sm90a"
COMPILE_SECONDS = 20          # per kernel, on the 2-core CI machine
SPAN = 128


def nvrtc_or_skip():
    try:
        compiler.nvrtc_version()
    except compiler.NvrtcUnavailable as exc:  # pragma: no cover - CI installs NVRTC
        pytest.skip(f"NVRTC unavailable: {exc}")


# -- the index math ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> dict:
    return host_dump("dump_fwd", tmp_path_factory.mktemp("sm90a_fwd"))


def swizzle_128b(offset: int) -> int:
    """The 128-byte swizzle TMA applies within an atom: 16-byte chunk bits [4, 7) ^= row bits [7, 10)."""
    return offset ^ (((offset >> 7) & 7) << 4)


def tma_box_byte(rows: int, row: int, col: int) -> int:
    """Where a tile loaded as one (64-column, `rows`-row) 128B-swizzled TMA box per panel, panel after
    panel, holds element (row, col): restated from cuTensorMapEncodeTiled's swizzle, not layouts.cuh."""
    panel, within = divmod(col, 64)
    return panel * rows * SPAN + swizzle_128b(row * SPAN + within * 2)


def test_fragment_coordinates_are_the_mma_c_layout(dump):
    for thread, nt, e, query, key, row, col in dump["fragment"]["entries"]:
        warp, lane = divmod(thread, 32)
        g, t = divmod(lane, 4)
        assert (query, key) == (row, col)                       # WgmmaRowsC is accumulator_coord
        assert (row, col) == (16 * warp + g + 8 * (e >> 1), 8 * nt + 2 * t + (e & 1))   # the m16n8 C layout
    for thread, (first, second) in enumerate(dump["fragment"]["softmax_rows"]):
        warp, lane = divmod(thread, 32)
        assert (first, second) == (16 * warp + lane // 4, 16 * warp + lane // 4 + 8)


def test_a_rows_elements_live_in_one_quad(dump):
    """The softmax reduces a row over the four threads of a quad (lanes 4g .. 4g+3)."""
    owners = {}
    for thread, nt, e, query, key, _, _ in dump["fragment"]["entries"]:
        owners.setdefault(query, set()).add(thread)
    for query, threads in owners.items():
        assert len(threads) == 4 and max(threads) - min(threads) == 3 and min(threads) % 4 == 0, (query, threads)


def _config(dump, block_m, block_n, head_dim, stages, head_dim_v):
    return next(c for c in dump["configs"] if (c["block_m"], c["block_n"], c["head_dim"], c["stages"], c["head_dim_v"])
                == (block_m, block_n, head_dim, stages, head_dim_v))


# (block_m, block_n, head_dim, stages, head_dim_v): the tiles the kernels use and a few more
CONFIGS = [(128, 128, 64, 2, 64), (128, 128, 128, 2, 128), (128, 64, 256, 2, 256), (128, 128, 128, 3, 128),
           (128, 64, 64, 1, 64), (192, 128, 64, 2, 64), (128, 176, 128, 2, 128), (128, 80, 256, 2, 256),
           (128, 160, 64, 2, 64), (128, 112, 192, 2, 192), (128, 128, 192, 2, 128)]
CONFIG_ARGS = "block_m, block_n, head_dim, stages, head_dim_v"


@pytest.mark.parametrize(CONFIG_ARGS, CONFIGS)
def test_every_wgmma_operand_element_is_read_where_tma_wrote_it(dump, block_m, block_n, head_dim, stages, head_dim_v):
    c = _config(dump, block_m, block_n, head_dim, stages, head_dim_v)
    for consumer in range(block_m // 64):
        read = c[f"q_read_{consumer}"]
        expected = [c["q"] + tma_box_byte(block_m, 64 * consumer + row, col)
                    for row in range(64) for col in range(head_dim)]
        assert read == expected, f"Q, consumer {consumer}"
    assert c["k_read"] == [tma_box_byte(block_n, key, col) for key in range(block_n) for col in range(head_dim)]
    assert c["v_read"] == [tma_box_byte(block_n, key, col) for col in range(head_dim_v) for key in range(block_n)]
    assert [p for p, _ in c["q_panels"]] == [p * block_m * SPAN for p in range(head_dim // 64)]
    assert [column for _, column in c["q_panels"]] == [64 * p for p in range(head_dim // 64)]
    assert c["kv_panels"] == [p * block_n * SPAN for p in range(head_dim // 64)]
    assert c["v_box_panels"] == [p * block_n * SPAN for p in range(head_dim_v // 64)]
    assert (c["panels"], c["v_panels"]) == (head_dim // 64, head_dim_v // 64)


@pytest.mark.parametrize(CONFIG_ARGS, CONFIGS)
def test_output_is_staged_where_its_store_box_reads_in_the_consumers_own_rows(dump, block_m, block_n, head_dim,
                                                                              stages, head_dim_v):
    c = _config(dump, block_m, block_n, head_dim, stages, head_dim_v)
    consumers = block_m // 64
    for consumer in range(consumers):
        staging, sources = c[f"staging_{consumer}"], c[f"store_source_{consumer}"]
        own = set(c[f"q_read_{consumer}"])
        assert set(staging) <= own                                   # inside the consumer's Q bytes
        assert len(sources) == head_dim_v // 64
        for index, at in enumerate(staging):
            row, col = divmod(index, head_dim_v)
            panel, within = divmod(col, 64)
            assert at == sources[panel] + swizzle_128b(row * SPAN + within * 2)   # a (64, 64) box's layout
            assert sources[panel] % 1024 == 0
        others = {b for other in range(consumers) if other != consumer for a in c[f"q_read_{other}"] for b in (a, a + 1)}
        assert not others & {b for a in staging for b in (a, a + 1)}
        assert len(set(staging)) == 64 * head_dim_v
        if head_dim_v == head_dim:
            assert staging == c[f"q_read_{consumer}"]               # exactly the consumer's Q bytes


@pytest.mark.parametrize(CONFIG_ARGS, CONFIGS)
def test_shared_memory_regions(dump, block_m, block_n, head_dim, stages, head_dim_v):
    c = _config(dump, block_m, block_n, head_dim, stages, head_dim_v)
    assert c["bytes"] == tiles.shared_memory_bytes(head_dim, block_m, block_n, stages, head_dim_v=head_dim_v)
    assert c["q_bytes"] == block_m * head_dim * 2
    assert (c["k_tile_bytes"], c["v_tile_bytes"]) == (block_n * head_dim * 2, block_n * head_dim_v * 2)
    regions = ([(c["q"], c["q_bytes"])] + [(at, c["k_tile_bytes"]) for at in c["k_tiles"]]
               + [(at, c["v_tile_bytes"]) for at in c["v_tiles"]])
    regions.append((c["barriers"], 8 * c["num_barriers"]))
    regions.append((c["work_slot"], 4))
    for (start, size), (next_start, _) in zip(regions, regions[1:]):
        assert start + size <= next_start
    assert all(start % 1024 == 0 for start, _ in regions[:-2])
    assert c["work_slot"] + 8 + 1024 <= c["bytes"]                                # the alignment slack
    assert sorted(c["barrier_index"]) == list(range(2 + 4 * stages))


def test_chosen_tiles_fit_and_follow_the_rung_and_features():
    def chosen(head_dim, rung="overlap", **extra):
        desc = AttentionDescriptor(batch=1, seqlen_q=128, seqlen_kv=128, heads_q=1, heads_kv=1, head_dim=head_dim,
                                   **extra)
        t = tiles.choose_tiles(desc, 90, rung)
        assert t.num_warps == 4 * (1 + t.block_m // 64)
        assert tiles.shared_memory_bytes(head_dim, t.block_m, t.block_n, tiles.STAGES) <= 227 * 1024
        return t.block_m, t.block_n
    assert [chosen(d) for d in (64, 128, 256)] == [(192, 128), (128, 176), (128, 80)]
    assert [chosen(d, "tma") for d in (64, 128, 256)] == [(192, 128), (128, 176), (128, 80)]
    # two consumers where three cannot be: the ping-pong turns, and a softcap's registers at d=64
    assert [chosen(d, "pingpong") for d in (64, 128, 256)] == [(128, 160), (128, 176), (128, 80)]
    assert chosen(64, softcap=30.0) == (128, 160) and chosen(128, softcap=30.0) == (128, 176)
    assert [chosen(d, "persistent") for d in (64, 128, 256)] == [(128, 128), (128, 176), (128, 64)]
    assert [chosen(d, "pingpong_persistent") for d in (64, 128, 256)] == [(128, 128), (128, 128), (128, 64)]
    assert tiles.shared_memory_bytes(256, 128, 96, 2) > 227 * 1024            # why d=256 stops at 80 keys
    for consumers in tiles.REGISTERS:
        for rung in set(sm90a.RUNGS) - {"wgmma"}:           # rung wgmma has no setmaxnreg
            producer, consumer = tiles.register_budgets(64 * consumers, rung)
            # what the .dec frees must cover the .inc: within the launch allocation (else a hang)
            pool = tiles.launch_registers(64 * consumers) * 128 * (1 + consumers)
            assert producer * 128 + consumer * 128 * consumers <= pool, (consumers, rung)
    assert tiles.launch_registers(192) == 128 and tiles.launch_registers(128) == 168
    # rung wgmma: no producer warpgroup (256 threads for two consumers, up to 248 registers each)
    assert tiles.num_warps(128, "wgmma") == 8 and tiles.launch_registers(128, "wgmma") == 248
    assert tiles.num_warps(192, "wgmma") == 12 and tiles.launch_registers(192, "wgmma") == 168


def test_pinned_tiles_and_rungs_are_checked_with_reasons():
    backend = NvrtcBackend(sm90a.GENERATION)
    desc = _desc(head_dim=64)
    key = backend.dispatch_key(desc, SM90, {"rung": "overlap", "block_m": 192, "block_n": 176, "num_warps": 16,
                                            "stages": 2})
    assert (key.tiles.block_m, key.tiles.block_n) == (192, 176) and "_m192n176w16s2_overlap" in key.name
    # naming the rung alone gets that rung's tile: pingpong's two consumers
    assert backend.dispatch_key(desc, SM90, {"rung": "pingpong"}).tiles.block_m == 128
    bad = [({"rung": "pingpong", "block_m": 192, "block_n": 128, "num_warps": 16}, "two consumers"),
           ({"rung": "overlap", "block_m": 256, "block_n": 128, "num_warps": 20}, "block_m=256"),
           ({"rung": "overlap", "block_m": 192, "block_n": 128, "num_warps": 12}, "num_warps=12"),
           ({"rung": "overlap", "block_m": 128, "block_n": 120, "num_warps": 12}, "block_n=120"),
           ({"rung": "overlap", "block_m": 128, "block_n": 272, "num_warps": 12}, "block_n=272"),
           ({"rung": "overlap", "stages": 1}, "stages must be 2"),
           ({"rung": "wgmma", "block_m": 128, "block_n": 128, "num_warps": 12}, "under rung 'wgmma' needs 8"),
           ({"rung": "overlap", "block_m": 128, "block_n": 128, "num_warps": 8}, "under rung 'overlap' needs 12"),
           ({"rung": "wgmma", "stages": 3}, "double-buffers"),
           ({"rung": "tma", "stages": 5}, "stages=5")]
    for config, words in bad:
        with pytest.raises(ValueError, match=words):
            backend.dispatch_key(desc, SM90, config)


def _simulate_ring(dump, stages: int, tiles_count: int, seed: int) -> None:
    """The producer and two consumers under a random schedule, each step allowed only when its
    mbarrier wait (try_wait.parity: true once the phase of that parity, the current or the one before,
    has completed) passes, with the parities of fwd_layout.cuh."""
    parity = {(s, i): (stage, consumer, producer) for s, i, stage, consumer, producer in dump["pipeline"]}
    arrivals_needed = {"full": 1, "empty": 2}      # the producer's expect_tx arrive; both consumers' releases

    class Barrier:
        def __init__(self, kind):
            self.kind, self.completed, self.arrived = kind, 0, 0

        def passes(self, wanted: int) -> bool:     # the phase before the first counts as complete
            return (self.completed - 1) % 2 == wanted

        def arrive(self):
            self.arrived += 1
            if self.arrived == arrivals_needed[self.kind]:
                self.completed, self.arrived = self.completed + 1, 0

    full = [Barrier("full") for _ in range(stages)]
    empty = [Barrier("empty") for _ in range(stages)]
    buffers = [None] * stages                      # the tile each buffer holds
    reading = [None, None]                         # the buffer each consumer is reading (between wait and release)
    produced, consumed = 0, [0, 0]
    rng = random.Random(seed)
    for _ in range(20 * tiles_count + 100):
        actors = []
        if produced < tiles_count:
            stage, _, wait = parity[(stages, produced)]
            assert stage == produced % stages
            if empty[stage].passes(wait):
                actors.append("producer")
        for c in (0, 1):
            if reading[c] is not None:
                actors.append(("release", c))
            elif consumed[c] < tiles_count:
                stage, wait, _ = parity[(stages, consumed[c])]
                if full[stage].passes(wait):
                    actors.append(("read", c))
        if not actors:
            assert produced == tiles_count and consumed == [tiles_count, tiles_count], "deadlock"
            return
        actor = rng.choice(actors)
        if actor == "producer":
            stage = produced % stages
            assert stage not in reading, "the producer overwrote a buffer a consumer is reading"
            buffers[stage] = produced
            full[stage].arrive()
            produced += 1
        elif actor[0] == "read":
            c = actor[1]
            stage = consumed[c] % stages
            assert buffers[stage] == consumed[c], "a consumer read another tile's buffer"
            reading[c] = stage
        else:
            c = actor[1]
            empty[reading[c]].arrive()
            reading[c] = None
            consumed[c] += 1
    raise AssertionError("the schedule did not finish")


@pytest.mark.parametrize("stages", (1, 2, 3, 4))
def test_the_barrier_ring_never_deadlocks_or_overwrites(dump, stages):
    for i in range(16):
        stage, consumer, producer = next((st, c, p) for s, it, st, c, p in dump["pipeline"] if (s, it) == (stages, i))
        assert stage == i % stages and consumer == (i // stages) % 2 and producer == 1 - consumer
    for seed in range(50):
        _simulate_ring(dump, stages, 15, seed)


# -- the compile matrix --------------------------------------------------------------------------------

def _desc(**fields) -> AttentionDescriptor:
    base = dict(batch=1, seqlen_q=256, seqlen_kv=256, heads_q=4, heads_kv=4, head_dim=128, dtype="bf16")
    base.update(fields)
    return AttentionDescriptor(**base)


FEATURES = {"plain": {}, "window": dict(window=(128, 0), causal=True), "window_two_sided": dict(window=(64, 32)),
            "sinks": dict(window=(128, 0), sink_tokens=4, causal=True), "softcap": dict(softcap=30.0),
            "alibi": dict(alibi=True, causal=True), "sink_logits": dict(sink_logits=True),
            "gqa_lse": dict(heads_kv=1, return_lse=True),
            "everything": dict(causal=True, window=(50, 0), sink_tokens=3, alibi=True, softcap=5.0,
                               sink_logits=True, heads_kv=2, return_lse=True),
            # everything a three-consumer d=64 tile takes (a softcap gets two consumers)
            "all_but_softcap": dict(causal=True, window=(50, 0), sink_tokens=3, alibi=True, sink_logits=True,
                                    heads_kv=2, return_lse=True)}


def compile_matrix() -> dict:
    """Every dtype x head dim x causal x rung, and each mask / score feature at every head dim under the
    default rung and the fastest one (pingpong: the most registers live)."""
    descs = []
    for dtype in ("f16", "bf16"):
        for head_dim in tiles.HEAD_DIMS:
            for causal in (False, True):
                for rung in sm90a.RUNGS:
                    descs.append((f"{dtype}-d{head_dim}-causal{int(causal)}-{rung}",
                                  _desc(dtype=dtype, head_dim=head_dim, causal=causal), rung))
    for dtype in ("f16", "bf16"):                # V narrower than Q and K: 192 / 128
        for causal in (False, True):
            for rung in sm90a.RUNGS:
                descs.append((f"{dtype}-d192x128-causal{int(causal)}-{rung}",
                              _desc(dtype=dtype, head_dim=192, head_dim_v=128, causal=causal), rung))
    for name, extra in FEATURES.items():
        # d=96 is d=128's kernel with a padded head dim: its everything case stands for the features
        for head_dim in (d for d in tiles.HEAD_DIMS if d != 96 or name == "everything"):
            for rung in sorted({sm90a.RUNG, "pingpong"}):
                descs.append((f"{name}-d{head_dim}-{rung}", _desc(head_dim=head_dim, **extra), rung))
    for rung in sm90a.RUNGS:                     # varlen (thd): direct output stores, V's tail zeroed
        descs.append((f"varlen-d128-causal-{rung}", _desc(layout="thd", causal=True), rung))
        descs.append((f"varlen-f16-d64-{rung}", _desc(layout="thd", dtype="f16", head_dim=64), rung))
    for head_dim in (128, 256):
        descs.append((f"varlen-everything-d{head_dim}", _desc(layout="thd", head_dim=head_dim, **FEATURES["everything"]),
                      sm90a.RUNG))
    for rung in sm90a.RUNGS[1:]:                 # paged KV (TMA rungs only): boxes of a page, V's tail zeroed
        descs.append((f"paged64-d128-causal-{rung}", _desc(paged=PagedKV(64, 8), causal=True), rung))
        descs.append((f"paged256-varlen-d64-{rung}", _desc(layout="thd", paged=PagedKV(256, 2), head_dim=64), rung))
    descs.append(("paged16-everything-d256", _desc(paged=PagedKV(16, 32), head_dim=256, **FEATURES["everything"]),
                  sm90a.RUNG))
    keys = {}
    for label, desc, rung in descs:          # one compile per distinct kernel
        # the rung the problem gets when `rung` is the default (choose_rung gives "tma" where the
        # rung's kernel would spill)
        chosen = sm90a.fallback_rung(desc, rung)
        key = NvrtcBackend(sm90a.GENERATION).dispatch_key(desc, SM90, {"rung": chosen})
        keys.setdefault(key.name, (label, desc, key))
    return keys


MATRIX = compile_matrix()


def _compile_all(jobs: dict) -> dict:
    """name -> {log, seconds, info, sass} (sm90a_host.nvrtc_sm90a.compile_and_read) for name -> (source,
    kernel name, options): in a pool of spawned processes, one per core, and kept in $ATTNPLAN_CACHE_DIR
    (CI's second phase, the installed wheel, re-reads what the first compiled, with the seconds measured then)."""
    import hashlib
    import multiprocessing
    import os
    import pickle
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    store = Path(os.environ.get("ATTNPLAN_CACHE_DIR") or tempfile.gettempdir()) / "sm90a-test-sass"
    store.mkdir(parents=True, exist_ok=True)
    tree = compiler._tree_hash(str(compiler.kernels_dir()))         # the headers the sources include
    digest = {name: hashlib.sha256("\0".join([job[0], job[1], *job[2], tree, compiler.nvrtc_version()]).encode()
                                   ).hexdigest() for name, job in jobs.items()}
    out, missing = {}, []
    for name in jobs:
        path = store / f"{digest[name]}.pkl"
        if path.is_file():
            out[name] = pickle.loads(path.read_bytes())
        else:
            missing.append(name)
    if missing:
        context = multiprocessing.get_context("spawn")      # no fork: the test process may hold threads
        with ProcessPoolExecutor(max(1, min(len(missing), os.cpu_count() or 1)), mp_context=context) as pool:
            results = pool.map(compile_and_read, *zip(*(jobs[name] for name in missing)))
            for name, result in zip(missing, results):
                out[name] = result
                (store / f"{digest[name]}.pkl").write_bytes(pickle.dumps(result))
    return out


@pytest.fixture(scope="module")
def compiled() -> dict:
    nvrtc_or_skip()
    jobs = {name: (compiler.source_for(key, sm90a.GENERATION), key.name, compiler.options_for(key, sm90a.GENERATION))
            for name, (label, desc, key) in MATRIX.items()}
    out = {}
    for name, read in _compile_all(jobs).items():
        label, desc, key = MATRIX[name]
        out[name] = {"label": label, "desc": desc, "key": key, **read}
    return out


def test_the_matrix_covers_every_dtype_head_dim_feature_and_rung():
    assert len(MATRIX) >= 60
    keys = [key for _, _, key in MATRIX.values()]
    assert {k.dtype for k in keys} == {"f16", "bf16"} and {k.head_dim for k in keys} == set(tiles.HEAD_DIMS)
    assert {k.rung for k in keys} == set(sm90a.RUNGS)
    for feature in ("causal", "window", "sink_tokens", "sink_logits", "alibi", "softcap"):
        assert {getattr(k, feature) for k in keys} == {False, True}, feature
        assert {k.rung for k in keys if getattr(k, feature)} >= {sm90a.RUNG, "pingpong"}, feature


@pytest.mark.parametrize("name", list(MATRIX))
def test_kernel_compiles_cleanly_and_fast(compiled, name, record_property):
    c = compiled[name]
    record_property("compile_seconds", round(c["seconds"], 3))
    print(f"\n{name}: {c['seconds']:.2f} s")
    assert c["log"] == ""                 # no ptxas remark (e.g. serialized wgmma)
    assert c["seconds"] < COMPILE_SECONDS


_REGISTER = re.compile(r"\bR(\d+)\b")


@pytest.mark.parametrize("name", list(MATRIX))
def test_kernel_sass_is_what_the_design_says(compiled, name):
    c = compiled[name]
    key, info, sass = c["key"], c["info"], c["sass"]
    # head dim 96 runs padded to 128 (whole panels): S = Q K^T over its 6 real k-steps, O += P V at N=128
    block_n, head_dim, panels = key.tiles.block_n, key.head_dim, tiles.padded_head_dim(key.head_dim) // 64
    suffix = ".BF16" if key.dtype == "bf16" else ""
    ops = info.opcodes
    # S = Q K^T: head_dim / 16 m64n<block_n>k16 per tile; O += P V: block_n / 16 m64n<head_dim>k16.
    hgmma = [line for line in sass if line.startswith("HGMMA")]
    ss = [line for line in hgmma if "gdesc" in line and not re.search(r"HGMMA\S* R\d+, R\d+, gdesc", line)]
    rs = [line for line in hgmma if re.search(r"HGMMA\S* R\d+, R\d+, gdesc\[UR\d+\]\.tnspB", line)]
    # The overlapped rungs issue S for tile 0 before the loop and the last P V after it: each GEMM twice.
    copies = 1 if key.rung in ("tma", "wgmma") else 2
    assert len(ss) == copies * head_dim // 16 and all(f"HGMMA.64x{block_n}x16.F32{suffix} " in line for line in ss)
    assert len(rs) == copies * block_n // 16 and all(f"HGMMA.64x{tiles.padded_head_dim(key.head_dim_v)}x16.F32{suffix} " in line
                                                 for line in rs)
    assert len(ss) + len(rs) == len(hgmma)
    bars = {op: n for op, n in ops.items() if op.startswith("BAR.")}
    v_panels = tiles.padded_head_dim(key.head_dim_v) // 64
    assert not [op for op in ops if op.startswith(("LDL", "STL"))] and info.spill_bytes == 0
    assert info.stack_bytes == 0
    assert sm90a.GENERATION.shared_memory(key)["shared_memory_bytes"] <= 227 * 1024
    assert key.tiles.num_warps == tiles.num_warps(key.tiles.block_m, key.rung)
    assert info.registers <= tiles.launch_registers(key.tiles.block_m, key.rung)
    registers = lambda lines: max((int(r) for line in lines for r in _REGISTER.findall(line)), default=0)
    # The output: TMA stores of the staged tile, or (the persistent grid, varlen) 4-byte stores from the
    # registers: two per n8 column block per row pair of each thread, and no staging barrier.
    direct = key.rung in tiles.PERSISTENT_RUNGS or key.varlen      # (paged alone keeps the staged TMA stores)
    stores = 0 if direct else v_panels
    staging = 0 if direct else 1
    if direct:
        assert ops.get("STG.E", 0) >= 2 * key.head_dim_v // 8
    if key.rung == "wgmma":
        # No producer, no mbarriers, no setmaxnreg: 16-byte cp.async copies (LDGSTS) and their waits; the
        # load barrier twice (tiles landed, in the loop and after it), once per tile for the buffer's
        # reuse, and the staging barrier; the output still leaves by TMA stores.
        assert ops.get("LDGSTS.E.BYPASS.128", 0) >= 3 and ops.get("DEPBAR.LE", 0) >= 2
        assert bars == {"BAR.SYNC.DEFER_BLOCKING": 3 + staging}
        expected = {"UTMALDG.4D": 0, "UTMASTG.4D": stores, "UTMACCTL.PF": 0, "USETMAXREG.DEALLOC.CTAPOOL": 0,
                    "USETMAXREG.TRY_ALLOC.CTAPOOL": 0, "SYNCS.EXCH.64": 0, "ATOMG.E.ADD.STRONG.GPU": 0}
        assert {op: ops.get(op, 0) for op in expected} == expected
        return
    # Ping-pong: three turns (tile 0, the loop, the last P V), each a sync on the consumer's own turn
    # barrier and a hand-over arrive, plus consumer 1's first hand-over; no other rung arrives.
    turns = 3 if key.rung in tiles.PINGPONG_RUNGS else 0
    assert bars.get("BAR.ARV", 0) == (turns + 1 if turns else 0)
    assert bars.get("BAR.SYNC.DEFER_BLOCKING", 0) == 1 + staging + turns       # __syncthreads, the staging barrier
    # Q, K, V: one box per 64-column panel (varlen: V twice, to v_full or, for a tile past the sequence's
    # end, to v_landed)
    if key.paged:
        # Q by one box per panel; K and V box by box, each V site (to v_full, or to v_landed for a tile past
        # the sequence's end) in its own loop of boxes over the pages (unrolled as ptxas likes)
        assert ops.get("UTMALDG.4D", 0) >= panels + panels + 2 * v_panels
        ops = {**ops, "UTMALDG.4D": 2 * panels + 2 * v_panels}
    expected = {"UTMALDG.4D": 2 * panels + v_panels * (2 if key.varlen or key.paged else 1),
                "UTMASTG.4D": stores, "UTMACCTL.PF": 4,
                "USETMAXREG.DEALLOC.CTAPOOL": 1, "USETMAXREG.TRY_ALLOC.CTAPOOL": 1}
    assert {op: ops.get(op, 0) for op in expected} == expected
    assert not ops.get("LDGSTS.E.BYPASS.128", 0)
    # the persistent grid draws its work indices from the counter (two draw sites, fwd.cu); no other rung
    assert ops.get("ATOMG.E.ADD.STRONG.GPU", 0) == (2 if key.rung in tiles.PERSISTENT_RUNGS else 0)
    # mbarrier.init: Q's two, the ring's (and varlen's v_landed)
    assert ops.get("SYNCS.EXCH.64", 0) == 2 + 4 * key.stages + (1 if key.varlen or key.paged else 0)
    assert ops.get("SYNCS.PHASECHK.TRANS64.TRYWAIT", 0) >= 5                  # q, k, v full; k, v empty
    # Registers: the consumer code stays inside its setmaxnreg budget and the producer's code inside its own.
    producer_budget, consumer_budget = tiles.register_budgets(key.tiles.block_m, key.rung)
    assert registers(sass) < consumer_budget
    start = next(i for i, line in enumerate(sass) if line.startswith("USETMAXREG.DEALLOC"))
    end = next(i for i in range(start, len(sass)) if sass[i].startswith("EXIT"))
    assert registers(sass[start:end + 1]) < producer_budget


def test_a_wrong_shared_memory_formula_fails_the_compile():
    nvrtc_or_skip()
    from attnplan.errors import KernelCompileError
    wrong = attrs.evolve(sm90a.GENERATION, forward=attrs.evolve(sm90a.GENERATION.forward,
                                                                shared_memory=lambda key: 4096))
    key = NvrtcBackend(wrong).dispatch_key(_desc(), SM90)
    with pytest.raises(KernelCompileError, match="shared_memory_bytes disagrees"):
        compiler.compile_source(compiler.source_for(key, wrong), key.name, compiler.options_for(key, wrong))


# -- the host plumbing --------------------------------------------------------------------------------

class FakeDriver:
    """Stands in for cuda.bindings.driver in tma.encode: records each call and returns a map whose
    words name its address and dims, so each map in the block can be told apart."""

    CUresult = types.SimpleNamespace(CUDA_SUCCESS="success")

    def __init__(self):
        self.calls = []
        for enum_name in ("CUtensorMapDataType", "CUtensorMapInterleave", "CUtensorMapSwizzle",
                          "CUtensorMapL2promotion", "CUtensorMapFloatOOBfill"):
            setattr(self, enum_name, lambda value: int(value))

    def cuTensorMapEncodeTiled(self, data_type, rank, address, dims, strides, box, element_strides, interleave,
                               swizzle, l2, oob):
        self.calls.append(dict(data_type=data_type, rank=rank, address=address, dims=list(dims),
                               strides=list(strides), box=list(box), swizzle=swizzle))
        words = [address, *dims, *box, swizzle]
        return "success", types.SimpleNamespace(opaque=words + [0] * (16 - len(words)))


def _host_array(shape, dtype="bf16"):
    return np.zeros(shape, dtype=ml_dtypes.bfloat16 if dtype == "bf16" else np.float16)


def _runner(desc):
    nvrtc_or_skip()
    plan = Plan.select(desc, "sm_90", prefer=NAME, restrict=True, policy="first")
    assert plan.sku.backend == NAME
    runner = plan._executable.forward
    runner.driver = FakeDriver()
    return plan, runner


def _bound(desc, q=None, k=None, v=None):
    q = _host_array((desc.batch, desc.seqlen_q, desc.heads_q, desc.head_dim)) if q is None else q
    k = _host_array((desc.batch, desc.seqlen_kv, desc.heads_kv, desc.head_dim)) if k is None else k
    v = _host_array((desc.batch, desc.seqlen_kv, desc.heads_kv, desc.head_dim)) if v is None else v
    bound = bind_arguments(desc, {"q": q, "k": k, "v": v})
    out = wrap_storage(_host_array((desc.batch, desc.seqlen_q, desc.heads_q, desc.head_dim)), desc.dtype)
    lse = wrap_storage(np.zeros(lse_shape(desc, desc.batch * desc.seqlen_q), np.float32), "f32")
    return bound, out, lse


def _maps_in(block, struct_layout) -> dict:
    raw = bytes(block)
    return {name: struct.unpack("<16Q", raw[offset:offset + size])
            for name, (offset, size) in struct_layout.opaque_fields().items()}


PLUMBING = AttentionDescriptor(batch=2, seqlen_q=300, seqlen_kv=517, heads_q=8, heads_kv=2, head_dim=128,
                               dtype="bf16", causal=True, return_lse=True)


def test_parameter_block_layout():
    layout = sm90a_runner.FORWARD_PARAMS
    opaque = layout.opaque_fields()
    assert list(opaque) == ["q_map", "k_map", "v_map", "o_map"]
    assert all(offset % 64 == 0 and size == 128 for offset, size in opaque.values())
    assert layout.size % 64 == 0 and layout.size <= 4096          # one kernel parameter (4 KB)
    assert "alignas(64) unsigned char q_map[128];" in layout.c_struct()
    assert ctypes.sizeof(layout.struct_class()) == layout.size


def test_runner_grid_threads_and_shared_memory():
    plan, runner = _runner(PLUMBING)
    # causal: the 16 (head, sequence) pairs in one wave (their K/V fit in L2), query tiles longest first
    assert runner.grid == (16, math.ceil(300 / 128), 1) and runner.threads == 384
    assert runner.shared == tiles.shared_memory_bytes(128, 128, 176, 2) == plan.sku.config_dict["shared_memory_bytes"]
    config = plan.sku.config_dict
    assert (config["block_m"], config["block_n"], config["num_warps"], config["stages"]) == (128, 176, 12, 2)
    # d=64: three consumers, 192 query rows, 512 threads
    plan64, runner64 = _runner(attrs.evolve(PLUMBING, head_dim=64, head_dim_v=64))
    assert runner64.grid == (16, math.ceil(300 / 192), 1) and runner64.threads == 512
    _, classic = _runner(PLUMBING.replace(causal=False))
    assert classic.grid == (1, math.ceil(300 / 128), 16)          # one pair per wave
    assert plan.sku.kernel.endswith("_sm90a") and "--gpu-architecture=sm_90a" in config["options"]


def launch_order(grid: tuple, heads: int) -> list:
    """The work tiles of a non-persistent grid in the order the hardware hands out its CTAs
    (blockIdx.x fastest), each as kernels/sm90a/fwd.cu launch_order_tile maps it, restated."""
    x_size, y_size, z_size = grid
    order = []
    for z in range(z_size):
        for y in range(y_size):
            for x in range(x_size):
                pair = z * x_size + x
                order.append((y_size - 1 - y, pair % heads, pair // heads))
    return order


@pytest.mark.parametrize("heads_q,heads_kv,batch,seqlen,head_dim,causal", [
    (16, 16, 8, 2048, 128, True), (32, 32, 8, 2048, 64, True), (8, 8, 8, 2048, 256, True),
    (16, 16, 1, 16384, 128, True), (13, 13, 1, 4096, 128, True), (16, 4, 8, 2048, 128, True),
    (12, 2, 5, 1000, 192, True), (16, 16, 8, 2048, 128, False), (8, 2, 3, 300, 128, False)])
def test_launch_order_is_longest_first_across_whole_l2_waves(heads_q, heads_kv, batch, seqlen, head_dim, causal):
    pairs, group = heads_q * batch, heads_q // heads_kv
    cap = tiles.l2_wave_pairs(seqlen, head_dim, head_dim, group)
    per_wave = tiles.wave_pairs(pairs, group, causal, cap)
    grid = tiles.grid(seqlen, heads_q, batch, 128, 0, per_wave)
    m_blocks = math.ceil(seqlen / 128)
    order = launch_order(grid, heads_q)
    assert sorted(order) == sorted((m, h, b) for m in range(m_blocks) for h in range(heads_q) for b in range(batch))
    assert grid[1] == m_blocks and grid[1] <= tiles.GRID_YZ_MAX and grid[2] <= tiles.GRID_YZ_MAX
    waves = [order[i:i + per_wave * m_blocks] for i in range(0, len(order), per_wave * m_blocks)]
    for wave in waves:
        work = [m for m, _, _ in wave]
        assert work == sorted(work, reverse=True)                 # longest first within the wave
        pair_set = {(h, b) for _, h, b in wave}
        assert len(pair_set) == per_wave
    if causal:
        # whole GQA groups, K/V within the L2 budget, and as many pairs as both allow
        assert per_wave % group == 0 or per_wave == pairs
        kv_head_bytes = seqlen * 2 * head_dim * 2                 # K and V of one KV head, shared by its group
        assert max(per_wave // group, 1) * kv_head_bytes <= max(tiles.WAVE_L2_BYTES, kv_head_bytes)
        assert all(per_wave >= d for d in range(group, min(cap, pairs) + 1, group) if pairs % d == 0)
    else:
        assert per_wave == 1                                      # the classic (query tile, head, batch) order
        assert order == [(m, h, b) for b in range(batch) for h in range(heads_q) for m in reversed(range(m_blocks))]


def test_wave_pairs_respects_the_grid_limit():
    assert tiles.wave_pairs(200_000, 1, False, 5) == 4            # 50,000 waves fit gridDim.z
    assert tiles.wave_pairs(131_071, 1, True, 5) == 131_071       # a prime count: one wave, gridDim.x
    assert tiles.wave_pairs(0, 1, True, 3) == 1
    with pytest.raises(ValueError, match="do not divide"):
        tiles.grid(100, 8, 3, 128, 0, 5)


def test_maps_are_encoded_from_the_arrays_and_land_in_the_block():
    plan, runner = _runner(PLUMBING)
    bound, out, lse = _bound(PLUMBING)
    block = runner.block(bound, out, lse)
    calls = {call["address"]: call for call in runner.driver.calls}
    assert len(runner.driver.calls) == 4
    d = PLUMBING
    expected = {"q_map": (bound.q.ptr, [128, 300, 8, 2], [8 * 128 * 2, 128 * 2, 300 * 8 * 128 * 2], [64, 128, 1, 1]),
                "k_map": (bound.k.ptr, [128, 517, 2, 2], [2 * 128 * 2, 128 * 2, 517 * 2 * 128 * 2], [64, 176, 1, 1]),
                "v_map": (bound.v.ptr, [128, 517, 2, 2], [2 * 128 * 2, 128 * 2, 517 * 2 * 128 * 2], [64, 176, 1, 1]),
                "o_map": (out.ptr, [128, 300, 8, 2], [8 * 128 * 2, 128 * 2, 300 * 8 * 128 * 2], [64, 64, 1, 1])}
    maps = _maps_in(block, runner.struct)
    for name, (address, dims, strides, box) in expected.items():
        call = calls[address]
        assert (call["dims"], call["strides"], call["box"], call["swizzle"], call["rank"]) == (dims, strides, box, 3, 4)
        assert call["data_type"] == int(tma.DataType.BFLOAT16)
        assert maps[name][:10] == (address, *dims, *box, 3), name
    assert (block.seqlen_q, block.seqlen_kv, block.heads_q, block.heads_kv) == (d.seqlen_q, d.seqlen_kv, 8, 2)
    assert (block.q, block.out, block.lse) == (bound.q.ptr, out.ptr, lse.ptr)
    assert block.tile_counter == 0 and not runner.persistent   # only the persistent rung has a work counter
    assert (block.lse_batch_stride, block.lse_head_stride, block.lse_row_stride) == (8 * 300, 300, 1)
    assert block.top_left == 0 and block.scale == pytest.approx(d.scale)


def test_a_repeated_call_does_no_host_work_and_a_new_output_re_encodes_only_its_map():
    plan, runner = _runner(PLUMBING)
    bound, out, lse = _bound(PLUMBING)
    first = runner.block(bound, out, lse)
    calls = len(runner.driver.calls)
    assert runner.block(bound, out, lse) is first and len(runner.driver.calls) == calls
    other_out = wrap_storage(_host_array(out.shape), "bf16")
    second = runner.block(bound, other_out, lse)
    assert second is not first and len(runner.driver.calls) == calls + 1
    assert runner.driver.calls[-1]["address"] == other_out.ptr
    assert _maps_in(second, runner.struct)["q_map"] == _maps_in(first, runner.struct)["q_map"]


def test_strided_arrays_become_maps_with_their_strides():
    desc = PLUMBING.replace(causal=False)
    plan, runner = _runner(desc)
    wide = _host_array((2, 300, 16, 128))                 # q: every other head of a wider array
    bound, out, lse = _bound(desc, q=wide[:, :, ::2, :])
    runner.check_arguments(bound)
    runner.block(bound, out, lse)
    q_call = next(c for c in runner.driver.calls if c["address"] == bound.q.ptr)
    assert q_call["dims"] == [128, 300, 8, 2]
    assert q_call["strides"] == [16 * 128 * 2, 2 * 128 * 2, 300 * 16 * 128 * 2]


def test_varlen_maps_hold_every_sequence_as_one_batch_of_packed_rows():
    desc = PLUMBING.replace(layout="thd", batch=3)
    plan, runner = _runner(desc)
    assert runner.grid == (24, math.ceil(300 / 128), 1)          # the longest sequence's query tiles
    lengths_q, lengths_kv = [300, 7, 120], [517, 40, 0]
    cu_q, cu_kv = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lengths_q, lengths_kv))
    total_q, total_kv = int(cu_q[-1]), int(cu_kv[-1])
    args = {"q": _host_array((total_q, 8, 128)), "k": _host_array((total_kv, 2, 128)),
            "v": _host_array((total_kv, 2, 128)), "cu_seqlens_q": cu_q, "cu_seqlens_kv": cu_kv}
    bound = bind_arguments(desc, args)
    out = wrap_storage(_host_array((total_q, 8, 128)), desc.dtype)
    lse = wrap_storage(np.zeros(lse_shape(desc, total_q), np.float32), "f32")
    block = runner.block(bound, out, lse)
    calls = {call["address"]: call for call in runner.driver.calls}
    for tensor, rows, box in ((bound.q, total_q, 128), (bound.k, total_kv, 176), (bound.v, total_kv, 176), (out, total_q, 64)):
        heads = tensor.shape[1]
        call = calls[tensor.ptr]
        assert call["rank"] == 4 and call["dims"] == [128, rows, heads, 1]
        assert call["strides"] == [heads * 128 * 2, 128 * 2, rows * heads * 128 * 2]
        assert call["box"] == [64, box, 1, 1]
    assert (block.cu_seqlens_q, block.cu_seqlens_kv) == (bound.cu_seqlens_q.ptr, bound.cu_seqlens_kv.ptr)
    assert (block.q_batch_stride, block.q_row_stride, block.lse_row_stride) == (0, 8 * 128, 1)


def test_varlen_is_gated_until_a_gpu_run_verifies_it(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    desc = GATED.replace(layout="thd")
    _record_at(monkeypatch, tmp_path, {r: {"features": []} for r in sm90a.RUNGS})
    verdict = explain(desc, "sm_90").of(NAME)
    assert not verdict.accepted
    assert f"not verified on a GPU yet (rung {GATED_RUNG!r} with varlen; verified: dense layouts only)" in verdict.reasons[0]
    assert explain(desc, "sm_90", prefer=NAME).of(NAME).accepted            # the opt-in runs it
    assert explain(GATED, "sm_90").of(NAME).accepted                        # dense stays verified
    _record_at(monkeypatch, tmp_path, {r: {"features": ["varlen"]} for r in sm90a.RUNGS})
    assert explain(desc, "sm_90").of(NAME).accepted


def test_bhsd_maps_take_its_strides_and_it_is_gated_until_verified(monkeypatch, tmp_path):
    """[b, h, s, d] arrays (PyTorch's SDPA layout) become the same (column, row, head, batch) maps with
    their own strides; the layout is a gated feature, so the planner takes it only once verified."""
    desc = PLUMBING.replace(layout="bhsd", causal=False)
    plan, runner = _runner(desc)
    args = {"q": _host_array((2, 8, 300, 128)), "k": _host_array((2, 2, 517, 128)), "v": _host_array((2, 2, 517, 128))}
    bound = bind_arguments(desc, args)
    out = wrap_storage(_host_array((2, 8, 300, 128)), desc.dtype)
    lse = wrap_storage(np.zeros(lse_shape(desc, 300), np.float32), "f32")
    block = runner.block(bound, out, lse)
    calls = {call["address"]: call for call in runner.driver.calls}
    for tensor, rows, heads in ((bound.q, 300, 8), (bound.k, 517, 2), (out, 300, 8)):
        call = calls[tensor.ptr]
        assert call["dims"] == [128, rows, heads, 2]
        assert call["strides"] == [128 * 2, rows * 128 * 2, heads * rows * 128 * 2]
    assert (block.q_row_stride, block.q_head_stride, block.q_batch_stride) == (128, 300 * 128, 8 * 300 * 128)
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    _record_at(monkeypatch, tmp_path, {r: {"features": ["varlen", "paged"]} for r in sm90a.RUNGS})
    verdict = explain(desc, "sm_90").of(NAME)
    assert not verdict.accepted and "with bhsd" in verdict.reasons[0], verdict.reasons
    assert explain(desc, "sm_90", prefer=NAME).of(NAME).accepted
    _record_at(monkeypatch, tmp_path, {r: {"features": ["varlen", "paged", "bhsd"]} for r in sm90a.RUNGS})
    assert explain(desc, "sm_90").of(NAME).accepted


def test_strides_tma_cannot_address_are_refused_naming_the_array():
    desc = PLUMBING.replace(causal=False)
    plan, runner = _runner(desc)
    padded = _host_array((2, 300, 8, 132))                # rows of 132 elements: 264 bytes, not a 16-byte multiple
    bound = bind_arguments(desc, {"q": padded[..., :128], "k": _host_array((2, 517, 2, 128)),
                                  "v": _host_array((2, 517, 2, 128)),
                                  "out": _host_array((2, 300, 8, 128))})
    with pytest.raises(InvalidArguments, match=r"q.*TMA map.*multiple of 16 bytes"):
        runner.check_arguments(bound)
    assert runner.driver.calls == []


def test_encode_gives_cuda_bindings_its_own_integer_types():
    """cuda-bindings 13 takes cuuint64_t / cuuint32_t lists, not ints; tma.encode converts."""
    seen = {}

    class Bindings:
        CUresult = types.SimpleNamespace(CUDA_SUCCESS=0)
        cuuint64_t = staticmethod(lambda x: ("u64", x))
        cuuint32_t = staticmethod(lambda x: ("u32", x))
        CUtensorMapDataType = CUtensorMapInterleave = CUtensorMapSwizzle = staticmethod(lambda x: ("enum", x))
        CUtensorMapL2promotion = CUtensorMapFloatOOBfill = staticmethod(lambda x: ("enum", x))

        @staticmethod
        def cuTensorMapEncodeTiled(*args):
            seen["args"] = args
            return 0, types.SimpleNamespace(opaque=[0] * 16)

    params = tma.tensor_map_params((2, 64), (64, 1), "bf16", (64, 1))
    tma.encode(params, 0x1000, driver=Bindings)
    args = seen["args"]
    assert args[1] == ("u32", params.rank) and args[2] == 0x1000
    assert args[3] == [("u64", x) for x in params.global_dims]
    assert args[4] == [("u64", x) for x in params.global_strides_bytes]
    assert args[5] == [("u32", x) for x in params.box_dims]
    assert args[6] == [("u32", x) for x in params.element_strides]


# -- the planner ---------------------------------------------------------------------------------------

GATED = AttentionDescriptor(batch=2, seqlen_q=1024, seqlen_kv=1024, heads_q=8, heads_kv=8, head_dim=128,
                            dtype="bf16", causal=True)
GATED_RUNG = "pingpong"          # causal d=128's default rung (sm90a.choose_rung)


def test_listed_after_sm80_and_nameable():
    names = [b.name for b in registry.backends()]
    assert names.index(NAME) == names.index("nvrtc.sm80") + 1
    assert sm90a.GENERATION.compile_arch(90) == "sm_90a" and sm90a.GENERATION.rung(GATED, 90) == GATED_RUNG


def test_the_default_rung_is_the_measured_one_per_head_dim_and_masking(monkeypatch):
    monkeypatch.delenv(sm90a.RUNG_VARIABLE, raising=False)
    for head_dim in tiles.HEAD_DIMS:
        for causal in (False, True):
            desc = attrs.evolve(GATED, head_dim=head_dim, head_dim_v=head_dim, causal=causal)
            expected = "pingpong" if causal and head_dim in (96, 128, 256) else "overlap"
            assert sm90a.choose_rung(desc, 90) == expected, (head_dim, causal)
    assert sm90a.GENERATION.verification == Path(sm90a.__file__).with_name("verified.json")


def test_each_rung_is_its_own_kernel_named_in_the_key_and_the_sku(monkeypatch):
    nvrtc_or_skip()
    backend = NvrtcBackend(sm90a.GENERATION)
    names = set()
    for rung in sm90a.RUNGS:
        monkeypatch.setenv(sm90a.RUNG_VARIABLE, rung)
        key = backend.dispatch_key(GATED, SM90)
        assert key.rung == rung and f"_{rung}_" in key.name
        assert key.defines()[f"RUNG_{rung.upper()}"] == 1
        assert not any(k.startswith("RUNG_") and k != f"RUNG_{rung.upper()}" for k in key.defines())
        names.add(key.name)
        # a pinned config names the rung, whatever the variable says
        monkeypatch.setenv(sm90a.RUNG_VARIABLE, "tma")
        assert backend.dispatch_key(GATED, SM90, {"rung": rung}).rung == rung
    assert len(names) == len(sm90a.RUNGS)
    monkeypatch.delenv(sm90a.RUNG_VARIABLE)
    assert backend.dispatch_key(GATED, SM90).rung == GATED_RUNG
    plan = Plan.select(GATED, "sm_90", prefer=NAME, restrict=True)
    assert plan.sku.config_dict["rung"] == GATED_RUNG and plan.sku.kernel.endswith(f"_{GATED_RUNG}_causal_sm90a")


def test_problems_whose_overlapped_kernel_would_spill_get_the_tma_rung(monkeypatch):
    monkeypatch.delenv(sm90a.RUNG_VARIABLE, raising=False)
    backend = NvrtcBackend(sm90a.GENERATION)
    d256 = attrs.evolve(GATED, head_dim=256, head_dim_v=256, scale=256 ** -0.5)
    assert backend.dispatch_key(d256, SM90).rung == "pingpong"
    assert backend.dispatch_key(attrs.evolve(d256, causal=False), SM90).rung == "overlap"
    assert backend.dispatch_key(attrs.evolve(d256, alibi=True), SM90).rung == "tma"
    assert backend.dispatch_key(attrs.evolve(GATED, alibi=True), SM90).rung == "pingpong"
    assert sm90a.spills(d256, "persistent") and not sm90a.spills(GATED, "persistent")
    monkeypatch.setenv(sm90a.RUNG_VARIABLE, "pingpong")            # named: honoured
    assert backend.dispatch_key(attrs.evolve(d256, alibi=True), SM90).rung == "pingpong"


def test_an_unknown_rung_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setenv(sm90a.RUNG_VARIABLE, "turbo")
    verdict = explain(GATED, "sm_90", prefer=NAME).of(NAME)
    assert not verdict.accepted
    assert any("ATTNPLAN_SM90A_RUNG='turbo'" in r and "pingpong" in r for r in verdict.reasons), verdict.reasons
    monkeypatch.delenv(sm90a.RUNG_VARIABLE)
    with pytest.raises(ValueError, match=r"rung='turbo': the sm90a generation's rungs are 'wgmma', 'tma', 'overlap', 'pingpong'"):
        NvrtcBackend(sm90a.GENERATION).dispatch_key(GATED, SM90, {"rung": "turbo"})
    from attnplan.backends.nvrtc import sm80
    with pytest.raises(ValueError, match="rung='tma': the sm80 generation's rungs are none"):
        NvrtcBackend(sm80.GENERATION).dispatch_key(GATED, Device.cuda(arch=80), {"rung": "tma"})


def test_the_gate_names_the_rung_a_problem_gets(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    record = tmp_path / "verified.json"
    record.write_text(json.dumps({"rungs": {"tma": {"device": "NVIDIA H200", "date": "x", "results": "y"}}}))
    backend = registry.get(NAME)
    monkeypatch.setattr(backend, "generation", attrs.evolve(backend.generation, verification=record))
    monkeypatch.setenv(sm90a.RUNG_VARIABLE, "tma")
    assert explain(GATED, "sm_90").of(NAME).accepted
    monkeypatch.setenv(sm90a.RUNG_VARIABLE, "pingpong")
    verdict = explain(GATED, "sm_90").of(NAME)
    assert not verdict.accepted and "not verified on a GPU yet (rung 'pingpong')" in verdict.reasons[0]


def test_the_record_is_well_formed():
    record = json.loads(sm90a.VERIFICATION.read_text())
    assert set(record) == {"rungs"}
    for rung, entry in record["rungs"].items():
        assert {"device", "date", "results"} <= set(entry), rung
        # The installed-wheel run of CI copies tests/ alone: the results files are checked beside the source.
        if (ROOT / "bench" / "results").is_dir():
            assert (ROOT / entry["results"]).is_file(), entry["results"]


def test_unverified_it_is_rejected_with_the_gates_reason_unless_opted_in(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    record = tmp_path / "verified.json"
    record.write_text('{"rungs": {}}')
    backend = registry.get(NAME)
    monkeypatch.setattr(backend, "generation", attrs.evolve(backend.generation, verification=record))
    verdict = explain(GATED, "sm_90").of(NAME)
    assert not verdict.accepted and f"not verified on a GPU yet (rung {GATED_RUNG!r})" in verdict.reasons[0]
    assert NAME not in explain(GATED, "sm_90").ranking
    assert Plan.select(GATED, "sm_90").sku.backend != NAME
    assert explain(GATED, "sm_90", prefer=NAME).of(NAME).accepted
    monkeypatch.setenv("ATTNPLAN_UNVERIFIED", NAME)
    assert explain(GATED, "sm_90").of(NAME).accepted
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED")
    record.write_text(json.dumps({"rungs": {GATED_RUNG: {"device": "NVIDIA H200", "date": "x", "results": "y"}}}))
    assert explain(GATED, "sm_90").of(NAME).accepted


def test_the_shipped_record_decides_the_default_verdict(monkeypatch):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    verdict = explain(GATED, "sm_90").of(NAME)
    assert verdict.accepted == (GATED_RUNG in verified_rungs(sm90a.VERIFICATION))


DECLINED = {
    "backward": (dict(direction="backward"), "no backward pass"),
    "dropout": (dict(dropout_p=0.1), "dropout not supported"),
    "paged_page_12": (dict(paged=PagedKV(12, 32), seqlen_kv=384), "paged.page_size=12: the sm90a forward loads pages by TMA"),
    "bias": (dict(bias=True), "additive bias not supported"),
    "fp8": (dict(dtype="e4m3"), "dtype 'e4m3' not supported"),
    "head_dim_80": (dict(head_dim=80), "head_dim=80 not supported"),
    "head_dim_v": (dict(head_dim_v=64), "head_dim_v=64 with head_dim=128: the sm90a forward takes head_dim_v == head_dim"),
    "f32": (dict(dtype="f32"), "dtype 'f32' not supported"),
}


def test_paged_kv_takes_a_key_tile_its_pages_fill_and_no_cp_async_rung(monkeypatch):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    monkeypatch.delenv(tiles.TILES_VARIABLE, raising=False)
    for page_size, block_n in ((8, 176), (16, 176), (32, 160), (64, 128), (128, 128), (256, 128), (48, 144), (1024, 128)):
        desc = GATED.replace(paged=PagedKV(page_size, 4096 // page_size + 1), seqlen_kv=4096)
        assert tiles.choose_tiles(desc, 90, "overlap").block_n == block_n, page_size
        assert block_n % page_size == 0 or page_size % block_n == 0
    assert tiles.paged_block_n(80, 32) == 64 and tiles.paged_block_n(80, 16) == 80
    with pytest.raises(ValueError, match="no sm90a key tile of 64..80 keys"):
        tiles.paged_block_n(80, 96 + 8)
    desc = GATED.replace(paged=PagedKV(64, 16), seqlen_kv=1000)
    with pytest.raises(ValueError, match="block_n=176 with paged.page_size=64"):
        NvrtcBackend(sm90a.GENERATION).dispatch_key(desc, SM90, {"block_m": 128, "block_n": 176, "num_warps": 12})
    monkeypatch.setenv(sm90a.RUNG_VARIABLE, "wgmma")
    verdict = explain(desc, "sm_90", prefer=NAME).of(NAME)
    assert not verdict.accepted
    assert any("rung 'wgmma' copies K and V by cp.async without page tables" in r for r in verdict.reasons)


@pytest.mark.parametrize("case", list(DECLINED))
def test_what_it_declines_it_declines_with_a_reason(case):
    fields, reason = DECLINED[case]
    verdict = explain(GATED.replace(**fields), "sm_90", prefer=NAME).of(NAME)
    assert not verdict.accepted and any(reason in r for r in verdict.reasons), verdict.reasons


@pytest.mark.parametrize("device", ["sm_80", "sm_89", "sm_100"])
def test_hopper_only(device):
    verdict = explain(GATED, device, prefer=NAME).of(NAME)
    assert not verdict.accepted and any("sm_90 to sm_90" in r for r in verdict.reasons)


def test_every_feature_it_takes_is_accepted_when_opted_in():
    for fields in FEATURES.values():
        for head_dim in tiles.HEAD_DIMS:
            desc = _desc(head_dim=head_dim, **fields)
            assert explain(desc, "sm_90", prefer=NAME).of(NAME).accepted, (fields, head_dim)


def test_pinned_tiles_it_cannot_build_are_refused():
    backend = registry.get(NAME)
    for config in ({"block_m": 64, "block_n": 128, "num_warps": 8}, {"block_m": 128, "block_n": 104, "num_warps": 12}):
        with pytest.raises(ValueError):
            backend.dispatch_key(GATED, SM90, config)


def test_the_tiles_variable_names_a_tile_per_head_dim_and_bad_ones_are_reasons(monkeypatch):
    desc64, desc128 = _desc(head_dim=64), _desc(head_dim=128)
    monkeypatch.setenv(tiles.TILES_VARIABLE, "128x128, 128:192x80")
    assert tiles.choose_tiles(desc64, 90, "overlap") == TileConfig(128, 128, 12)
    assert tiles.choose_tiles(desc128, 90, "overlap") == TileConfig(192, 80, 16)
    assert "_m192n80w16s2_overlap" in NvrtcBackend(sm90a.GENERATION).dispatch_key(desc128, SM90).name
    for text, words in (("192x", "not BMxBN"), ("64:256x128", "block_m=256"), ("128x100", "block_n=100"),
                        ("256:128x128", "shared memory")):
        monkeypatch.setenv(tiles.TILES_VARIABLE, text)
        desc = _desc(head_dim=256) if text.startswith("256") else desc64
        with pytest.raises(ValueError, match=words):
            tiles.choose_tiles(desc, 90, "overlap")
        assert any(words.split()[0] in r for r in NvrtcBackend(sm90a.GENERATION).reasons(desc, SM90))
    monkeypatch.setenv(tiles.TILES_VARIABLE, "192x128")
    with pytest.raises(ValueError, match="two consumers"):
        tiles.choose_tiles(desc64, 90, "pingpong")


def _record_at(monkeypatch, tmp_path, rungs: dict):
    """The sm90a backend reading a verification record of `rungs` (rung -> record fields) instead of the package's."""
    record = tmp_path / "verified.json"
    record.write_text(json.dumps({"rungs": {r: {"device": "NVIDIA H200", "date": "x", "results": "y", **extra}
                                            for r, extra in rungs.items()}}))
    backend = registry.get(NAME)
    monkeypatch.setattr(backend, "generation", attrs.evolve(backend.generation, verification=record))


def test_head_dims_192_and_192_by_128_are_gated_per_head_dim_pair(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    monkeypatch.delenv(sm90a.RUNG_VARIABLE, raising=False)
    cases = [(192, (128, 112)), (128, (128, 128))]
    # The package's record: the H200 ladder of 2026-12-02 verified both pairs on every rung.
    for head_dim_v, tile in cases:
        desc = _desc(head_dim=192, head_dim_v=head_dim_v, causal=True)
        t = tiles.choose_tiles(desc, 90, sm90a.choose_rung(desc, 90))
        assert (t.block_m, t.block_n) == tile
        assert explain(desc, "sm_90").of(NAME).accepted
    # A record that names only the first head dims gates the rest, with the pair in the reason.
    _record_at(monkeypatch, tmp_path, {r: {"head_dims": [[64, 64], [128, 128], [256, 256]]} for r in sm90a.RUNGS})
    for head_dim_v, _ in cases:
        desc = _desc(head_dim=192, head_dim_v=head_dim_v, causal=True)
        verdict = explain(desc, "sm_90").of(NAME)
        assert not verdict.accepted
        assert f"at head dims 192/{head_dim_v}; verified: 64/64, 128/128, 256/256" in verdict.reasons[0]
        assert explain(desc, "sm_90", prefer=NAME).of(NAME).accepted           # the opt-in runs it
    # V narrower than Q only as 192 / 128; a wide output with ALiBi keeps "tma" (the overlap would spill)
    bad = _desc(head_dim=128, head_dim_v=64)
    assert any("head_dim_v=64 with head_dim=128" in r and "128 with 192" in r
               for r in explain(bad, "sm_90", prefer=NAME).of(NAME).reasons)
    assert sm90a.choose_rung(_desc(head_dim=192, alibi=True), 90) == "tma"
    assert sm90a.choose_rung(_desc(head_dim=192, head_dim_v=128, alibi=True), 90) == "overlap"


def test_a_record_without_head_dims_verifies_every_head_dim(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    monkeypatch.delenv(sm90a.RUNG_VARIABLE, raising=False)
    record = tmp_path / "verified.json"
    record.write_text(json.dumps({"rungs": {r: {"device": "x", "date": "y", "results": "z"} for r in sm90a.RUNGS}}))
    backend = registry.get(NAME)
    monkeypatch.setattr(backend, "generation", attrs.evolve(backend.generation, verification=record))
    assert explain(_desc(head_dim=192, head_dim_v=128), "sm_90").of(NAME).accepted


def test_the_wgmma_rung_has_no_producer_and_is_gated_like_the_others(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    monkeypatch.setenv(sm90a.RUNG_VARIABLE, "wgmma")
    backend = NvrtcBackend(sm90a.GENERATION)
    key = backend.dispatch_key(GATED, SM90)
    assert key.rung == "wgmma" and key.tiles.num_warps == 8 and "_m128n176w8s2_wgmma_" in key.name
    assert key.defines()["RUNG_WGMMA"] == 1
    assert "wgmma" in verified_rungs(sm90a.VERIFICATION)                   # the H200 ladder of 2026-12-02
    assert explain(GATED, "sm_90").of(NAME).accepted
    _record_at(monkeypatch, tmp_path, {r: {} for r in sm90a.RUNGS if r != "wgmma"})
    verdict = explain(GATED, "sm_90").of(NAME)
    assert not verdict.accepted and "not verified on a GPU yet (rung 'wgmma')" in verdict.reasons[0]
    assert explain(GATED, "sm_90", prefer=NAME).of(NAME).accepted


def test_launch_order_variable(monkeypatch):
    causal, dense = PLUMBING, PLUMBING.replace(causal=False)
    assert tiles.launch_longest_first(causal) and not tiles.launch_longest_first(dense)
    monkeypatch.setenv(tiles.ORDER_VARIABLE, "classic")
    assert not tiles.launch_longest_first(causal)
    _, runner = _runner(causal)
    assert runner.grid == (1, math.ceil(300 / 128), 16)
    monkeypatch.setenv(tiles.ORDER_VARIABLE, "waves")
    assert tiles.launch_longest_first(dense)
    monkeypatch.setenv(tiles.ORDER_VARIABLE, "lpt")
    with pytest.raises(ValueError, match="ATTNPLAN_SM90A_ORDER='lpt'.*waves, classic"):
        tiles.launch_longest_first(causal)
