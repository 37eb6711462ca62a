"""Benchmark problems and sweeps.  The standard setup is FlashAttention's: 16k tokens in total,
hidden size 2048 (heads = 2048 / head_dim), batch = 16384 / seqlen."""

from __future__ import annotations

import itertools
from typing import Iterable

import attrs

from attnplan.descriptor import AttentionDescriptor, PagedKV

STANDARD_TOKENS = 16384
STANDARD_HIDDEN = 2048

# Named features a sweep can add to every problem: descriptor fields (and derived shapes).
FEATURES = {
    "window": dict(window=(256, 0)),
    "gqa": dict(gqa_group=4),
    "varlen": dict(layout="thd"),
    "paged": dict(page_size=64),
}


@attrs.frozen
class BenchProblem:
    dtype: str
    head_dim: int
    seqlen_q: int
    seqlen_kv: int
    batch: int
    heads_q: int
    heads_kv: int
    causal: bool
    direction: str
    features: tuple = ()          # names from FEATURES

    def descriptor(self) -> AttentionDescriptor:
        fields = dict(batch=self.batch, seqlen_q=self.seqlen_q, seqlen_kv=self.seqlen_kv, heads_q=self.heads_q,
                      heads_kv=self.heads_kv, head_dim=self.head_dim, dtype=self.dtype, causal=self.causal,
                      direction=self.direction, return_lse=True)
        for name in self.features:
            extra = dict(FEATURES[name])
            extra.pop("gqa_group", None)
            page_size = extra.pop("page_size", None)
            if page_size:
                extra["paged"] = PagedKV(page_size, -(-self.seqlen_kv // page_size))
            if "window" in extra and not self.causal:
                extra["window"] = (extra["window"][0], extra["window"][0])
            fields.update(extra)
        return AttentionDescriptor(**fields)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchProblem":
        """The problem of a results row's `problem` (as_dict's output; lists back to tuples, the
        row's `flops` dropped)."""
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k != "flops"})

    def as_dict(self) -> dict:
        d = attrs.asdict(self)
        d["features"] = list(self.features)
        return d

    @property
    def label(self) -> str:
        extra = "+".join(self.features)
        return (f"{'fwd' if self.direction == 'forward' else 'bwd'} {self.dtype} d{self.head_dim} s{self.seqlen_q}"
                f"{'' if self.seqlen_q == self.seqlen_kv else 'x' + str(self.seqlen_kv)} b{self.batch} "
                f"h{self.heads_q}/{self.heads_kv}{' causal' if self.causal else ''}{' ' + extra if extra else ''}")


def standard_problem(dtype: str, head_dim: int, seqlen: int, causal: bool, direction: str,
                     features: Iterable[str] = (), tokens: int = STANDARD_TOKENS,
                     hidden: int = STANDARD_HIDDEN) -> BenchProblem:
    features = tuple(features)
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}; known: {sorted(FEATURES)}")
    heads_q = max(1, hidden // head_dim)
    group = FEATURES["gqa"]["gqa_group"] if "gqa" in features and heads_q % 4 == 0 else 1
    return BenchProblem(dtype=dtype, head_dim=head_dim, seqlen_q=seqlen, seqlen_kv=seqlen,
                        batch=max(1, tokens // seqlen), heads_q=heads_q, heads_kv=heads_q // group,
                        causal=causal, direction=direction, features=features)


def sweep(dtypes, head_dims, seqlens, causals, directions, features=(), tokens=STANDARD_TOKENS,
          hidden=STANDARD_HIDDEN) -> list[BenchProblem]:
    return [standard_problem(dt, d, s, c, di, features, tokens, hidden)
            for di, dt, d, c, s in itertools.product(directions, dtypes, head_dims, causals, seqlens)]
