"""How `Plan.select` orders the backends that can take a problem: the policies.

- "fastest" (the default): the lowest expected time from the arch's measured table
  (`attnplan/tuning/<arch>.json`).  Where the table has no cell for some candidate, nothing is
  measured to compare, and the default order decides; the verdict says the choice was a guess.
- "first": the registry's default order: our kernel generations as registered, then cuDNN, then
  the reference.
- "autotune": each candidate timed on the real shapes, the winner remembered on disk
  (`tuning/autotune.py`); without a present device it ranks as "fastest".

Near-ties (within NEAR_TIE of the fastest) go to the more deterministic plan, then the more precise.
Backends marked `last_resort` (the reference) rank after every other candidate under every policy.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import attrs

from .errors import InvalidPolicy
from .sku import PrecisionGuarantee

POLICIES = ("fastest", "first", "autotune")
POLICY_ENV = "ATTNPLAN_POLICY"
DEFAULT_POLICY = "fastest"
# Timings within 3% are inside run-to-run noise on the GPUs we measure: prefer guarantees there.
NEAR_TIE = 0.03
# Significand bits of a precision name: "more precise" compares these, accumulator first.
_SIGNIFICAND_BITS = {"f64": 53, "f32": 24, "tf32": 11, "f16": 11, "bf16": 8, "e4m3": 4, "e5m2": 3}


def resolve_policy(policy: Optional[str]) -> str:
    """The policy to use: the argument, else $ATTNPLAN_POLICY, else "fastest"."""
    source = "policy"
    if policy is None:
        policy, source = os.environ.get(POLICY_ENV) or DEFAULT_POLICY, POLICY_ENV
    if policy not in POLICIES:
        raise InvalidPolicy(source, policy, f"one of {', '.join(POLICIES)}")
    return policy


def guarantee_rank(precision: PrecisionGuarantee) -> tuple:
    """Larger is better: deterministic, then bit-stable, then the accumulator's and the products' bits."""
    return (precision.deterministic, precision.bit_stable, _SIGNIFICAND_BITS.get(precision.accumulator, 0),
            _SIGNIFICAND_BITS.get(precision.math_precision, 0))


@attrs.frozen
class Candidate:
    """A backend whose capability checks accept the problem, as the ranking sees it."""

    name: str
    default_index: int                 # its place in the default order
    precision: PrecisionGuarantee
    last_resort: bool = False
    expected_us: Optional[float] = None    # from the table, or measured by autotune


@attrs.frozen
class Ranking:
    order: tuple                 # candidate names, first = best
    why: str
    guessed: bool = False


def order_by_time(candidates: Sequence[Candidate], time_of: Callable[[Candidate], float]) -> list[Candidate]:
    """Fastest first; among those within NEAR_TIE of the fastest left, the best guarantee goes next."""
    remaining = sorted(candidates, key=lambda c: (time_of(c), c.default_index))
    order = []
    while remaining:
        limit = time_of(remaining[0]) * (1 + NEAR_TIE)
        tied = [c for c in remaining if time_of(c) <= limit]
        pick = max(tied, key=lambda c: (guarantee_rank(c.precision), -time_of(c), -c.default_index))
        order.append(pick)
        remaining.remove(pick)
    return order


def _default_order(candidates: Sequence[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: c.default_index)


def _describe(order: Sequence[Candidate]) -> str:
    return ", ".join(f"{c.name} {c.expected_us:.1f} us" for c in order)


def rank(candidates: Sequence[Candidate], policy: str, basis: str, untimed_last: bool = False) -> Ranking:
    """Order `candidates` by `policy` ("fastest" or "first").  `expected_us` holds each one's time
    (estimated, or measured); `basis` names where the times came from, for the reason text.  With
    `untimed_last` (measured times: a candidate without one failed its check) the untimed follow the
    timed instead of making the order a guess."""
    main = [c for c in candidates if not c.last_resort]
    last = _default_order([c for c in candidates if c.last_resort])
    if not main:
        only = last[0].name if last else None
        return Ranking(tuple(c.name for c in last), f"only {only} accepts" if only else "no candidate accepts")
    if policy == "first":
        order = _default_order(main)
        return Ranking(tuple(c.name for c in order + last), f"policy 'first': the default order ({order[0].name} first)")
    unknown = [c.name for c in main if c.expected_us is None]
    if untimed_last and unknown and len(unknown) < len(main):
        timed = [c for c in main if c.expected_us is not None]
        order = order_by_time(timed, lambda c: c.expected_us) + _default_order([c for c in main if c.name in unknown])
        return Ranking(tuple(c.name for c in order + last),
                       f"fastest by {basis}: {_describe(order[:len(timed)])} ({', '.join(unknown)} not timed)")
    if len(main) == 1:
        return Ranking(tuple(c.name for c in main + last), f"{main[0].name} is the only non-reference candidate")
    if unknown:
        order = _default_order(main)
        return Ranking(tuple(c.name for c in order + last),
                       f"guess: {basis} has no estimate for {', '.join(unknown)}; the default order decides "
                       f"({order[0].name} first)",
                       guessed=True)
    order = order_by_time(main, lambda c: c.expected_us)
    fastest = min(c.expected_us for c in main)
    why = f"fastest by {basis}: {_describe(order)}"
    if order[0].expected_us > fastest:
        why += f" ({order[0].name} is within {NEAR_TIE:.0%} of the fastest and has the better guarantee)"
    return Ranking(tuple(c.name for c in order + last), why)
