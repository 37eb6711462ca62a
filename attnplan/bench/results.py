"""The results file (other tools read it) and `attnplan bench compare`."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from attnplan.errors import InvalidFile

PEER_PREFIXES = ("torch.", "flash_attn.", "flashinfer.")
PROBLEM_KEYS = ("dtype", "head_dim", "seqlen_q", "seqlen_kv", "batch", "heads_q", "heads_kv", "causal", "direction",
                "features")


DEFAULT_FOLDER = "bench/results"


def default_path(results: dict, folder: str = DEFAULT_FOLDER) -> Path:
    device = re.sub(r"[^A-Za-z0-9]+", "-", results["device"]["name"]).strip("-").lower()
    stamp = results["date"][:19].replace(":", "").replace("-", "")
    return Path(folder) / f"{stamp}-{device}.json"


def write(results: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return path


def check_writable(path: Path, folder: bool = False) -> None:
    """OSError now, before a sweep, unless a results file can be written at `path` (or, with
    `folder`, in the folder `path`); leaves behind only the folders it had to make."""
    directory = path if folder else path.parent
    directory.mkdir(parents=True, exist_ok=True)
    if folder:
        tempfile.TemporaryFile(dir=directory).close()
        return
    existed = path.exists()
    with open(path, "ab"):
        pass
    if not existed:
        path.unlink()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_problem(value) -> bool:
    return (isinstance(value, dict) and set(value) - {"flops"} == set(PROBLEM_KEYS)
            and isinstance(value["features"], list) and all(isinstance(f, str) for f in value["features"]))


# What `compare` and the tables read of each row: (key, check, what is allowed).
_ROW_FIELDS = (("backend", lambda v: isinstance(v, str), "a backend name"),
               ("correct", lambda v: isinstance(v, bool), "true or false"),
               ("tflops", lambda v: v is None or _is_number(v), "a number or null"),
               ("problem", _is_problem, f"an object with the keys {', '.join(PROBLEM_KEYS)} (and flops), "
                                        "features a list of names"))


def _row_problem(row, index: int):
    """What is wrong with results row `index`, or None."""
    if not isinstance(row, dict):
        return f"rows[{index}]={row!r} is invalid: an object"
    for key, check, allowed in _ROW_FIELDS:
        if not check(row.get(key)):
            return f"rows[{index}].{key}={row.get(key)!r} is invalid: {allowed}"
    return None


def load(path) -> dict:
    """A results file, checked: InvalidFile (naming the file and what is wrong) when it is not JSON,
    not a results file, or has a row that `compare` or the tables cannot read."""
    try:
        data = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidFile(path, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidFile(path, "not an attnplan bench results file (not a JSON object)")
    for key in ("device", "date", "versions", "rows"):
        if key not in data:
            raise InvalidFile(path, f"not an attnplan bench results file (no {key!r})")
    if not isinstance(data["rows"], list):
        raise InvalidFile(path, f"rows={data['rows']!r} is invalid: a list of result rows")
    for index, row in enumerate(data["rows"]):
        problem = _row_problem(row, index)
        if problem:
            raise InvalidFile(path, problem)
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
