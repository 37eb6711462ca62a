"""Kernel generations as pluggable units: a generation defined here (its CUDA entry under
tests/data/kernels/testgen/, an opaque tensor-map field in its parameter struct, sm_90a only) is
registered like a built-in one, shows in explain, is nameable in prefer / restrict, and builds (an
NVRTC compile for sm_90a, no launch) on a described device; every generation's SKU pins its kernel
source and compile options and round-trips through JSON."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from attnplan import AttentionDescriptor, KernelSku, Plan, SkuMismatch, explain, registry
from attnplan.capabilities import Capabilities
from attnplan.device import Device
from attnplan.errors import KernelCompileError

compiler = pytest.importorskip("attnplan.backends.nvrtc.compiler")
from attnplan.backends.nvrtc import GENERATIONS, Generation, Module, NvrtcBackend, params, sm80  # noqa: E402
from attnplan.backends.nvrtc.dispatch import TileConfig  # noqa: E402

try:
    compiler.nvrtc_version()
except compiler.NvrtcUnavailable as exc:  # pragma: no cover - CI installs NVRTC
    pytest.skip(f"NVRTC unavailable: {exc}", allow_module_level=True)

TEST_KERNELS = Path(__file__).parent / "data" / "kernels"
TENSOR_MAP = params.Opaque(size=128, align=64)       # a CUtensorMap
TEST_TILE = TileConfig(64, 64, 4)
SM90 = Device.cuda(arch=90)


class CompileOnlyRunner:
    """The test generation's runner: built like any other, never launched."""

    notes = "testgen: compile-only"

    def __init__(self, desc, key, cubin, shared, device, struct):
        self.cubin, self.shared, self.struct = cubin, shared, struct

    def check_arguments(self, bound) -> None:
        return None

    def __call__(self, *args) -> None:
        raise RuntimeError("the testgen generation only compiles")


def _testgen_tiles(desc, arch, rung=""):
    return TEST_TILE


def _testgen_entry_points(key):
    return ("attn_fwd_kernel",)


def _testgen_shared_memory(key):
    return key.tiles.block_m * key.head_dim * 2      # testgen/fwd.cu kSmemBytes


TEST_GENERATION = Generation(
    name="testgen",
    capabilities=Capabilities(devices=frozenset({"cuda"}), min_arch=90, max_arch=90, dtypes=frozenset({"f16", "bf16"}),
                              directions=frozenset({"forward"}), head_dims=frozenset({64, 128}),
                              head_dim_v_differs=False, paged=False, bias=False),
    choose_tiles=_testgen_tiles,
    forward=Module(entry_file="testgen/fwd.cu", params=params.STANDARD["forward"].extended([("tensor_map", TENSOR_MAP)]),
                   entry_points=_testgen_entry_points, shared_memory=_testgen_shared_memory, runner=CompileOnlyRunner),
    smem_limit=lambda arch: 227 * 1024,
    arch_suffix="a",
    kernels_dir=TEST_KERNELS,
)
TESTGEN = "nvrtc.testgen"
# Among bench/sass_fingerprint.py's ci keys for sm_90, so the kernel cache usually has them.
FORWARD = AttentionDescriptor(batch=2, seqlen_q=256, seqlen_kv=256, heads_q=4, heads_kv=2, head_dim=64, dtype="bf16")
DETERMINISTIC_BACKWARD = FORWARD.replace(head_dim=128, head_dim_v=128, direction="backward", deterministic=True)


@pytest.fixture
def testgen():
    backend = NvrtcBackend(TEST_GENERATION)
    registry.register(backend)
    yield backend
    registry.unregister(backend.name)


def test_the_test_generation_is_a_verdict_of_its_own(testgen):
    verdicts = explain(FORWARD, "sm_90")
    names = [v.backend for v in verdicts]
    assert "nvrtc.sm80" in names and TESTGEN in names
    mine = verdicts.of(TESTGEN)
    assert mine.accepted, mine.reasons
    assert mine.kernel == "attn_testgen_fwd_bf16_d64x64_m64n64w4_sm90a"
    for device in ("sm_80", "sm_100"):              # Hopper only: its capabilities say so
        rejected = explain(FORWARD, device).of(TESTGEN)
        assert not rejected.accepted and any("sm_90 to sm_90" in r for r in rejected.reasons), rejected.reasons
    assert verdicts.of("nvrtc.sm80").accepted         # the built-in generation is unaffected


def test_the_test_generation_is_nameable_in_prefer_and_restrict(testgen):
    assert [v.backend for v in explain(FORWARD, "sm_90", prefer=TESTGEN)][0] == TESTGEN
    assert [b.name for b in registry.ordered(TESTGEN, restrict=True)] == [TESTGEN]
    family = [b.name for b in registry.ordered("nvrtc", restrict=True)]
    assert family == [f"nvrtc.{g.name}" for g in GENERATIONS] + [TESTGEN]
    plan = Plan.select(FORWARD, "sm_90", prefer=TESTGEN, restrict=True, policy="first")
    assert plan.backend is testgen and plan.sku.backend == TESTGEN


def test_its_build_compiles_for_sm90a_and_its_sku_is_its_own(testgen):
    plan = Plan.select(FORWARD, "sm_90", prefer=TESTGEN, restrict=True, policy="first")
    sku, key = plan.sku, testgen.dispatch_key(FORWARD, plan.device)
    assert sku.kernel == key.name and sku.kernel.endswith("_sm90a") and sku.arch == "sm_90"
    config = sku.config_dict
    assert "--gpu-architecture=sm_90a" in config["options"]
    assert f"-DATTN_EXPECTED_SMEM_BYTES={64 * 64 * 2}" in config["options"]      # checked by testgen/fwd.cu
    assert "EXPECTED" not in sku.kernel                                             # never in the name
    assert config["source_hash"] == compiler.source_hash(key, TEST_GENERATION)
    sm80_sku = Plan.select(FORWARD, "sm_90", prefer="nvrtc.sm80", restrict=True, policy="first").sku
    assert sm80_sku.config_dict["source_hash"] != config["source_hash"]           # its own sources
    assert "--gpu-architecture=sm_90" in sm80_sku.config_dict["options"]          # sm80: the device's arch
    runner = plan._executable.forward
    assert runner.cubin[:4] == b"\x7fELF" and runner.struct.offsets["tensor_map"] % 64 == 0
    assert sku.notes == CompileOnlyRunner.notes and sku.workspace_bytes == 0
    with pytest.raises(RuntimeError, match="only compiles"):
        runner()


def test_a_wrong_shared_memory_formula_fails_the_compile():
    wrong = attrs.evolve(TEST_GENERATION, forward=attrs.evolve(TEST_GENERATION.forward, shared_memory=lambda key: 4096))
    with pytest.raises(KernelCompileError, match="shared-memory formula disagrees"):
        NvrtcBackend(wrong).build(FORWARD, SM90)


def test_compile_arch_and_arch_range():
    assert TEST_GENERATION.compile_arch(90) == "sm_90a" and sm80.GENERATION.compile_arch(90) == "sm_90"
    assert sm80.GENERATION.compile_arch(89) == "sm_89"
    assert (TEST_GENERATION.min_arch, TEST_GENERATION.max_arch) == (90, 90) and sm80.GENERATION.min_arch == 80


def test_a_generation_must_have_the_modules_it_declares():
    with pytest.raises(ValueError, match="no backward module"):
        attrs.evolve(TEST_GENERATION, capabilities=attrs.evolve(TEST_GENERATION.capabilities,
                                                                directions=frozenset({"forward", "backward"})))


def test_keys_of_an_unlisted_generation_need_it_named():
    key = NvrtcBackend(TEST_GENERATION).dispatch_key(FORWARD, SM90)
    with pytest.raises(KeyError, match="no kernel generation 'testgen'"):
        compiler.source_for(key)
    with pytest.raises(ValueError, match="not 'sm80'"):
        compiler.source_for(key, sm80.GENERATION)
    assert compiler.entry_points(key, TEST_GENERATION) == ("attn_fwd_kernel",)


# -- SKUs that pin --------------------------------------------------------------------------------

CASES = [(f"nvrtc.{g.name}", FORWARD) for g in GENERATIONS] + [("nvrtc.sm80", DETERMINISTIC_BACKWARD),
                                                              (TESTGEN, FORWARD)]


@pytest.mark.parametrize("name, desc", CASES, ids=lambda c: c if isinstance(c, str) else c.direction)
def test_sku_round_trips_through_json_and_refuses_other_source(name, desc, testgen, tmp_path):
    plan = Plan.select(desc, "sm_90", prefer=name, restrict=True, policy="first")
    assert plan.sku.backend == name
    path = tmp_path / "sku.json"
    path.write_text(plan.sku.to_json())
    sku = KernelSku.from_json(path.read_text())
    pinned = Plan.from_sku(desc, sku, "sm_90")
    assert pinned.sku.kernel == plan.sku.kernel and pinned.sku.identity() == plan.sku.identity()
    assert pinned.sku == plan.sku

    other_source = KernelSku.from_dict({**sku.to_dict(), "config": {**sku.config_dict, "source_hash": "0" * 16}})
    with pytest.raises(SkuMismatch, match="kernel source changed"):
        Plan.from_sku(desc, other_source, "sm_90")

    config = sku.config_dict
    other_tile = KernelSku.from_dict({**sku.to_dict(), "config": {**config, "block_n": config["block_n"] // 2}})
    with pytest.raises(SkuMismatch, match=f"BLOCK_N={config['block_n']}"):     # the pinned options say otherwise
        Plan.from_sku(desc, other_tile, "sm_90")


def test_a_sku_without_pins_still_builds_but_is_not_the_same_sku():
    """A SKU written before SKUs pinned their source: the build takes it, the identity check does not."""
    sku = Plan.select(FORWARD, "sm_90", prefer="nvrtc.sm80", restrict=True, policy="first").sku
    unpinned = {k: v for k, v in sku.config_dict.items() if k not in ("source_hash", "options")}
    backend = registry.get("nvrtc.sm80")
    assert backend.build(FORWARD, SM90, unpinned).sku == sku
    with pytest.raises(SkuMismatch, match="pinned SKU is"):
        Plan.from_sku(FORWARD, KernelSku.from_dict({**sku.to_dict(), "config": unpinned}), "sm_90")


# -- the GPU-verification gate ------------------------------------------------------------------

@pytest.fixture
def gated(tmp_path):
    """The test generation with a verification record in tmp_path and rungs chosen by head dim."""
    record = tmp_path / "verified.json"
    generation = attrs.evolve(TEST_GENERATION, verification=record,
                              rung=lambda desc, arch: "wide" if desc.head_dim > 64 else "narrow")
    backend = NvrtcBackend(generation)
    registry.register(backend)
    yield backend, record
    registry.unregister(backend.name)


def test_an_unverified_rung_is_not_ranked_and_says_why(gated, monkeypatch):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    backend, record = gated
    verdicts = explain(FORWARD, "sm_90")
    verdict = verdicts.of(TESTGEN)
    assert not verdict.accepted and not verdict.capable and TESTGEN not in verdicts.ranking
    assert "not verified on a GPU yet (rung 'narrow')" in verdict.reasons[0]
    assert f"prefer={TESTGEN!r}" in verdict.reasons[0] and "ATTNPLAN_UNVERIFIED" in verdict.reasons[0]


def test_prefer_naming_it_or_the_environment_opts_in(gated, monkeypatch):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    assert explain(FORWARD, "sm_90", prefer=TESTGEN).of(TESTGEN).accepted
    assert not explain(FORWARD, "sm_90", prefer="nvrtc").of(TESTGEN).accepted      # a family is no opt-in
    monkeypatch.setenv("ATTNPLAN_UNVERIFIED", f"other,{TESTGEN}")
    assert explain(FORWARD, "sm_90").of(TESTGEN).accepted
    monkeypatch.setenv("ATTNPLAN_UNVERIFIED", "all")
    assert explain(FORWARD, "sm_90").of(TESTGEN).accepted


def test_the_record_ungates_exactly_the_rungs_it_lists(gated, monkeypatch):
    monkeypatch.delenv("ATTNPLAN_UNVERIFIED", raising=False)
    backend, record = gated
    record.write_text(json.dumps({"rungs": {"narrow": {"device": "NVIDIA H200", "date": "2026-12-01",
                                                       "results": "bench/results/x.json"}}}))
    assert explain(FORWARD, "sm_90").of(TESTGEN).accepted                                    # d64: narrow
    wide = explain(FORWARD.replace(head_dim=128, head_dim_v=128), "sm_90").of(TESTGEN)
    assert not wide.accepted and "rung 'wide'" in wide.reasons[0]
    record.write_text("{not json")                                                          # damaged: nothing
    assert not explain(FORWARD, "sm_90").of(TESTGEN).accepted


@pytest.mark.parametrize("fields, backend, words", [
    (dict(batch=65536), "nvrtc.sm80", "batch=65536"),
    (dict(heads_q=65536, heads_kv=1), "nvrtc.sm80", "heads_q=65536"),
    (dict(seqlen_q=65535 * 128 + 1, head_dim=128), "nvrtc.sm90a", "query tiles"),
])
def test_a_grid_past_the_cuda_limits_is_a_planner_reason(fields, backend, words):
    """gridDim.y / .z hold at most 65535: a problem that needs more is declined with why, not launched."""
    desc = AttentionDescriptor(**{**dict(batch=1, seqlen_q=16, seqlen_kv=16, heads_q=2, heads_kv=2, head_dim=64,
                                         dtype="bf16"), **fields})
    verdict = explain(desc, "sm_90").of(backend)
    assert not verdict.accepted and any(words in reason for reason in verdict.reasons), verdict.reasons
