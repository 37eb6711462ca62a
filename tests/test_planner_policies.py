"""The planner's policies over fake backends and a fake speed table, on the CPU: "fastest" (the table's
expected times, the near-tie rule, guesses), "first" (registration order), "autotune" (a fake timer,
the on-disk cache, the fallback on a described device), last-resort backends, $ATTNPLAN_POLICY and
unknown policies, prefer/restrict and Plan.from_sku over the policy, and the verdicts' JSON and table.

Only the fake backends are visible to the planner here (`registry.backends` is narrowed to them), so
the real ones (nvrtc, cuDNN, the reference) cannot change an outcome; the table is injected through
`attnplan.plan.table_for`."""

import json
from typing import Optional

import numpy as np
import pytest

import attnplan
import attnplan.plan
from attnplan import (AttentionDescriptor, Device, InvalidPolicy, KernelSku, NoPlanError, Plan, PrecisionGuarantee,
                      SkuMismatch, explain, registry)
from attnplan import cli
from attnplan.backend import Backend, Executable
from attnplan.capabilities import Capabilities
from attnplan.plan import assess
from attnplan.tuning import autotune
from attnplan.tuning.autotune_cache import TuningEntry
from attnplan.tuning.table import Cell, CellKey, PerfTable

# The problem `attnplan explain --device sm_90` describes by default (bf16, d128, seqlen 2048, LSE).
DESC = AttentionDescriptor(batch=4, seqlen_q=2048, seqlen_kv=2048, heads_q=16, heads_kv=16, head_dim=128,
                           dtype="bf16", return_lse=True)
SM90 = Device.cuda(arch=90)                                 # described, not present
GPU = Device("cuda", 0, 90, "Fake GPU", True)              # "present": autotune measures on it
# The cell DESC reads (after the candidate's name): direction, dtype, head-dim bucket, causal, features.
CELL_FIELDS = ("forward", "bf16", 128, False, "plain")

# Guarantees, weakest to strongest by the tie rule's order.
RACY = PrecisionGuarantee("bf16", "f32", deterministic=False, bit_stable=False)
DETERMINISTIC = PrecisionGuarantee("bf16", "f32", deterministic=True, bit_stable=False)
STABLE = PrecisionGuarantee("bf16", "f32", deterministic=True, bit_stable=True)


class FakeBackend(Backend):
    """A CUDA backend for f16/bf16 that builds nothing real.  `missing` (availability) and `cannot`
    (own reasons) can be set by a test to make it reject."""

    def __init__(self, name: str, precision: PrecisionGuarantee = STABLE, last_resort: bool = False,
                 dtypes=("f16", "bf16")):
        self.name, self.last_resort, self._precision = name, last_resort, precision
        self.capabilities = Capabilities(devices=frozenset({"cuda"}), min_arch=80, dtypes=frozenset(dtypes))
        self.missing: list = []
        self.cannot: list = []
        self.builds = 0

    def reasons(self, desc, device):
        return list(self.cannot)

    def availability(self, desc, device):
        return list(self.missing)

    def precision(self, desc, device):
        return self._precision

    def kernel_name(self, desc, device):
        return f"{self.name.replace('.', '_')}_{desc.direction}_{desc.dtype}_d{desc.head_dim}"

    def build(self, desc, device, config: Optional[dict] = None) -> Executable:
        self.builds += 1
        config = dict(config) if config else {"tile": 64}
        if set(config) != {"tile"}:
            raise ValueError(f"unknown config {config}")
        sku = KernelSku(backend=self.name, kernel=self.kernel_name(desc, device), arch=device.arch_name,
                        dtype=desc.dtype, precision=self._precision, config=config)
        return Executable(sku=sku, workspace_size=0, forward=lambda bound, out, lse: None)


class World:
    """The fake backends of one test (in registration order) and their table cells (TFLOP/s)."""

    def __init__(self):
        self.names: list[str] = []
        self.tflops: dict[str, float] = {}
        self.cells: list[Cell] = []          # extra cells (e.g. one that does not reach DESC)
        self.table_calls: list[str] = []

    def add(self, name: str, tflops: Optional[float] = None, precision: PrecisionGuarantee = STABLE, *,
            last_resort: bool = False, first: bool = False, dtypes=("f16", "bf16")) -> FakeBackend:
        assert name.startswith("fake"), "fake names must not shadow a real backend"
        backend = FakeBackend(name, precision, last_resort, dtypes)
        registry.register(backend, first=first)
        self.names.append(name)
        if tflops is not None:
            self.tflops[name] = tflops
        return backend

    def table(self, arch_name: str) -> Optional[PerfTable]:
        self.table_calls.append(arch_name)
        if arch_name != "sm_90":
            return None
        cells = [Cell(CellKey(name, *CELL_FIELDS), (2048,), (tflops,)) for name, tflops in self.tflops.items()]
        return PerfTable("sm_90", cells + self.cells, origin="test")

    def us(self, name: str) -> float:
        """The time the table gives `name` on DESC."""
        return DESC.flops() / (self.tflops[name] * 1e12) * 1e6


@pytest.fixture
def world(monkeypatch):
    world = World()
    real_backends = registry.backends
    # Only this test's fakes are visible to the planner (ordered, resolve, get, the tuning key).
    monkeypatch.setattr(registry, "backends", lambda: [b for b in real_backends() if b.name in world.names])
    monkeypatch.setattr(attnplan.plan, "table_for", world.table)
    monkeypatch.delenv("ATTNPLAN_POLICY", raising=False)
    try:
        yield world
    finally:
        for name in world.names:
            registry.unregister(name)
        assert not [b for b in real_backends() if b.name.startswith("fake")]


class FakeTimer:
    """Stands in for `autotune.measure`: `ms` holds each backend's "measured" median."""

    def __init__(self):
        self.ms: dict[str, float] = {}
        self.calls: list[tuple] = []

    def __call__(self, desc, device, names, **_):
        self.calls.append(tuple(names))
        timed = {name: self.ms[name] for name in names}
        winner = min(timed, key=timed.get)
        sku = registry.get(winner).build(desc, device).sku
        return TuningEntry(key=autotune.tuning_key(desc, device, list(names)), winner=winner,
                           winner_sku=sku.to_dict(), timings_ms=timed,
                           tflops={name: tflops_at(ms) for name, ms in timed.items()})


def tflops_at(ms: float) -> float:
    return DESC.flops() / (ms * 1e-3) / 1e12


@pytest.fixture
def timer(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNPLAN_TUNING_DIR", str(tmp_path / "tuning"))
    fake = FakeTimer()
    monkeypatch.setattr(autotune, "measure", fake)
    return fake


def cached_entries(tmp_path) -> list:
    folder = tmp_path / "tuning"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


# -- "fastest" ----------------------------------------------------------------------------------

def test_fastest_ranks_every_capable_candidate_by_the_table(world):
    world.add("fake_slow", 300)
    world.add("fake_best", 500)
    world.add("fake_mid", 400)
    world.add("fake_f32_only", 5000, dtypes=("f32",))          # not capable: not ranked at all
    absent = world.add("fake_absent", 900)                    # capable, but this machine lacks it
    absent.missing = ["fake library is not installed"]

    verdicts = explain(DESC, SM90)
    assert [v.backend for v in verdicts] == ["fake_slow", "fake_best", "fake_mid", "fake_f32_only", "fake_absent"]
    assert verdicts.policy == "fastest"
    assert verdicts.ranking == ("fake_absent", "fake_best", "fake_mid", "fake_slow")
    assert verdicts.choice == "fake_best"                     # the fastest that can run here
    assert verdicts.why.startswith("fastest by the sm90.json table: fake_absent ")
    why_order = [verdicts.why.index(f"{name} ") for name in verdicts.ranking]
    assert why_order == sorted(why_order)                      # the reason lists them fastest first
    assert f"fake_best {world.us('fake_best'):.1f} us" in verdicts.why
    assert verdicts.why.endswith("; fake_absent cannot run on this machine")
    assert "sm_90" in world.table_calls

    best = verdicts.of("fake_best")
    assert best.accepted and best.capable and best.reasons == ()
    assert best.kernel == "fake_best_forward_bf16_d128"
    assert best.estimate_tflops == 500.0 and best.estimate_us == pytest.approx(world.us("fake_best"), abs=0.01)
    assert best.estimate_source.startswith("sm90.json: forward bf16 d<=128 plain, measured")
    assert best.measured_ms is None and best.measured_tflops is None
    f32_only = verdicts.of("fake_f32_only")
    assert not f32_only.accepted and not f32_only.capable and f32_only.kernel == "-"
    assert any("'bf16' not supported" in r for r in f32_only.reasons) and f32_only.estimate_tflops is None
    absent_verdict = verdicts.of("fake_absent")
    assert not absent_verdict.accepted and absent_verdict.capable
    assert absent_verdict.reasons == ("fake library is not installed",) and absent_verdict.estimate_tflops == 900.0

    plan = Plan.select(DESC, SM90)
    assert plan.backend.name == "fake_best" and plan.sku.backend == "fake_best"
    assert plan.verdicts.choice == "fake_best" and plan.verdicts.ranking == verdicts.ranking


def test_no_table_for_the_arch_makes_it_a_guess(world):
    world.add("fake_a", 300)
    world.add("fake_b", 900)
    verdicts = explain(DESC, Device.cuda(arch=80))           # world.table has nothing for sm_80
    assert verdicts.ranking == ("fake_a", "fake_b") and verdicts.choice == "fake_a"
    assert verdicts.why.startswith("guess: ") and "sm80.json" in verdicts.why and "fake_a, fake_b" in verdicts.why
    assert all(v.estimate_tflops is None for v in verdicts)


# -- the near-tie rule --------------------------------------------------------------------------

NEAR_TIE_CASES = {
    # name: (the faster plan's guarantee, the slower plan's better one)
    "deterministic": (RACY, DETERMINISTIC),
    "deterministic over precision": (PrecisionGuarantee("f32", "f64", False, False),
                                     PrecisionGuarantee("bf16", "bf16", True, False)),
    "bit_stable": (DETERMINISTIC, STABLE),
    "bit_stable over precision": (PrecisionGuarantee("f32", "f64", True, False),
                                  PrecisionGuarantee("bf16", "bf16", True, True)),
    "accumulator bits": (PrecisionGuarantee("f16", "f16", True, True), PrecisionGuarantee("f16", "f32", True, True)),
    "accumulator over math bits": (PrecisionGuarantee("f32", "f16", True, True),
                                   PrecisionGuarantee("bf16", "f32", True, True)),
    "math bits": (PrecisionGuarantee("bf16", "f32", True, True), PrecisionGuarantee("f16", "f32", True, True)),
}


@pytest.mark.parametrize("slower_first", [False, True], ids=["faster-registered-first", "slower-registered-first"])
@pytest.mark.parametrize("case", list(NEAR_TIE_CASES))
def test_within_three_percent_the_better_guarantee_wins(world, case, slower_first):
    weaker, stronger = NEAR_TIE_CASES[case]
    order = [("fake_sure", 500, stronger), ("fake_quick", 510, weaker)]      # 2% apart
    for name, tflops, precision in (order if slower_first else order[::-1]):
        world.add(name, tflops, precision)
    verdicts = explain(DESC, SM90)
    assert verdicts.ranking == ("fake_sure", "fake_quick") and verdicts.choice == "fake_sure"
    assert "(fake_sure is within 3% of the fastest and has the better guarantee)" in verdicts.why
    assert Plan.select(DESC, SM90).backend.name == "fake_sure"


@pytest.mark.parametrize("slower_first", [False, True], ids=["faster-registered-first", "slower-registered-first"])
@pytest.mark.parametrize("case", list(NEAR_TIE_CASES))
def test_four_percent_apart_the_faster_wins_regardless(world, case, slower_first):
    weaker, stronger = NEAR_TIE_CASES[case]
    order = [("fake_sure", 500, stronger), ("fake_quick", 520, weaker)]      # 4% apart
    for name, tflops, precision in (order if slower_first else order[::-1]):
        world.add(name, tflops, precision)
    verdicts = explain(DESC, SM90)
    assert world.us("fake_sure") / world.us("fake_quick") == pytest.approx(1.04)
    assert verdicts.ranking == ("fake_quick", "fake_sure") and verdicts.choice == "fake_quick"
    assert "within 3%" not in verdicts.why
    assert Plan.select(DESC, SM90).backend.name == "fake_quick"


def test_near_tie_with_equal_guarantees_goes_to_the_faster(world):
    world.add("fake_slower", 500)
    world.add("fake_faster", 510)
    verdicts = explain(DESC, SM90)
    assert verdicts.ranking == ("fake_faster", "fake_slower") and "within 3%" not in verdicts.why


def test_near_tie_applies_again_down_the_ranking(world):
    # 600 is alone at the top; then 500 (racy) and 495 (deterministic) are 1% apart.
    world.add("fake_top", 600, RACY)
    world.add("fake_racy", 500, RACY)
    world.add("fake_sure", 495, STABLE)
    world.add("fake_far", 400, STABLE)
    assert explain(DESC, SM90).ranking == ("fake_top", "fake_sure", "fake_racy", "fake_far")


# -- guesses --------------------------------------------------------------------------------------

@pytest.mark.parametrize("unmeasured_first", [False, True])
def test_a_candidate_without_a_cell_makes_the_ranking_a_guess(world, unmeasured_first):
    if unmeasured_first:
        world.add("fake_unmeasured")
    world.add("fake_slow", 300)
    world.add("fake_fast", 900)
    if not unmeasured_first:
        world.add("fake_unmeasured")
    verdicts = explain(DESC, SM90)
    expected = ("fake_unmeasured", "fake_slow", "fake_fast") if unmeasured_first else \
        ("fake_slow", "fake_fast", "fake_unmeasured")
    assert verdicts.ranking == expected                       # the default (registration) order
    assert verdicts.choice == expected[0]
    assert verdicts.why.startswith("guess: ")
    assert "the sm90.json table has no estimate for fake_unmeasured; the default order decides" in verdicts.why
    assert verdicts.of("fake_unmeasured").estimate_tflops is None
    assert Plan.select(DESC, SM90).backend.name == expected[0]


def test_a_cell_that_does_not_reach_the_problem_is_no_estimate(world):
    world.add("fake_slow", 300)
    world.add("fake_short", None)
    world.add("fake_fast", 900)
    # Measured at seqlen 64 only: 2048 is beyond its reach (8x), so it does not apply.
    world.cells.append(Cell(CellKey("fake_short", *CELL_FIELDS), (64,), (5000,)))
    verdicts = explain(DESC, SM90)
    assert verdicts.of("fake_short").estimate_tflops is None
    assert verdicts.ranking == ("fake_slow", "fake_short", "fake_fast") and verdicts.why.startswith("guess")


def test_a_last_resort_without_a_cell_does_not_make_a_guess(world):
    world.add("fake_reference", None, last_resort=True)
    world.add("fake_slow", 300)
    world.add("fake_fast", 900)
    verdicts = explain(DESC, SM90)
    assert verdicts.ranking == ("fake_fast", "fake_slow", "fake_reference")
    assert verdicts.why.startswith("fastest by the sm90.json table")


# -- last resort ----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["fastest", "first", "autotune"])
def test_a_last_resort_ranks_last_under_every_policy(world, timer, policy):
    world.add("fake_reference", 5000, last_resort=True, first=True)     # registered first, "fastest" by far
    world.add("fake_a", 300)
    world.add("fake_b", 400)
    timer.ms = {"fake_reference": 0.001, "fake_a": 2.0, "fake_b": 1.0}
    device = GPU if policy == "autotune" else SM90
    plan = Plan.select(DESC, device, policy=policy)
    expected = ("fake_a", "fake_b") if policy == "first" else ("fake_b", "fake_a")
    assert plan.verdicts.ranking == expected + ("fake_reference",)
    assert plan.backend.name == expected[0] and plan.verdicts.policy == policy
    if policy == "autotune":
        assert timer.calls == [("fake_a", "fake_b")]          # the last resort is not even timed
        assert plan.verdicts.why.startswith("fastest by autotune, measured now (Fake GPU)")
    else:
        assert timer.calls == []


def test_a_last_resort_is_chosen_when_nothing_else_can_run(world):
    world.add("fake_reference", 10, last_resort=True)
    for name in ("fake_a", "fake_b"):
        world.add(name, 300 if name == "fake_a" else 400).missing = ["not on this machine"]
    verdicts = explain(DESC, SM90)
    assert verdicts.ranking == ("fake_b", "fake_a", "fake_reference") and verdicts.choice == "fake_reference"
    assert verdicts.why.endswith("; fake_b, fake_a cannot run on this machine")
    assert Plan.select(DESC, SM90).backend.name == "fake_reference"


def test_only_a_last_resort_capable(world):
    world.add("fake_reference", 10, last_resort=True)
    world.add("fake_f32_only", 300, dtypes=("f32",))
    verdicts = explain(DESC, SM90)
    assert verdicts.ranking == ("fake_reference",) and verdicts.choice == "fake_reference"
    assert verdicts.why == "only fake_reference accepts"


# -- "first" --------------------------------------------------------------------------------------

def test_first_is_the_registration_order_whatever_the_speed(world):
    world.add("fake_slow", 100)
    world.add("fake_fast", 900)
    world.add("fake_mid", 500)
    verdicts = explain(DESC, SM90, policy="first")
    assert verdicts.policy == "first"
    assert verdicts.ranking == ("fake_slow", "fake_fast", "fake_mid") and verdicts.choice == "fake_slow"
    assert verdicts.why == "policy 'first': the default order (fake_slow first)"
    assert Plan.select(DESC, SM90, policy="first").backend.name == "fake_slow"
    world.add("fake_front", 1, first=True)                  # registered at the front: first now
    assert explain(DESC, SM90, policy="first").ranking == ("fake_front", "fake_slow", "fake_fast", "fake_mid")
    assert Plan.select(DESC, SM90, policy="first").backend.name == "fake_front"


def test_first_needs_no_table(world):
    world.add("fake_a")
    world.add("fake_b")
    verdicts = explain(DESC, SM90, policy="first")
    assert verdicts.ranking == ("fake_a", "fake_b") and not verdicts.why.startswith("guess")


# -- "autotune" -----------------------------------------------------------------------------------

def test_autotune_picks_the_measured_winner_and_then_reads_the_cache(world, timer, tmp_path):
    world.add("fake_table_fast", 900)
    world.add("fake_measured_fast", 300)
    timer.ms = {"fake_table_fast": 2.0, "fake_measured_fast": 1.0}
    assert explain(DESC, GPU).choice == "fake_table_fast"     # what the table says

    plan = Plan.select(DESC, GPU, policy="autotune")
    assert plan.backend.name == "fake_measured_fast" and plan.sku.backend == "fake_measured_fast"
    assert timer.calls == [("fake_table_fast", "fake_measured_fast")]
    verdicts = plan.verdicts
    assert verdicts.policy == "autotune" and verdicts.ranking == ("fake_measured_fast", "fake_table_fast")
    assert verdicts.why.startswith("fastest by autotune, measured now (Fake GPU): fake_measured_fast 1000.0 us")
    assert verdicts.of("fake_measured_fast").measured_ms == 1.0
    assert verdicts.of("fake_measured_fast").measured_tflops == pytest.approx(tflops_at(1.0))
    assert verdicts.of("fake_table_fast").measured_ms == 2.0
    assert verdicts.of("fake_table_fast").estimate_tflops == 900.0     # the estimate is still shown
    assert len(cached_entries(tmp_path)) == 1

    again = Plan.select(DESC, GPU, policy="autotune")
    assert again.backend.name == "fake_measured_fast"
    assert len(timer.calls) == 1                              # read from the cache: not timed again
    assert again.verdicts.why.startswith("fastest by the autotune cache (Fake GPU): fake_measured_fast")
    assert again.verdicts.of("fake_table_fast").measured_ms == 2.0


def test_autotune_explain_reads_the_cache_only(world, timer):
    world.add("fake_table_fast", 900)
    world.add("fake_measured_fast", 300)
    timer.ms = {"fake_table_fast": 2.0, "fake_measured_fast": 1.0}

    before = explain(DESC, GPU, policy="autotune")
    assert timer.calls == []                                  # explain measures nothing
    assert before.policy == "autotune" and before.choice == "fake_table_fast"
    assert "not autotuned yet" in before.why and before.why.startswith("fastest by the table")
    assert all(v.measured_ms is None and v.measured_tflops is None for v in before)

    Plan.select(DESC, GPU, policy="autotune")
    after = explain(DESC, GPU, policy="autotune")
    assert len(timer.calls) == 1
    assert after.choice == "fake_measured_fast" and after.ranking == ("fake_measured_fast", "fake_table_fast")
    assert after.why.startswith("fastest by the autotune cache (Fake GPU)")
    for name, ms in timer.ms.items():
        assert after.of(name).measured_ms == ms
        assert after.of(name).measured_tflops == pytest.approx(tflops_at(ms))
    data = after.as_json()
    assert {v["backend"]: v["measured_ms"] for v in data["verdicts"]} == timer.ms
    # The table prints the measured TFLOP/s where there is one.
    line = next(line for line in str(after).splitlines() if line.startswith("*"))
    assert line.split()[1:4] == ["fake_measured_fast", "fake_measured_fast_forward_bf16_d128",
                                 f"{tflops_at(1.0):.0f}"]


def test_autotune_on_a_described_device_falls_back_to_the_table(world, timer, tmp_path):
    world.add("fake_table_fast", 900)
    world.add("fake_measured_fast", 300)
    timer.ms = {"fake_table_fast": 2.0, "fake_measured_fast": 1.0}
    plan = Plan.select(DESC, SM90, policy="autotune")
    assert plan.backend.name == "fake_table_fast" and timer.calls == []
    why = plan.verdicts.why
    assert why.startswith("fastest by the table (autotune needs a present device; ")
    assert "(described, not present) is described)" in why
    assert plan.verdicts.policy == "autotune"
    assert all(v.measured_ms is None for v in plan.verdicts) and cached_entries(tmp_path) == []


@pytest.mark.parametrize("how", ["unregistered", "unavailable", "incapable"])
def test_autotune_retunes_when_the_cached_winner_no_longer_accepts(world, timer, how):
    world.add("fake_a", 900)
    winner = world.add("fake_b", 300)
    world.add("fake_c", 200)
    timer.ms = {"fake_a": 3.0, "fake_b": 1.0, "fake_c": 2.0}
    assert Plan.select(DESC, GPU, policy="autotune").backend.name == "fake_b"
    assert timer.calls == [("fake_a", "fake_b", "fake_c")]

    if how == "unregistered":
        registry.unregister("fake_b")
    elif how == "unavailable":
        winner.missing = ["gone"]
    else:
        winner.cannot = ["cannot any more"]
    plan = Plan.select(DESC, GPU, policy="autotune")
    assert plan.backend.name == "fake_c"
    assert timer.calls[1:] == [("fake_a", "fake_c")]         # measured again, without the old winner
    assert plan.verdicts.why.startswith("fastest by autotune, measured now")
    assert plan.verdicts.choice == "fake_c"

    if how == "unregistered":
        registry.register(winner)
    else:
        winner.missing, winner.cannot = [], []
    back = Plan.select(DESC, GPU, policy="autotune")       # its old verdict holds again
    assert back.backend.name == "fake_b" and len(timer.calls) == 2
    assert back.verdicts.why.startswith("fastest by the autotune cache")


def test_autotune_retune_measures_again(world, timer):
    world.add("fake_a", 900)
    world.add("fake_b", 300)
    timer.ms = {"fake_a": 2.0, "fake_b": 1.0}
    assert assess(DESC, GPU, policy="autotune", measure=True).choice == "fake_b"
    timer.ms = {"fake_a": 0.5, "fake_b": 1.0}
    assert assess(DESC, GPU, policy="autotune", measure=True).choice == "fake_b"       # cached
    assert len(timer.calls) == 1
    verdicts = assess(DESC, GPU, policy="autotune", measure=True, retune=True)
    assert verdicts.choice == "fake_a" and len(timer.calls) == 2
    assert Plan.select(DESC, GPU, policy="autotune").backend.name == "fake_a"       # the new verdict is kept
    assert len(timer.calls) == 2


# -- the default policy and unknown policies ------------------------------------------------------

def test_policy_env_sets_the_default(world, monkeypatch):
    world.add("fake_slow", 100)
    world.add("fake_fast", 900)
    monkeypatch.setenv("ATTNPLAN_POLICY", "first")
    assert explain(DESC, SM90).policy == "first"
    assert Plan.select(DESC, SM90).backend.name == "fake_slow"
    assert Plan.select(DESC, SM90, policy="fastest").backend.name == "fake_fast"       # the argument wins
    monkeypatch.setenv("ATTNPLAN_POLICY", "fastest")
    assert Plan.select(DESC, SM90).backend.name == "fake_fast"
    monkeypatch.setenv("ATTNPLAN_POLICY", "")                   # empty: the default
    assert explain(DESC, SM90).policy == "fastest"
    monkeypatch.delenv("ATTNPLAN_POLICY")
    assert explain(DESC, SM90).policy == "fastest"


def test_policy_env_reaches_attention(monkeypatch):
    """`attnplan.attention` resolves the policy per call (its plan cache is keyed by it)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 4, 2, 8)).astype(np.float32) for _ in range(3))
    expected = attnplan.attention(q, k, v, policy="fastest")
    monkeypatch.setenv("ATTNPLAN_POLICY", "first")
    from attnplan import api
    before = api._selected_plan.cache_info()
    assert np.allclose(attnplan.attention(q, k, v), expected)
    desc = attnplan.describe(q, k, v)
    assert api._selected_plan(desc, Device.cpu(), None, "first").verdicts.policy == "first"
    assert api._selected_plan.cache_info().hits > before.hits


def _q_k_v():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 4, 2, 8)).astype(np.float32) for _ in range(3)]


ENTRY_POINTS = {
    "Plan.select": lambda policy: Plan.select(DESC, SM90, policy=policy),
    "explain": lambda policy: explain(DESC, SM90, policy=policy),
    "attention": lambda policy: attnplan.attention(*_q_k_v(), policy=policy),
}


@pytest.mark.parametrize("value", ["slowest", "Fastest", ""])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_unknown_policy_argument_raises(value, entry):
    with pytest.raises(InvalidPolicy) as info:
        ENTRY_POINTS[entry](value)
    error = info.value
    assert isinstance(error, attnplan.AttnPlanError) and isinstance(error, ValueError)
    assert error.field == "policy" and error.value == value
    message = str(error)
    assert repr(value) in message and "fastest, first, autotune" in message


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_unknown_policy_env_raises(entry, monkeypatch, request):
    if entry != "attention":          # attention runs on the CPU (the real reference); the others on fakes
        world = request.getfixturevalue("world")
        world.add("fake_a", 300)
    monkeypatch.setenv("ATTNPLAN_POLICY", "quickest")
    with pytest.raises(InvalidPolicy) as info:
        ENTRY_POINTS[entry](None)
    error = info.value
    assert isinstance(error, attnplan.AttnPlanError) and isinstance(error, ValueError)
    assert error.field == "ATTNPLAN_POLICY" and error.value == "quickest"
    assert "ATTNPLAN_POLICY='quickest'" in str(error) and "fastest, first, autotune" in str(error)
    ENTRY_POINTS[entry]("first")                          # an explicit policy does not read the variable


# -- prefer / restrict / from_sku -----------------------------------------------------------------

def test_prefer_wins_over_the_policy(world):
    world.add("fake_fast", 900)
    world.add("fake_slow", 300)
    world.add("fake_mid", 500)
    for policy in ("fastest", "first"):
        verdicts = explain(DESC, SM90, prefer="fake_slow", policy=policy)
        assert verdicts.choice == "fake_slow" and verdicts.ranking[0] == "fake_slow"
        assert Plan.select(DESC, SM90, prefer="fake_slow", policy=policy).backend.name == "fake_slow"
    assert explain(DESC, SM90, prefer="fake_slow").why.startswith("preferred: fake_slow; fastest by ")
    verdicts = explain(DESC, SM90, prefer="fake_slow")
    assert verdicts.ranking == ("fake_slow", "fake_fast", "fake_mid")          # the rest by the policy
    assert [v.backend for v in verdicts] == ["fake_slow", "fake_fast", "fake_mid"]
    assert explain(DESC, SM90, prefer=["fake_mid", "fake_slow"]).ranking == ("fake_mid", "fake_slow", "fake_fast")
    # Preferring the policy's own choice changes nothing and says nothing.
    same = explain(DESC, SM90, prefer="fake_fast")
    assert same.choice == "fake_fast" and same.why.startswith("fastest by")


@pytest.mark.parametrize("policy", ["first", "fastest-guess"])
def test_why_says_prefer_decided_not_the_default_order(world, policy):
    world.add("fake_default_first", 900)
    world.add("fake_preferred", None if policy == "fastest-guess" else 300)      # no cell: a guess
    verdicts = explain(DESC, SM90, prefer="fake_preferred", policy=policy.split("-")[0])
    assert verdicts.choice == "fake_preferred"                                    # this part holds
    # The registry's default order has fake_default_first first; the preference moved fake_preferred up.
    assert verdicts.why.startswith("preferred: fake_preferred; "), verdicts.why
    assert "(fake_default_first first)" in verdicts.why, verdicts.why


def test_prefer_falls_through_and_restrict_limits(world):
    world.add("fake_fast", 900)
    world.add("fake_slow", 300).missing = ["not here"]
    plan = Plan.select(DESC, SM90, prefer="fake_slow")
    assert plan.backend.name == "fake_fast"
    assert plan.verdicts.why.endswith("; fake_slow cannot run on this machine")
    restricted = assess(DESC, SM90, prefer="fake_slow", restrict=True)
    assert [v.backend for v in restricted] == ["fake_slow"] and restricted.choice is None
    with pytest.raises(NoPlanError) as info:
        Plan.select(DESC, SM90, prefer="fake_slow", restrict=True)
    assert [v.backend for v in info.value.verdicts] == ["fake_slow"] and "not here" in str(info.value)
    with pytest.raises(KeyError, match="fake_nothing"):
        explain(DESC, SM90, prefer="fake_nothing")


def test_prefer_a_family(world):
    world.add("fakefam.x", 300)
    world.add("fake_solo", 900)
    world.add("fakefam.y", 400)
    verdicts = explain(DESC, SM90, prefer="fakefam")
    assert verdicts.ranking == ("fakefam.y", "fakefam.x", "fake_solo")      # the family in the policy's order
    assert verdicts.choice == "fakefam.y" and verdicts.why.startswith("preferred: fakefam; ")
    assert Plan.select(DESC, SM90, prefer="fakefam").backend.name == "fakefam.y"
    restricted = assess(DESC, SM90, prefer="fakefam", restrict=True)
    assert [v.backend for v in restricted] == ["fakefam.x", "fakefam.y"] and restricted.choice == "fakefam.y"
    assert Plan.select(DESC, SM90, prefer="fakefam", restrict=True, policy="first").backend.name == "fakefam.x"


def test_from_sku_returns_the_pinned_backend_even_when_another_is_faster(world):
    world.add("fake_fast", 900)
    slow = world.add("fake_slow", 300)
    assert Plan.select(DESC, SM90).backend.name == "fake_fast"
    sku = slow.build(DESC, SM90, {"tile": 128}).sku
    plan = Plan.from_sku(DESC, sku, SM90)
    assert plan.backend is slow and plan.sku == sku and plan.sku.config_dict == {"tile": 128}
    roundtrip = Plan.from_sku(DESC, KernelSku.from_json(sku.to_json()), SM90)
    assert roundtrip.backend is slow and roundtrip.sku.identity() == sku.identity()
    slow.missing = ["not here"]
    with pytest.raises(SkuMismatch, match="not here"):
        Plan.from_sku(DESC, sku, SM90)


def test_from_sku_with_a_family_name_means_the_member_with_that_kernel(world):
    world.add("fakefam.x", 900)
    y = world.add("fakefam.y", 300)
    member = y.build(DESC, SM90).sku
    sku = KernelSku(backend="fakefam", kernel=member.kernel, arch="sm_90", dtype="bf16", precision=STABLE,
                    config={"tile": 64})
    plan = Plan.from_sku(DESC, sku, SM90)
    assert plan.backend is y and plan.sku.backend == "fakefam.y" and plan.sku.kernel == member.kernel
    with pytest.raises(SkuMismatch, match="family"):
        Plan.from_sku(DESC, KernelSku(backend="fakefam", kernel="no_such_kernel", arch="sm_90", dtype="bf16",
                                      precision=STABLE), SM90)


# -- what explain reports -------------------------------------------------------------------------

def _explain_world(world):
    world.add("fake_slow", 300)
    world.add("fake_best", 500)
    world.add("fake_f32_only", 5000, dtypes=("f32",))
    world.add("fake_absent", 900).missing = ["fake library is not installed"]
    world.add("fake_unmeasured_ref", None, last_resort=True)


def test_verdicts_as_json_has_what_the_cli_prints(world, capsys):
    _explain_world(world)
    verdicts = explain(DESC, SM90)
    data = verdicts.as_json()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"verdicts", "policy", "ranking", "choice", "why"}
    assert data["policy"] == "fastest" and data["choice"] == "fake_best" and data["why"] == verdicts.why
    assert data["ranking"] == ["fake_absent", "fake_best", "fake_slow", "fake_unmeasured_ref"]
    rows = {row["backend"]: row for row in data["verdicts"]}
    assert list(rows) == ["fake_slow", "fake_best", "fake_f32_only", "fake_absent", "fake_unmeasured_ref"]
    for row in data["verdicts"]:
        assert {"backend", "kernel", "accepted", "reasons", "estimate_tflops", "estimate_us", "estimate_source",
                "measured_ms", "measured_tflops"} <= set(row)
        assert isinstance(row["reasons"], list)
    assert rows["fake_best"]["accepted"] and rows["fake_best"]["kernel"] == "fake_best_forward_bf16_d128"
    assert rows["fake_best"]["estimate_tflops"] == 500.0 and rows["fake_best"]["reasons"] == []
    assert rows["fake_absent"] == {**rows["fake_absent"], "accepted": False, "kernel": "-",
                                   "reasons": ["fake library is not installed"], "estimate_tflops": 900.0}
    assert not rows["fake_f32_only"]["accepted"] and rows["fake_f32_only"]["estimate_tflops"] is None
    assert rows["fake_unmeasured_ref"]["estimate_tflops"] is None

    # `attnplan explain --json` prints exactly this (its default problem on a GPU is DESC).
    assert cli.main(["explain", "--device", "sm_90", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["device"] == str(SM90) and printed["problem"] == json.loads(json.dumps(DESC.to_dict(), default=str))
    assert {key: printed[key] for key in data} == data
    assert cli.main(["explain", "--device", "sm_90", "--json", "--policy", "first"]) == 0
    assert json.loads(capsys.readouterr().out)["ranking"] == ["fake_slow", "fake_best", "fake_absent",
                                                             "fake_unmeasured_ref"]


def test_verdict_table_marks_the_choice(world):
    _explain_world(world)
    verdicts = explain(DESC, SM90)
    lines = str(verdicts).splitlines()
    assert lines[0].split() == ["backend", "kernel", "TFLOP/s", "verdict"]
    assert len(lines) == 2 + 5
    rows = {line.split()[1] if line[0] != " " else line.split()[0]: line for line in lines[1:-1]}
    assert rows["fake_best"].startswith("*") and rows["fake_best"].split()[1:4] == [
        "fake_best", "fake_best_forward_bf16_d128", "500"]
    assert [line for line in lines if line.startswith("*")] == [rows["fake_best"]]
    assert rows["fake_absent"].split()[0] == "1" and rows["fake_absent"].endswith("fake library is not installed")
    assert rows["fake_slow"].split()[0] == "3" and rows["fake_slow"].endswith("accepted")
    assert rows["fake_unmeasured_ref"].split()[0] == "4"
    assert rows["fake_f32_only"].startswith(" ") and "'bf16' not supported" in rows["fake_f32_only"]
    assert lines[-1] == f"policy fastest: fake_best ({verdicts.why})"
