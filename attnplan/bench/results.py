"""The results file (other tools read it) and `attnplan bench compare`."""

from __future__ import annotations

import json
import re
from pathlib import Path

PEER_PREFIXES = ("torch.", "flash_attn.", "flashinfer.")
PROBLEM_KEYS = ("dtype", "head_dim", "seqlen_q", "seqlen_kv", "batch", "heads_q", "heads_kv", "causal", "direction",
                "features")


def default_path(results: dict, folder: str = "bench/results") -> Path:
    device = re.sub(r"[^A-Za-z0-9]+", "-", results["device"]["name"]).strip("-").lower()
    stamp = results["date"][:19].replace(":", "").replace("-", "")
    return Path(folder) / f"{stamp}-{device}.json"


def write(results: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return path


def load(path) -> dict:
    data = json.loads(Path(path).read_text())
    for key in ("device", "date", "versions", "rows"):
        if key not in data:
            raise ValueError(f"{path}: not an attnplan bench results file (no {key!r})")
    return data


def problem_key(problem: dict) -> tuple:
    return tuple((k, tuple(problem[k]) if isinstance(problem.get(k), list) else problem.get(k)) for k in PROBLEM_KEYS)


def compare(a: dict, b: dict, threshold: float = 0.05) -> list[dict]:
    """Per (problem, backend) ratios of B's TFLOP/s to A's; `regression` when B is slower than A
    by more than `threshold` (or B got wrong what A got right)."""
    index = {(problem_key(r["problem"]), r["backend"]): r for r in a["rows"]}
    out = []
    for row in b["rows"]:
        old = index.get((problem_key(row["problem"]), row["backend"]))
        if old is None:
            continue
        ratio = row["tflops"] / old["tflops"] if row.get("tflops") and old.get("tflops") else None
        regression = (old["correct"] and not row["correct"]) or (ratio is not None and ratio < 1 - threshold)
        out.append({"problem": row["problem"], "backend": row["backend"], "a_tflops": old.get("tflops"),
                    "b_tflops": row.get("tflops"), "ratio": ratio, "regression": bool(regression)})
    return out
