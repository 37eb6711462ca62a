"""`attnplan bench table RESULTS.json... -o FILE`: a planner table from benchmark results files.

Only our own backends' rows count (peers such as `torch.*` are not candidates), and only rows that
were checked correct and timed.  Where several files measured the same (cell, seqlen), the newest
file's number is kept.  Feed it same-run sweeps: the planner compares candidates with each other, and
numbers from different runs differ by more than the candidates do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from attnplan.bench.problems import BenchProblem
from attnplan.bench.results import PEER_PREFIXES, load

from .table import Cell, CellKey, PerfTable, seqlen_coordinate

NOT_CANDIDATES = ("reference",)


def candidate_of(row: dict) -> str:
    """The planner candidate a results row measured.  Rows written before kernel generations were
    registered apart name the backend "nvrtc"; their SKU's kernel name carries the generation."""
    backend = row["backend"]
    if backend == "nvrtc":
        kernel = (row.get("sku") or {}).get("kernel", "")
        parts = kernel.split("_")
        if len(parts) < 2 or parts[0] != "attn":
            raise ValueError(f"row of backend 'nvrtc' without a generation in its kernel name: {kernel!r}")
        return f"nvrtc.{parts[1]}"
    return backend


def row_descriptor(row: dict):
    return BenchProblem.from_dict(row["problem"]).descriptor()


def is_candidate_row(row: dict) -> bool:
    return (not row["backend"].startswith(PEER_PREFIXES) and row["backend"] not in NOT_CANDIDATES
            and bool(row.get("correct")) and bool(row.get("tflops")))


def table_from_results(paths: Iterable) -> PerfTable:
    files = [(Path(p), load(p)) for p in paths]
    if not files:
        raise ValueError("no results files given")
    arches = {data["device"].get("arch") for _, data in files}
    if len(arches) != 1:
        raise ValueError(f"results from several arches {sorted(map(str, arches))}: one table is for one arch")
    points: dict[CellKey, dict[float, tuple[str, float]]] = {}
    for path, data in sorted(files, key=lambda item: item[1]["date"]):      # newest last: it wins
        for row in data["rows"]:
            if not is_candidate_row(row):
                continue
            desc = row_descriptor(row)
            key = CellKey.for_problem(candidate_of(row), desc)
            if key is not None:
                points.setdefault(key, {})[seqlen_coordinate(desc)] = (data["date"], float(row["tflops"]))
    cells = []
    for key, by_seqlen in points.items():
        seqlens = sorted(by_seqlen)
        cells.append(Cell(key, [int(s) if float(s).is_integer() else round(s, 3) for s in seqlens], [by_seqlen[s][1] for s in seqlens]))
    sources = [(path.name, data["device"]["name"], data["date"]) for path, data in files]
    return PerfTable(arches.pop(), cells, sources)


def write_table(paths: Iterable, output) -> tuple[Path, PerfTable]:
    table = table_from_results(paths)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table.to_json())
    return output, table
