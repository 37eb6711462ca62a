"""The registry loads lazily on first use: threads that make their first call at once in a fresh
process must all see the whole registry (never half of it) and get correct results.

Each case runs in fresh Python processes (the registry of this test process is long loaded): 8
threads released together by a Barrier make their first attnplan call (`attention`, `Plan.select`
+ run, `explain`, or a mix of them), and the child prints a JSON summary checked here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnplan import registry

REPO = Path(__file__).resolve().parents[1]
THREADS = 8
PROCESSES = 3           # fresh processes per case, run side by side

CHILD = r"""
import json, sys, threading, traceback
import numpy as np
import attnplan
from attnplan import registry

assert not registry._loaded, "the registry must not be loaded before the threads start"
THREADS, MODE = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
q = rng.standard_normal((2, 5, 4, 8)).astype(np.float32)
k = rng.standard_normal((2, 7, 2, 8)).astype(np.float32)
v = rng.standard_normal((2, 7, 2, 8)).astype(np.float32)
desc = attnplan.AttentionDescriptor(batch=2, seqlen_q=5, seqlen_kv=7, heads_q=4, heads_kv=2, head_dim=8,
                                    dtype="f32", causal=True)
barrier = threading.Barrier(THREADS)
results = [None] * THREADS


def call(kind):
    if kind == "attention":
        return {"out": attnplan.attention(q, k, v, causal=True)}
    if kind == "select":
        plan = attnplan.Plan.select(desc, "cpu")
        return {"out": plan.run(q=q, k=k, v=v).out, "backend": plan.backend.name}
    verdicts = attnplan.explain(desc, "cpu")
    return {"names": [x.backend for x in verdicts], "choice": verdicts.choice,
            "accepted": [x.backend for x in verdicts if x.accepted]}


def worker(i):
    kind = MODE if MODE != "mixed" else ("attention", "select", "explain")[i % 3]
    try:
        barrier.wait()
        results[i] = {"kind": kind, **call(kind)}
    except BaseException:
        results[i] = {"kind": kind, "error": traceback.format_exc()}


threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()

# Single-threaded references, after the race: plain NumPy softmax attention (causal, bottom-right
# aligned, GQA) and the registry as it ends up.
kk, vv = (np.repeat(x.astype(np.float64), 2, axis=2) for x in (k, v))
scores = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), kk) / np.sqrt(8)
visible = np.arange(7)[None, :] <= np.arange(5)[:, None] + 2
scores = np.where(visible, scores, -np.inf)
weights = np.exp(scores - scores.max(-1, keepdims=True))
expected = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), vv)
single = attnplan.attention(q, k, v, causal=True)
names = [b.name for b in registry.backends()]

summary = {"names": names, "single_matches": bool(np.allclose(single, expected, atol=1e-5)), "threads": []}
for r in results:
    row = {k: r[k] for k in r if k != "out"}
    if "out" in r:
        out = np.asarray(r["out"])
        row["shape"] = list(out.shape)
        row["matches"] = bool(out.shape == expected.shape and np.allclose(out, expected, atol=1e-5)
                              and np.allclose(out, single, atol=1e-6))
    summary["threads"].append(row)
print(json.dumps(summary))
"""


def run_children(mode: str, tmp_path) -> list[dict]:
    env = {**os.environ, "ATTNPLAN_CACHE_DIR": str(tmp_path / "kernels"),
           "ATTNPLAN_TUNING_DIR": str(tmp_path / "tuning"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("ATTNPLAN_POLICY", None)
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(THREADS), mode], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(PROCESSES)]
    summaries = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    return summaries


def check(summary: dict, mode: str) -> None:
    names = summary["names"]
    assert names == [b.name for b in registry.backends()]          # what a single-threaded load gives
    assert "reference" in names and names[-1] == "reference" and len(names) == len(set(names)) >= 2, names
    assert summary["single_matches"]
    rows = summary["threads"]
    assert len(rows) == THREADS
    assert [r["kind"] for r in rows] == ([mode] * THREADS if mode != "mixed" else
                                         [("attention", "select", "explain")[i % 3] for i in range(THREADS)])
    for r in rows:
        assert "error" not in r, r["error"]
        if r["kind"] == "explain":
            assert r["names"] == names, (r["names"], names)           # complete, in the default order
            assert r["choice"] == "reference" and r["accepted"] == ["reference"]
        else:
            assert r["matches"] and r["shape"] == [2, 5, 4, 8], r
            if r["kind"] == "select":
                assert r["backend"] == "reference"


@pytest.mark.parametrize("mode", ["attention", "select", "explain", "mixed"])
def test_first_calls_from_many_threads_at_once(mode, tmp_path):
    for summary in run_children(mode, tmp_path):
        check(summary, mode)
