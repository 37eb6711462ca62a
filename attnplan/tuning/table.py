"""The planner's cost model: measured TFLOP/s per cell, shipped as one small versioned JSON table per
arch (`attnplan/tuning/sm90.json`), and a problem's expected time estimated from it.

A cell is (candidate, direction, dtype, head-dim bucket, causal, feature class) and holds TFLOP/s at
the measured seqlens.  An estimate interpolates linearly in log(seqlen) between measured points and
turns TFLOP/s into microseconds through the problem's FLOPs (`AttentionDescriptor.flops`, the usual
convention: masked-out work still counts, so a windowed cell reports 'effective' TFLOP/s).
"""

from __future__ import annotations

import functools
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import attrs

from attnplan.descriptor import AttentionDescriptor

TABLE_FORMAT = "attnplan-tuning-table"
TABLE_VERSION = 1
# A problem goes to the smallest bucket at least as large as its larger head dim.
HEAD_DIM_BUCKETS = (64, 128, 256)
# Beyond the measured seqlens a cell still answers, from its nearest end, up to this factor away;
# further out (decode-shaped calls against prefill sweeps) it does not apply.
SEQLEN_REACH = 8.0

# The features that change a kernel's speed per FLOP, in the order a feature class names them.
FEATURES: tuple[tuple[str, Callable[[AttentionDescriptor], bool]], ...] = (
    ("window", lambda d: d.has_window or d.sink_tokens > 0),
    ("gqa", lambda d: d.heads_q != d.heads_kv),
    ("varlen", lambda d: d.varlen),
    ("paged", lambda d: d.paged is not None),
    ("alibi", lambda d: d.alibi),
    ("softcap", lambda d: d.softcap > 0),
    ("bias", lambda d: d.bias),
    ("sink_logits", lambda d: d.sink_logits),
    ("dropout", lambda d: d.dropout_p > 0),
)
PLAIN = "plain"
SIXTEEN_BIT = ("f16", "bf16")     # the same tensor-core rate: one stands in for the other


def feature_class(desc: AttentionDescriptor) -> str:
    names = [name for name, active in FEATURES if active(desc)]
    return "+".join(names) if names else PLAIN


def head_dim_bucket(desc: AttentionDescriptor) -> Optional[int]:
    largest = max(desc.head_dim, desc.head_dim_v)
    return next((bucket for bucket in HEAD_DIM_BUCKETS if largest <= bucket), None)


def seqlen_coordinate(desc: AttentionDescriptor) -> float:
    """One length for the table: the geometric mean of the query and key lengths (square sweeps)."""
    return math.sqrt(desc.seqlen_q * desc.seqlen_kv)


def table_name(arch_name: str) -> str:
    return arch_name.replace("_", "") + ".json"      # sm_90 -> sm90.json


@attrs.frozen
class CellKey:
    candidate: str
    direction: str
    dtype: str
    head_dim: int
    causal: bool
    features: str

    @classmethod
    def for_problem(cls, candidate: str, desc: AttentionDescriptor) -> Optional["CellKey"]:
        bucket = head_dim_bucket(desc)
        if bucket is None:
            return None
        return cls(candidate, desc.direction, desc.dtype, bucket, desc.causal, feature_class(desc))

    def label(self) -> str:
        return (f"{self.direction} {self.dtype} d<={self.head_dim} {self.features}"
                f"{' causal' if self.causal else ''}")


@attrs.frozen
class Cell:
    key: CellKey
    seqlens: tuple = attrs.field(converter=tuple)
    tflops: tuple = attrs.field(converter=tuple)

    def __attrs_post_init__(self):
        if not self.seqlens or len(self.seqlens) != len(self.tflops):
            raise ValueError(f"cell {self.key}: {len(self.seqlens)} seqlens for {len(self.tflops)} values")
        if list(self.seqlens) != sorted(set(self.seqlens)) or min(self.seqlens) <= 0:
            raise ValueError(f"cell {self.key}: seqlens must be positive and increasing, got {self.seqlens}")
        if not all(t > 0 and math.isfinite(t) for t in self.tflops):
            raise ValueError(f"cell {self.key}: TFLOP/s must be positive, got {self.tflops}")

    def at(self, seqlen: float) -> Optional[tuple[float, str]]:
        """(TFLOP/s, how it was read) at `seqlen`, or None when the cell does not reach it."""
        low, high = self.seqlens[0], self.seqlens[-1]
        if not low / SEQLEN_REACH <= seqlen <= high * SEQLEN_REACH:
            return None
        if seqlen <= low:
            return self.tflops[0], ("measured" if seqlen == low else f"nearest measured seqlen {low}")
        if seqlen >= high:
            return self.tflops[-1], ("measured" if seqlen == high else f"nearest measured seqlen {high}")
        for (s0, t0), (s1, t1) in zip(zip(self.seqlens, self.tflops), zip(self.seqlens[1:], self.tflops[1:])):
            if s0 <= seqlen <= s1:
                if seqlen in (s0, s1):
                    return (t0 if seqlen == s0 else t1), "measured"
                w = (math.log(seqlen) - math.log(s0)) / (math.log(s1) - math.log(s0))
                return t0 + w * (t1 - t0), f"interpolated between seqlens {s0} and {s1}"
        raise AssertionError("unreachable: seqlen inside the measured range")

    def to_dict(self) -> dict:
        return {**attrs.asdict(self.key), "seqlens": list(self.seqlens), "tflops": [round(t, 2) for t in self.tflops]}

    @classmethod
    def from_dict(cls, data: dict) -> "Cell":
        key = CellKey(**{f.name: data[f.name] for f in attrs.fields(CellKey)})
        return cls(key, data["seqlens"], data["tflops"])


@attrs.frozen
class Estimate:
    tflops: float
    us: float
    source: str            # which cell, and how it was read
    approximate: bool      # read from a neighbouring cell (other 16-bit dtype, plain features) or beyond the seqlens


def _relaxations(key: CellKey) -> list[tuple[CellKey, str]]:
    """The cells to try for `key`, nearest first, each with what it stands in for."""
    out = [(key, "")]
    if key.dtype in SIXTEEN_BIT:
        other = SIXTEEN_BIT[1 - SIXTEEN_BIT.index(key.dtype)]
        out.append((attrs.evolve(key, dtype=other), f"{key.dtype} read from the {other} cell"))
    if key.features != PLAIN:
        for candidate, note in list(out):
            plain_note = f"{key.features} read from the plain cell"
            out.append((attrs.evolve(candidate, features=PLAIN), f"{note}; {plain_note}" if note else plain_note))
    return out


@attrs.frozen(eq=False)
class PerfTable:
    arch: str
    cells: tuple = attrs.field(converter=tuple)
    sources: tuple = attrs.field(default=(), converter=tuple)    # (file, device, date) of the measurements
    origin: str = ""                                             # where this table was read from
    _index: dict = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self):
        index = {}
        for cell in self.cells:
            if cell.key in index:
                raise ValueError(f"table {self.arch}: two cells for {cell.key}")
            index[cell.key] = cell
        object.__setattr__(self, "_index", index)

    def cell(self, key: CellKey) -> Optional[Cell]:
        return self._index.get(key)

    def estimate(self, candidate: str, desc: AttentionDescriptor) -> Optional[Estimate]:
        """The expected TFLOP/s and time of `candidate` on `desc`, or None where no cell applies."""
        key = CellKey.for_problem(candidate, desc)
        if key is None:
            return None
        seqlen = seqlen_coordinate(desc)
        for cell_key, stand_in in _relaxations(key):
            cell = self._index.get(cell_key)
            read = cell.at(seqlen) if cell is not None else None
            if read is None:
                continue
            tflops, how = read
            source = f"{table_name(self.arch)}: {cell_key.label()}, {how}" + (f"; {stand_in}" if stand_in else "")
            return Estimate(tflops, desc.flops() / (tflops * 1e12) * 1e6, source,
                            approximate=bool(stand_in) or how.startswith("nearest"))
        return None

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "arch": self.arch,
                "sources": [dict(zip(("file", "device", "date"), s)) for s in self.sources],
                "cells": [c.to_dict() for c in sorted(self.cells, key=lambda c: attrs.astuple(c.key))]}

    @classmethod
    def from_dict(cls, data: dict, origin: str = "") -> "PerfTable":
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"{origin or 'table'}: not an attnplan tuning table (format {data.get('format')!r})")
        if data.get("version") != TABLE_VERSION:
            raise ValueError(f"{origin or 'table'}: table version {data.get('version')!r}, this attnplan reads "
                             f"version {TABLE_VERSION} (regenerate it with `attnplan bench table`)")
        try:
            cells = [Cell.from_dict(c) for c in data["cells"]]
            sources = [(s["file"], s["device"], s["date"]) for s in data.get("sources", [])]
            return cls(data["arch"], cells, sources, origin)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{origin or 'table'}: malformed cell or source ({type(exc).__name__}: {exc})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"


TABLES_ENV = "ATTNPLAN_TABLES"      # a folder searched before the shipped tables (e.g. after a new sweep)


@functools.lru_cache(maxsize=None)
def _load(arch_name: str, folder: Optional[str]) -> Optional[PerfTable]:
    name = table_name(arch_name)
    if folder:
        path = Path(folder) / name
        if path.is_file():
            return PerfTable.from_dict(json.loads(path.read_text()), str(path))
    shipped = resources.files("attnplan.tuning") / name
    if shipped.is_file():
        return PerfTable.from_dict(json.loads(shipped.read_text()), f"attnplan/tuning/{name}")
    return None


def table_for(arch_name: str) -> Optional[PerfTable]:
    """The table for an arch ("sm_90"): `$ATTNPLAN_TABLES/sm90.json` if there, else the shipped one."""
    return _load(arch_name, os.environ.get(TABLES_ENV) or None)
