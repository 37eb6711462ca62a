"""The `attnplan` command, run in-process through `attnplan.cli.main`: info, explain, run, cache
list / clear, and what bad flags do."""

import json
import re

import pytest
from rich.console import Console

import attnplan
from attnplan import KernelSku, registry
from attnplan import cli
from attnplan import kernel_cache

SMALL = ["--batch", "1", "--seqlen-q", "6", "--seqlen-kv", "9", "--heads-q", "2", "--head-dim", "8"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """A console that writes plain text to the (captured) stdout without wrapping lines."""
    monkeypatch.setattr(cli, "console", Console(width=2000, color_system=None, soft_wrap=True))


def line_after(text: str, prefix: str) -> str:
    matches = [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
    assert len(matches) == 1, (prefix, text)
    return matches[0]


def table_row(text: str, backend: str) -> str:
    rows = [line for line in text.splitlines() if f" {backend} " in f" {line.strip('│ ')} "]
    assert rows, (backend, text)
    return rows[0]


# -- info ------------------------------------------------------------------------------------------

def test_info_lists_every_backend(capsys):
    assert cli.main(["info", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert f"attnplan {attnplan.__version__} on cpu" in text
    for backend in registry.backends():
        assert backend.name in text
    assert "yes" in table_row(text, "reference")


def test_info_on_a_described_gpu(capsys):
    assert cli.main(["info", "--device", "sm_90"]) == 0
    text = capsys.readouterr().out
    assert "sm_90" in text and "described" in text and "reference" in text


# -- explain ---------------------------------------------------------------------------------------

def test_explain_on_cpu_shows_verdicts_and_the_chosen_sku(capsys):
    assert cli.main(["explain", "--device", "cpu", "--causal", *SMALL]) == 0
    text = capsys.readouterr().out
    assert line_after(text, "device: ") == "cpu"
    assert "accepted" in table_row(text, "reference")
    assert "not cpu" in table_row(text, "nvrtc.sm80")
    sku = KernelSku.from_json(line_after(text, "chosen SKU: "))
    assert sku.backend == "reference" and sku.arch == "cpu" and sku.dtype == "bf16"


def test_explain_turns_flags_into_the_descriptor(capsys):
    flags = ["--device", "cpu", "--batch", "3", "--seqlen-q", "5", "--seqlen-kv", "12", "--heads-q", "4",
             "--heads-kv", "2", "--head-dim", "16", "--head-dim-v", "8", "--dtype", "f16", "--layout", "thd",
             "--causal", "--alignment", "top_left", "--window", "4", "0", "--sink-tokens", "2", "--sink-logits",
             "--alibi", "--softcap", "30", "--dropout", "0.1", "--deterministic", "--backward"]
    assert cli.main(["explain", *flags]) == 0
    problem = json.loads(line_after(capsys.readouterr().out, "problem: "))
    assert problem == attnplan.AttentionDescriptor(
        batch=3, seqlen_q=5, seqlen_kv=12, heads_q=4, heads_kv=2, head_dim=16, head_dim_v=8, dtype="f16",
        layout="thd", causal=True, causal_alignment="top_left", window=(4, 0), sink_tokens=2, sink_logits=True,
        alibi=True, softcap=30.0, dropout_p=0.1, deterministic=True, direction="backward",
        return_lse=True).to_dict()


def test_explain_paged_flag(capsys):
    assert cli.main(["explain", "--device", "cpu", "--paged", "4", *SMALL]) == 0
    problem = json.loads(line_after(capsys.readouterr().out, "problem: "))
    assert problem["paged"] == {"page_size": 4, "max_pages_per_seq": 3}        # ceil(9 / 4)


def test_explain_on_a_described_gpu_gives_nvrtc_reasons(capsys):
    code = cli.main(["explain", "--device", "sm_90", "--dtype", "f64", "--head-dim", "20", "--backend", "nvrtc"])
    text = capsys.readouterr().out
    assert code == 1 and "no plan" in text                       # nvrtc alone cannot take it
    row = table_row(text, "nvrtc.sm80")
    assert "'f64'" in row and "head_dim=20" in row
    assert "sm_90" in line_after(text, "device: ")


def test_explain_restricted_to_a_rejecting_backend(capsys):
    assert cli.main(["explain", "--device", "cpu", "--backend", "nvrtc", *SMALL]) == 1
    text = capsys.readouterr().out
    assert "NoPlanError" in text and "not cpu" in table_row(text, "nvrtc.sm80")
    assert "chosen SKU" not in text


# -- run -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--dtype", "f32", "--causal", "--window", "3", "0", "--sink-tokens", "1"],
                                   ["--layout", "thd", "--alibi", "--sink-logits", "--dropout", "0.2"],
                                   ["--paged", "4", "--dtype", "f16", "--softcap", "5"],
                                   ["--dtype", "e4m3"]],
                         ids=["plain", "masks", "varlen", "paged", "fp8"])
def test_run_prints_sku_error_and_ok(capsys, extra):
    assert cli.main(["run", "--device", "cpu", "--repeats", "1", *SMALL, *extra]) == 0
    text = capsys.readouterr().out
    sku = KernelSku.from_json(line_after(text, "SKU: "))
    assert sku.backend == "reference" and sku.kernel == "reference_numpy_forward"
    errors = line_after(text, "relative L2 error vs the float64 reference: ")
    assert errors.startswith("out=") and "lse=" in errors
    assert all(float(part.split("=")[1]) == 0.0 for part in errors.split(", "))    # reference vs itself
    assert "ms median of 1" in text and text.rstrip().endswith("OK")


def test_run_backward(capsys):
    assert cli.main(["run", "--device", "cpu", "--repeats", "1", "--backward", "--dtype", "f32", *SMALL]) == 0
    text = capsys.readouterr().out
    assert KernelSku.from_json(line_after(text, "SKU: ")).kernel == "reference_numpy_backward"
    errors = line_after(text, "relative L2 error vs the float64 reference: ")
    assert [part.split("=")[0] for part in errors.split(", ")] == ["dq", "dk", "dv"]


def test_run_with_a_rejecting_backend_fails_with_the_reason(capsys):
    code = cli.main(["run", "--device", "cpu", "--repeats", "1", "--backend", "nvrtc", *SMALL])
    text = capsys.readouterr().out
    assert code == 2 and "NoPlanError" in text and "not cpu" in text


# -- cache -----------------------------------------------------------------------------------------

@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNPLAN_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_cache_list_shows_entries(cache, capsys):
    kernel_cache.get_or_build("kernel_a", {"name": "attn_a", "arch": "sm_90"}, lambda: b"\x01" * 100)
    kernel_cache.get_or_build("kernel_b", {"name": "attn_b", "arch": "sm_80"}, lambda: b"\x02" * 10)
    (cache / "broken.cubin").write_bytes(b"not a cubin")
    assert cli.main(["cache", "list"]) == 0
    text = capsys.readouterr().out
    assert line_after(text, "cache: ") == str(cache)
    assert "sm_90" in table_row(text, "attn_a") and "kernel_a.cubin" in table_row(text, "attn_a")
    assert "sm_80" in table_row(text, "attn_b")
    assert "broken.cubin" in table_row(text, "(damaged)")


def test_cache_list_when_empty(cache, capsys):
    assert cli.main(["cache", "list"]) == 0
    text = capsys.readouterr().out
    assert str(cache) in text and ".cubin" not in text


def test_cache_clear_removes_entries_and_locks(cache, capsys):
    for key in ("one", "two", "three"):
        kernel_cache.get_or_build(key, {"name": key, "arch": "sm_90"}, lambda: b"body")
    (cache / "stale.cubin.tmp").write_bytes(b"")
    (cache / "keep.txt").write_text("not ours")
    assert cli.main(["cache", "clear"]) == 0
    assert f"removed 3 entries from {cache}" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["keep.txt"]
    assert cli.main(["cache", "clear"]) == 0
    assert "removed 0 entries" in capsys.readouterr().out


# -- bad flags -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    ([], "required"),
    (["nonsense"], "invalid choice"),
    (["run", "--no-such-flag"], "unrecognized arguments"),
    (["explain", "--batch", "two"], "invalid int value"),
    (["explain", "--window", "3"], "expected 2 arguments"),
    (["explain", "--softcap", "big"], "invalid float value"),
    (["cache"], "required"),
    (["cache", "purge"], "invalid choice"),
])
def test_bad_command_lines_exit_with_usage(capsys, argv, words):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and f"attnplan {attnplan.__version__}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["run", "--dtype", "f17"], "AttentionDescriptor.dtype='f17'"),
    (["explain", "--heads-q", "3", "--heads-kv", "2"], "AttentionDescriptor.heads_kv=2"),
    (["explain", "--causal", "--window", "3", "1"], "AttentionDescriptor.window=(3, 1)"),
    (["explain", "--layout", "sbhd"], "AttentionDescriptor.layout='sbhd'"),
    (["explain", "--dropout", "1.5"], "AttentionDescriptor.dropout_p=1.5"),
    (["explain", "--sink-tokens", "2"], "left bound"),
    (["explain", "--head-dim", "300"], "AttentionDescriptor.head_dim=300"),
    (["explain", "--dtype", "e4m3", "--backward"], "AttentionDescriptor.direction='backward'"),
])
def test_bad_problem_flags_fail_with_the_descriptor_error(capsys, argv, words):
    assert cli.main([*argv, "--device", "cpu"]) == 2
    text = capsys.readouterr().out
    assert "InvalidDescriptor" in text and words in text


def test_unknown_backend_flag_fails_cleanly(capsys):
    assert cli.main(["run", "--device", "cpu", "--backend", "no_such_backend", *SMALL]) != 0
    assert "no_such_backend" in capsys.readouterr().out


def test_bad_device_flag_fails_cleanly(capsys):
    assert cli.main(["explain", "--device", "gpu0"]) != 0
    assert "gpu0" in capsys.readouterr().out


# -- tune ------------------------------------------------------------------------------------------

def test_tune_on_the_cpu_times_the_reference_and_remembers_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNPLAN_TUNING_DIR", str(tmp_path))
    assert cli.main(["tune", "--device", "cpu", "--dtype", "f32", *SMALL]) == 0
    text = capsys.readouterr().out
    row = table_row(text, "reference")
    assert re.search(r"\d+\.\d{4}", row), row                     # a measured median in ms
    assert "only reference accepts" in text and KernelSku.from_json(line_after(text, "chosen SKU: ")).backend == "reference"
    assert len(list(tmp_path.glob("*.json"))) == 1                 # remembered on disk
    assert cli.main(["tune", "--device", "cpu", "--dtype", "f32", *SMALL]) == 0
    assert table_row(capsys.readouterr().out, "reference") == row   # the second run read the same median back
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_explain_json_is_one_object_with_the_choice(capsys):
    assert cli.main(["explain", "--device", "cpu", "--json", *SMALL]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["choice"] == "reference" and data["ranking"] == ["reference"]
    assert {v["backend"] for v in data["verdicts"]} >= {"reference", "cudnn"}
