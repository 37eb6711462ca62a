"""`attnplan bench` on the CPU (the reference, small problems): the table, the results schema,
the plot, and `bench compare` flagging regressions."""

import copy
import json

import pytest

from attnplan.bench import results as results_io
from attnplan.bench.problems import standard_problem, sweep
from attnplan.cli import main


def test_standard_problem_is_flash_attentions_setup():
    p = standard_problem("bf16", 128, 2048, True, "forward")
    assert (p.batch, p.heads_q, p.heads_kv, p.seqlen_q) == (8, 16, 16, 2048)
    assert standard_problem("bf16", 64, 512, False, "backward", ["gqa"]).heads_kv == 8
    with pytest.raises(ValueError, match="unknown features"):
        standard_problem("bf16", 64, 512, False, "forward", ["nonsense"])
    desc = p.descriptor()
    assert desc.flops() == 4 * 8 * 16 * 2048 * 2048 * 128 / 2


def test_bench_on_cpu_writes_results_schema_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.json"
    code = main(["bench", "--head-dims", "32", "--seqlens", "16,32", "--repeats", "2", "--output", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert {"device", "date", "versions", "ceilings", "rows"} <= set(data)
    assert len(data["rows"]) == 8                     # 2 seqlens x causal x fwd/bwd, the reference
    for row in data["rows"]:
        assert set(row["problem"]) >= {"dtype", "head_dim", "seqlen_q", "seqlen_kv", "batch", "heads_q", "heads_kv",
                                       "causal", "direction", "features"}
        assert row["backend"] == "reference" and row["correct"] is True
        assert row["ms"] > 0 and row["tflops"] > 0 and row["sku"]["backend"] == "reference"
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_compare_flags_regressions(tmp_path, capsys):
    problem = standard_problem("bf16", 64, 512, False, "forward").as_dict()
    row = {"problem": problem, "backend": "nvrtc", "sku": None, "ms": 1.0, "tflops": 100.0, "correct": True}
    a = {"device": {"name": "x"}, "date": "2026-01-01", "versions": {}, "ceilings": {}, "rows": [row]}
    b = copy.deepcopy(a)
    b["rows"][0].update(tflops=90.0, ms=1.11)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert main(["bench", "compare", str(pa), str(pb)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["bench", "compare", str(pa), str(pb), "--threshold", "0.2"]) == 0
    compared = results_io.compare(a, b)
    assert compared[0]["ratio"] == pytest.approx(0.9) and compared[0]["regression"]
    pb.write_text("{}")
    assert main(["bench", "compare", str(pa), str(pb)]) == 2


def test_sweep_size():
    problems = sweep(["bf16"], [64, 128], [512, 1024], [False, True], ["forward", "backward"])
    assert len(problems) == 16 and len({p.label for p in problems}) == 16


def test_spot_check_slices_exactly():
    import numpy as np
    import attnplan
    from attnplan.bench.runner import spot_check
    problem = standard_problem("f64", 16, 8, True, "forward", tokens=24, hidden=64)   # b=3, h=4
    desc = problem.descriptor()
    sub, select = spot_check(desc)
    assert (sub.batch, sub.heads_q, sub.heads_kv) == (1, 2, 2)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((3, 8, 4, 16)) for _ in range(3))
    full = attnplan.attention(q, k, v, causal=True)
    part = select({"q": q, "k": k, "v": v})
    small = attnplan.attention(part["q"], part["k"], part["v"], causal=True)
    np.testing.assert_array_equal(select({"out": full})["out"], small)


def test_peers_accept_only_shared_semantics():
    from attnplan.bench import peers
    plain = standard_problem("bf16", 64, 512, True, "forward").descriptor()
    window = standard_problem("bf16", 64, 512, True, "backward", ["window"]).descriptor()
    varlen = standard_problem("bf16", 64, 512, False, "forward", ["varlen"]).descriptor()
    assert all(peers.peer_reason(name, plain) is None for name in peers.KNOWN)
    assert "window" in peers.peer_reason("torch.flash", window)
    assert peers.peer_reason("flash_attn.fa2", window) is None
    assert "backward" in peers.peer_reason("flashinfer.prefill", window)
    assert all(peers.peer_reason(name, varlen) for name in peers.KNOWN)
    assert "unknown peer" in peers.peer_reason("nonsense", plain)
    top_left = plain.replace(seqlen_kv=1024, causal_alignment="top_left")
    assert peers.peer_reason("torch.flash", top_left) is None
    assert "bottom-right" in peers.peer_reason("flash_attn.fa2", top_left)
