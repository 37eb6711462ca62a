"""Robustness (issue #15): what users and their machines do to attnplan's command line and caches --
zeros and unknown names on the command line, malformed files, text that looks like rich markup,
cache folders that cannot be written or are shared, locks held by others, exceptions that cross
process boundaries, and bugs that must not pass for cuDNN verdicts."""

import concurrent.futures
import contextlib
import importlib
import json
import multiprocessing
import os
import pickle
import re
import sys
import threading
import types
import warnings
from pathlib import Path

import filelock
import numpy as np
import attrs
import pytest
from rich.console import Console

import attnplan
from attnplan import AttentionDescriptor, Plan, cli, disk_store, errors, kernel_cache
from attnplan.arguments import FORWARD_ARGUMENTS
from attnplan.bench import runner
from attnplan.bench.problems import standard_problem
from attnplan.device import as_device
from attnplan.errors import AttnPlanError, CacheWarning, InvalidArguments, InvalidOption
from attnplan.problems import random_inputs
from attnplan.tuning import autotune_cache
from tuning_workers import make_entry, make_key

SMALL = ["--batch", "1", "--seqlen-q", "6", "--seqlen-kv", "9", "--heads-q", "2", "--head-dim", "8"]
CPU = as_device("cpu")


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNPLAN_CACHE_DIR", str(tmp_path / "cache" / "kernels"))
    monkeypatch.setenv("ATTNPLAN_TUNING_DIR", str(tmp_path / "cache" / "tuning"))
    monkeypatch.delenv(disk_store.LOCK_TIMEOUT_ENV, raising=False)
    monkeypatch.setattr(disk_store, "_warned", set())
    monkeypatch.setattr(disk_store, "_memory", {})


@pytest.fixture
def narrow_console(monkeypatch):
    """What a pipe gets: rich's default 80 columns, no terminal."""
    console = Console(width=80, color_system=None, force_terminal=False)
    monkeypatch.setattr(cli, "console", console)
    return console


def _out(capsys) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err


# -- 2. a size flag at 0 (or below) is an error naming the flag, not the default --------------------

SIZE_FLAGS = ["--batch", "--seqlen-q", "--seqlen-kv", "--heads-q", "--heads-kv", "--head-dim", "--head-dim-v",
              "--paged"]


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("flag", SIZE_FLAGS)
def test_size_flags_at_zero_or_below_are_refused(narrow_console, capsys, flag, value):
    assert cli.main(["run", "--device", "cpu", flag, value]) == 2
    text = _out(capsys)
    assert "InvalidOption" in text and f"{flag}={value}" in text and "positive integer" in text
    assert "OK" not in text


@pytest.mark.parametrize("argv", [["run", "--repeats", "0"], ["explain", "--paged", "0"],
                                  ["kernel", "inspect", "--head-dim", "0"]])
def test_other_commands_refuse_zero_sizes_too(narrow_console, capsys, argv):
    assert cli.main([*argv, "--device", "cpu" if argv[0] != "kernel" else "sm_90"]) == 2
    assert "InvalidOption" in _out(capsys)


def test_omitted_size_flags_keep_their_defaults(capsys):
    assert cli.main(["explain", "--device", "cpu", "--json"]) == 0
    problem = json.loads(capsys.readouterr().out)["problem"]
    assert (problem["batch"], problem["seqlen_q"], problem["seqlen_kv"], problem["head_dim"]) == (2, 128, 128, 64)
    assert (problem["heads_q"], problem["heads_kv"], problem["head_dim_v"], problem["paged"]) == (4, 4, 64, None)
    assert cli.main(["explain", "--device", "cpu", "--json", "--paged", "16", "--seqlen-kv", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["problem"]["paged"] == {"page_size": 16, "max_pages_per_seq": 3}


# -- 5. unknown backends and peers are refused before any work --------------------------------------

@pytest.fixture
def no_sweep(monkeypatch):
    """run_sweep recorded instead of run: what reaches it, and proof that a refused flag did not."""
    calls = []

    def fake_sweep(problems, **kwargs):
        calls.append(kwargs)
        return {"device": {"name": "cpu"}, "rows": []}
    monkeypatch.setattr(runner, "run_sweep", fake_sweep)
    return calls


@pytest.mark.parametrize("flag, known", [("--backends", "reference"), ("--peers", "torch.flash")])
def test_unknown_bench_names_are_refused_with_the_known_ones(narrow_console, capsys, no_sweep, flag, known):
    assert cli.main(["bench", flag, "reference,nope" if flag == "--backends" else "nope", "--no-save"]) == 2
    text = _out(capsys)
    assert f"{flag}='nope'" in text and known in text and not no_sweep


@pytest.mark.parametrize("argv", [["--backends", "nvrtc,reference"], ["--peers", "none"], ["--peers", "torch.math"]])
def test_known_bench_names_and_families_are_taken(capsys, no_sweep, argv):
    assert cli.main(["bench", *argv, "--no-save", "--seqlens", "16", "--head-dims", "32"]) == 0
    assert len(no_sweep) == 1


@pytest.mark.parametrize("argv", [["--directions", "sideways"], ["--tokens", "0"], ["--repeats", "0"],
                                  ["--seqlens", "16,0"], ["--head-dims", "0"], ["--hidden", "0"]])
def test_bad_bench_sweep_flags_are_refused_before_any_work(narrow_console, capsys, no_sweep, argv):
    assert cli.main(["bench", *argv, "--no-save"]) == 2
    assert f"{argv[0]}=" in _out(capsys) and not no_sweep


# -- 6. the bench reference gets every forward argument the plan binds ------------------------------

def test_bench_reference_inputs_are_the_plans_forward_arguments():
    everything = {name: object() for name in FORWARD_ARGUMENTS + ("dout", "not_an_argument")}
    kept = runner._run_inputs(everything, FORWARD_ARGUMENTS)
    assert set(kept) == set(FORWARD_ARGUMENTS) - {"out", "lse"}
    assert {"bias", "descale_q", "descale_k", "descale_v", "scale_o", "amax_o"} <= set(kept)


def _reference_matches_the_plan(desc, inputs, tolerance):
    want = Plan.select(desc, CPU, prefer="reference", restrict=True).run(**inputs).out
    got = runner._reference(desc, inputs, "f32")[0]
    got = np.asarray(got.data if hasattr(got, "data") else got, dtype=np.float32)
    assert np.abs(got - np.asarray(want, dtype=np.float32)).max() <= tolerance * np.abs(want).max()


def test_bench_reference_uses_the_bias():
    desc = AttentionDescriptor(batch=2, seqlen_q=8, seqlen_kv=8, heads_q=2, heads_kv=2, head_dim=16, dtype="f32",
                               bias=True)
    _reference_matches_the_plan(desc, random_inputs(desc, CPU), 1e-5)


def test_bench_reference_uses_the_fp8_scales():
    desc = AttentionDescriptor(batch=1, seqlen_q=8, seqlen_kv=8, heads_q=2, heads_kv=2, head_dim=16, dtype="e4m3")
    inputs = random_inputs(desc, CPU)
    inputs.update(descale_q=np.array([0.25], np.float32), descale_k=np.array([2.0], np.float32),
                  descale_v=np.array([0.5], np.float32))
    _reference_matches_the_plan(desc, inputs, 2.0**-6)


# -- 7. a kernel / autotune cache folder that cannot be written --------------------------------------

def _build(calls):
    def build():
        calls.append(1)
        return b"\x7fELF cubin"
    return build


def _cache_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


def _falls_back_to_memory(folder: Path):
    """Two keys built in an unusable folder: made, kept in memory (the second call of a key hits),
    nothing raised, and one warning for the folder naming it and the fix."""
    calls = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernel_cache.get_or_build("k1", {"name": "n"}, _build(calls)) == (b"\x7fELF cubin", False)
        assert kernel_cache.get_or_build("k1", {"name": "n"}, _build(calls)) == (b"\x7fELF cubin", True)
        assert kernel_cache.get_or_build("k2", {"name": "n"}, _build(calls))[1] is False
    assert len(calls) == 2
    [message] = _cache_warnings(caught)
    assert str(folder) in message and "ATTNPLAN_CACHE_DIR" in message and "in memory" in message


def test_cache_folder_that_is_a_file(tmp_path, monkeypatch):
    folder = tmp_path / "a-file"
    folder.write_text("not a folder")
    monkeypatch.setenv("ATTNPLAN_CACHE_DIR", str(folder))
    _falls_back_to_memory(folder)
    assert folder.read_text() == "not a folder"


def test_read_only_cache_folder(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    monkeypatch.setenv("ATTNPLAN_CACHE_DIR", str(folder))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real_access(p, mode, **kw))
    _falls_back_to_memory(folder)
    assert not list(folder.iterdir())


def test_cache_folder_under_a_read_only_parent(tmp_path, monkeypatch):
    parent = tmp_path / "read-only-parent"
    folder = parent / "kernels"
    monkeypatch.setenv("ATTNPLAN_CACHE_DIR", str(folder))
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == parent or parent in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    _falls_back_to_memory(folder)


def test_writes_that_fail_keep_the_entry_in_memory(tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "kernels"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(folder))
    monkeypatch.setattr(disk_store.tempfile, "mkstemp", refuse)
    _falls_back_to_memory(folder)


def test_plan_select_with_an_unusable_tuning_folder(tmp_path, monkeypatch):
    folder = tmp_path / "tuning-file"
    folder.write_text("")
    monkeypatch.setenv("ATTNPLAN_TUNING_DIR", str(folder))
    desc = AttentionDescriptor(batch=1, seqlen_q=4, seqlen_kv=4, heads_q=1, heads_kv=1, head_dim=8, dtype="f32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Plan.select(desc, CPU, policy="autotune").sku.backend == "reference"
        assert Plan.select(desc, CPU, policy="autotune").sku.backend == "reference"
    [message] = _cache_warnings(caught)
    assert str(folder) in message and "ATTNPLAN_TUNING_DIR" in message


# -- 8. entries and locks honour the umask (a cache shared between users) ---------------------------

@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_entries_and_locks_get_the_umasks_mode(tmp_path, mask, mode):
    folder = tmp_path / "cache" / "kernels"
    with _umask(mask):
        kernel_cache.get_or_build("shared", {"name": "n"}, _build([]))
        key = make_key()
        autotune_cache.get_or_tune(key, lambda: make_entry(key))
    for path in [folder / "shared.cubin", folder / "shared.cubin.lock", *(tmp_path / "cache" / "tuning").iterdir()]:
        assert path.stat().st_mode & 0o777 == mode, path


def test_a_read_only_entry_is_still_read(tmp_path):
    kernel_cache.get_or_build("k", {"name": "n"}, _build([]))
    entry = tmp_path / "cache" / "kernels" / "k.cubin"
    entry.chmod(0o444)
    assert kernel_cache.get_or_build("k", {"name": "n"}, _build([])) == (b"\x7fELF cubin", True)
    assert [e.name for e in kernel_cache.entries()] == ["n"]


# -- 9. a lock another process holds is waited on for a while, then given up on ---------------------

def test_a_held_lock_is_waited_on_then_the_kernel_is_made_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_store.LOCK_TIMEOUT_ENV, "0.3")
    folder = tmp_path / "cache" / "kernels"
    folder.mkdir(parents=True)
    lock_file = folder / "busy.cubin.lock"
    holder = filelock.FileLock(str(lock_file))
    holder.acquire()
    results, calls = [], []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                waiter = threading.Thread(target=lambda: results.append(
                    kernel_cache.get_or_build("busy", {"name": "n"}, _build(calls))), daemon=True)
                waiter.start()
                waiter.join(timeout=20)
                assert not waiter.is_alive(), "the waiter blocked on the lock"
    finally:
        holder.release()
    assert results[0] == (b"\x7fELF cubin", False) and len(calls) == 1
    assert results[1] == (b"\x7fELF cubin", True)         # kept in memory, not made again
    assert not (folder / "busy.cubin").exists()             # nothing written while the lock was not ours
    [message] = _cache_warnings(caught)
    assert str(lock_file) in message and disk_store.LOCK_TIMEOUT_ENV in message


def test_default_lock_waits():
    assert kernel_cache.STORE.lock_timeout() == 120
    assert autotune_cache.STORE.lock_timeout() >= 120


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_lock_timeout_is_refused(monkeypatch, value):
    monkeypatch.setenv(disk_store.LOCK_TIMEOUT_ENV, value)
    with pytest.raises(InvalidOption, match=f"{disk_store.LOCK_TIMEOUT_ENV}='{value}'"):
        kernel_cache.get_or_build("k", {"name": "n"}, _build([]))


# -- 10. every attnplan exception survives pickling (process pools) ---------------------------------

def _no_plan_error():
    desc = AttentionDescriptor(batch=1, seqlen_q=4, seqlen_kv=4, heads_q=1, heads_kv=1, head_dim=8)
    with pytest.raises(attnplan.NoPlanError) as info:
        Plan.select(desc, "sm_90", prefer="cudnn", restrict=True)
    return info.value


def _samples() -> dict:
    from attnplan.kernel_inspect import InspectFailed, InspectToolMissing
    samples = {
        errors.InvalidDescriptor: errors.InvalidDescriptor("head_dim", 300, "at most 256"),
        errors.InvalidOption: errors.InvalidOption("--head-dim", 0, "a positive integer"),
        errors.InvalidPolicy: errors.InvalidPolicy("policy", "slowest", "one of fastest, first, autotune"),
        errors.InvalidArguments: errors.InvalidArguments("q", "x"),
        errors.InvalidFile: errors.InvalidFile("r.json", "not JSON"),
        errors.NoPlanError: _no_plan_error(),
        errors.SkuMismatch: errors.SkuMismatch("pinned kernel gone"),
        errors.KernelCompileError: errors.KernelCompileError("attn_fwd", "error: expected ;"),
        errors.UnknownBackend: errors.UnknownBackend("nope", ["cudnn", "reference"]),
        InspectToolMissing: InspectToolMissing("cuobjdump"),
        InspectFailed: InspectFailed("cuobjdump: bad cubin"),
    }
    try:
        tma = importlib.import_module("attnplan.backends.nvrtc.sm90a.tma")
    except ImportError:
        pass
    else:
        samples[tma.TensorMapError] = tma.TensorMapError("box_dim", 300, "at most 256")
        samples[tma.TensorMapEncodeFailed] = tma.TensorMapEncodeFailed("CUDA_ERROR_INVALID_VALUE")
    return samples


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_attnplan_error_round_trips_through_pickle():
    samples = _samples()
    ours = {c for c in _subclasses(AttnPlanError) if c.__module__.startswith("attnplan")}
    assert ours <= set(samples), f"add a sample of {ours - set(samples)}"
    for cls, error in [(AttnPlanError, AttnPlanError("base")), *samples.items()]:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is cls and str(again) == str(error) and again.args == error.args
        assert vars(again) == vars(error)


def _fail_in_a_worker():
    raise InvalidArguments("q", "has shape [1], expected [2, 3]")


def test_a_failed_worker_reports_its_error():
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        error = pool.submit(_fail_in_a_worker).exception(timeout=120)
    assert isinstance(error, InvalidArguments) and error.argument == "q" and "expected [2, 3]" in str(error)


# -- 13. text that looks like rich markup is printed as it is; JSON lines never wrap ----------------

def test_info_prints_pip_extras_as_written(monkeypatch, capsys):
    from attnplan.backends.cudnn import library
    monkeypatch.setattr(library, "problem", lambda: "pip install attnplan[cuda13] or [/cuda12]")
    monkeypatch.setattr(cli, "console", Console(width=400, color_system=None))
    assert cli.main(["info", "--device", "cpu"]) == 0
    assert "pip install attnplan[cuda13] or [/cuda12]" in capsys.readouterr().out


@pytest.mark.parametrize("command, prefix", [("run", "SKU: "), ("explain", "chosen SKU: "), ("explain", "problem: ")])
def test_json_lines_do_not_wrap_when_piped(narrow_console, capsys, command, prefix):
    assert cli.main([command, "--device", "cpu", "--dtype", "f32", *SMALL]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and len(lines[0]) > 80
    assert isinstance(json.loads(lines[0][len(prefix):]), dict)


@pytest.mark.parametrize("name", ["r[v2].json", "a/[/old].json", "[bold]x.json"])
def test_compare_names_missing_files_as_given(tmp_path, capsys, name):
    assert cli.main(["bench", "compare", str(tmp_path / name), str(tmp_path / "b.json")]) == 2
    assert name in capsys.readouterr().out


def test_bench_errors_print_markup_like_values(capsys):
    assert cli.main(["bench", "--dtypes", "[/x]", "--no-save"]) == 2
    assert "[/x]" in capsys.readouterr().out


def test_bench_without_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "attnplan.bench.plots", None)
    code = cli.main(["bench", "--head-dims", "32", "--seqlens", "16", "--directions", "forward", "--causal", "no",
                     "--repeats", "1", "--output", str(tmp_path / "r[1].json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "pip install -e '.[bench]'" in text and "pip install matplotlib" in text and "r[1].json" in text
    assert "pip install attnplan" not in text            # attnplan is not on PyPI: the hint names what installs
    assert (tmp_path / "r[1].json").exists()


# -- 14. bench compare: malformed files, the threshold, an unwritable --output ----------------------

def _results(rows) -> dict:
    return {"device": {"name": "x"}, "date": "2026-01-01", "versions": {}, "ceilings": {}, "rows": rows}


def _row(**changes) -> dict:
    problem = standard_problem("bf16", 64, 512, False, "forward").as_dict()
    return {"problem": problem, "backend": "nvrtc", "sku": None, "ms": 1.0, "tflops": 100.0, "correct": True,
            **changes}


@pytest.fixture
def good_results(tmp_path) -> Path:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_results([_row()])))
    return path


@pytest.mark.parametrize("rows, words", [
    ([_row(tflops="fast")], "rows[0].tflops='fast'"),
    ([_row(), {k: v for k, v in _row().items() if k != "correct"}], "rows[1].correct=None"),
    ([_row(problem={"dtype": "bf16"})], "rows[0].problem="),
    ([_row(problem={**_row()["problem"], "features": 3})], "rows[0].problem="),
    ([_row(backend=3)], "rows[0].backend=3"),
    (["a row"], "rows[0]='a row'"),
    ({"a": 1}, "rows={'a': 1}"),
])
def test_compare_names_the_file_and_the_bad_row(tmp_path, capsys, good_results, rows, words):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_results(rows)))
    assert cli.main(["bench", "compare", str(good_results), str(bad)]) == 2
    text = capsys.readouterr().out.replace("\n", "")
    assert str(bad) in text and words in text


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_compare_names_a_file_that_is_not_results(tmp_path, capsys, good_results, content):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content.encode("latin-1"))
    assert cli.main(["bench", "compare", str(bad), str(good_results)]) == 2
    assert str(bad) in capsys.readouterr().out.replace("\n", "")


def test_compare_escapes_names_read_from_the_files(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_results([_row(backend="x[/y]")])))
    b.write_text(json.dumps(_results([_row(backend="x[/y]", tflops=50.0)])))
    assert cli.main(["bench", "compare", str(a), str(b)]) == 1
    assert "x[/y]" in capsys.readouterr().out


@pytest.mark.parametrize("threshold", ["-0.1", "1", "1.5", "nan"])
def test_compare_threshold_must_be_a_fraction(narrow_console, capsys, good_results, threshold):
    assert cli.main(["bench", "compare", str(good_results), str(good_results), "--threshold", threshold]) == 2
    assert f"--threshold={float(threshold)}" in _out(capsys)


def test_compare_threshold_zero_is_allowed(capsys, good_results):
    assert cli.main(["bench", "compare", str(good_results), str(good_results), "--threshold", "0"]) == 0


def test_unwritable_bench_output_is_refused_before_the_sweep(tmp_path, narrow_console, capsys, no_sweep):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["bench", "--output", str(blocker / "r.json")]) == 2
    assert "--output=" in _out(capsys) and not no_sweep
    assert blocker.read_text() == ""


def test_writable_bench_output_is_probed_without_leaving_a_file(tmp_path, no_sweep):
    out = tmp_path / "new" / "r.json"
    assert cli.main(["bench", "--output", str(out), "--seqlens", "16", "--head-dims", "32"]) == 0
    assert len(no_sweep) == 1


# -- 15. only cuDNN's not-supported error is a verdict; our bugs are raised ------------------------

class _FakeTensor:
    uids = iter(range(1, 10**6))

    def __init__(self):
        self.uid = next(self.uids)

    def __getattr__(self, name):            # set_output, set_dim, set_stride, set_data_type, ...
        if name.startswith("set_"):
            return lambda *args, **kwargs: self
        raise AttributeError(name)

    def get_uid(self):
        return self.uid


class _FakeGraph:
    fail: dict = {}                          # method name -> exception to raise there

    def __init__(self, **kwargs):
        pass

    def _step(self, name, result=None):
        if name in self.fail:
            raise self.fail[name]
        return result

    def tensor(self, **kwargs):
        return _FakeTensor()

    def sdpa(self, **kwargs):
        return self._step("sdpa", (_FakeTensor(), _FakeTensor()))

    def validate(self):
        self._step("validate")

    def build_operation_graph(self):
        self._step("build_operation_graph")

    def create_execution_plans(self, modes):
        self._step("create_execution_plans")

    def check_support(self):
        self._step("check_support")

    def build_plans(self):
        self._step("build_plans")

    def get_workspace_size(self):
        return 0

    def get_plan_name_at_index(self, index):
        return "fake_plan"


def _fake_cudnn():
    names = types.SimpleNamespace
    return names(cudnnGraphNotSupportedError=type("cudnnGraphNotSupportedError", (RuntimeError,), {}),
                 pygraph=_FakeGraph,
                 data_type=names(HALF="HALF", BFLOAT16="BF16", FLOAT="FLOAT", INT32="INT32", INT64="INT64",
                                 FP8_E4M3="E4M3", FP8_E5M2="E5M2"),
                 diagonal_alignment=names(TOP_LEFT="TL", BOTTOM_RIGHT="BR"), heur_mode=names(A="A", FALLBACK="FB"))


@pytest.fixture
def fake_cudnn(monkeypatch):
    from attnplan.backends.cudnn import graphs, library
    cudnn = _fake_cudnn()
    monkeypatch.setattr(library, "module", lambda: cudnn)
    monkeypatch.setattr(library, "handle", lambda device_index, stream=None: "handle")
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(
        cuda=types.SimpleNamespace(Device=lambda index: contextlib.nullcontext())))
    monkeypatch.setattr(_FakeGraph, "fail", {})
    return cudnn, graphs


def _build_graph(graphs):
    from attnplan.backends.cudnn.mapping import canonical_geometry
    desc = AttentionDescriptor(batch=1, seqlen_q=64, seqlen_kv=64, heads_q=2, heads_kv=2, head_dim=64, dtype="f16",
                               causal=True, return_lse=True)
    return graphs.GraphCache().get(desc, 0, canonical_geometry(desc))


def test_the_fake_graph_builds(fake_cudnn):
    _, graphs = fake_cudnn
    built = _build_graph(graphs)
    assert built.plan_name == "fake_plan" and {"q", "k", "v", "o", "stats"} <= set(built.uids)


@pytest.mark.parametrize("step", ["validate", "check_support", "build_plans"])
def test_cudnns_runtime_error_from_its_own_calls_is_a_verdict(fake_cudnn, step):
    _, graphs = fake_cudnn
    _FakeGraph.fail[step] = RuntimeError("s_q = s_kv = 1 is not supported.")
    with pytest.raises(graphs.GraphUnsupported, match="s_q = s_kv = 1"):
        _build_graph(graphs)


@pytest.mark.parametrize("step", ["validate", "check_support", "build_plans"])
def test_cudnns_not_supported_error_is_the_verdict(fake_cudnn, step):
    cudnn, graphs = fake_cudnn
    _FakeGraph.fail[step] = cudnn.cudnnGraphNotSupportedError("head dim 72 is not supported\nmore")
    with pytest.raises(graphs.GraphUnsupported, match="head dim 72 is not supported"):
        _build_graph(graphs)


@pytest.mark.parametrize("step, error", [
    ("sdpa", TypeError("sdpa() got an unexpected keyword argument 'diagonal_band_left_bound'")),
    ("validate", ValueError("[cudnn_frontend] Error: ATTRIBUTE_NOT_SET")),
    ("check_support", KeyError("o")),
    ("sdpa", RuntimeError("a bug in our declarations")),     # raised while declaring: ours, not cuDNN's
])
def test_other_errors_are_raised_not_taken_for_verdicts(fake_cudnn, step, error):
    _, graphs = fake_cudnn
    _FakeGraph.fail[step] = error
    with pytest.raises(type(error)) as info:
        _build_graph(graphs)
    assert info.value is error and not isinstance(info.value, graphs.GraphUnsupported)


# -- NaN inputs reach exactly the rows they affect, LSE included ---------------------------------

def _nan_inputs():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 5, 2, 8)).astype(np.float32) for _ in range(3))
    return q, k, v


def test_a_nan_query_row_is_nan_in_out_and_lse_and_nowhere_else():
    q, k, v = _nan_inputs()
    q[0, 2, 1, 3] = np.nan
    out, lse = attnplan.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0, 2, 1]).all() and np.isnan(lse[0, 1, 2])
    others = np.ones(lse.shape, dtype=bool)
    others[0, 1, 2] = False
    assert np.isfinite(lse[others]).all()
    assert np.isfinite(np.delete(out[0].reshape(10, 8), 2 * 2 + 1, axis=0)).all()


def test_a_nan_key_reaches_only_the_rows_that_see_it():
    q, k, v = _nan_inputs()
    k[0, 4, 0, 0] = np.nan                      # causal: only query row 4 sees key 4
    out, lse = attnplan.attention(q, k, v, causal=True, return_lse=True)
    assert np.isnan(lse[0, 0, 4]) and np.isnan(out[0, 4, 0]).all()
    assert np.isfinite(lse[0, 0, :4]).all() and np.isfinite(lse[0, 1]).all()
    assert np.isfinite(out[0, :4]).all() and np.isfinite(out[0, 4, 1]).all()


# -- empty dense problems are no-ops with defined outputs, served by the reference ------------------

@pytest.mark.parametrize("batch, seqlen_q, seqlen_kv", [(0, 4, 5), (1, 0, 5), (2, 4, 0), (1, 0, 0)])
def test_empty_dense_problems_are_no_ops(batch, seqlen_q, seqlen_kv):
    q = np.ones((batch, seqlen_q, 2, 8), np.float32)
    k = v = np.ones((batch, seqlen_kv, 2, 8), np.float32)
    out, lse = attnplan.attention(q, k, v, causal=True, return_lse=True)
    assert out.shape == q.shape and lse.shape == (batch, 2, seqlen_q)
    assert (out == 0).all() and (lse == -np.inf).all()
    plan = Plan.select(attnplan.describe(q, k, v), CPU)
    assert plan.sku.backend == "reference"
    dq, dk, dv = attnplan.attention_backward(np.ones_like(q), q, k, v, out, lse, causal=True)
    assert dq.shape == q.shape and dk.shape == k.shape and not dq.any() and not dk.any() and not dv.any()


def test_gpu_backends_decline_empty_problems_with_a_reason():
    desc = AttentionDescriptor(batch=0, seqlen_q=64, seqlen_kv=64, heads_q=2, heads_kv=2, head_dim=64, dtype="f16")
    table = str(attnplan.explain(desc, device="sm_90")).splitlines()
    for backend in ("nvrtc.sm80", "nvrtc.sm90a", "cudnn"):
        line = next(line for line in table if f" {backend} " in line)
        assert "empty problem" in line, line


# -- an arch NVRTC cannot target is a verdict of the nvrtc backends, and the next backend serves ----

def test_an_arch_nvrtc_cannot_target_is_a_verdict_and_the_next_backend_serves(monkeypatch):
    from attnplan.backends.nvrtc import compiler
    from attnplan.backends.reference.backend import ReferenceBackend
    monkeypatch.setattr(compiler, "nvrtc_version", lambda: "13.0")
    monkeypatch.setattr(compiler, "supported_archs", lambda: [80, 90, 100])
    monkeypatch.setattr(ReferenceBackend, "availability", lambda self, desc, device: [])   # as if CuPy were here
    desc = AttentionDescriptor(batch=1, seqlen_q=64, seqlen_kv=64, heads_q=2, heads_kv=2, head_dim=64, dtype="f16")
    verdicts = attnplan.explain(desc, device="sm_91")
    verdict = verdicts.of("nvrtc.sm80")
    assert not verdict.accepted
    assert any("sm_91" in reason and "sm_90" in reason and "NVRTC" in reason for reason in verdict.reasons)
    assert verdicts.choice is not None and not verdicts.choice.startswith("nvrtc")
    assert attnplan.explain(desc, device="sm_90").of("nvrtc.sm80").accepted


# -- `run` on a described device or without a GPU: one line naming --device, exit 2 ----------------

@pytest.mark.parametrize("device", ["sm_90", "cuda"])
def test_run_without_that_gpu_is_a_one_line_error(narrow_console, capsys, monkeypatch, device):
    from attnplan import device as device_module
    monkeypatch.setattr(device_module, "_probe_cuda", lambda index: None)      # no GPU here
    monkeypatch.setattr(device_module, "default_device", device_module.Device.cpu)
    monkeypatch.setattr(cli, "default_device", device_module.Device.cpu, raising=False)
    assert cli.main(["run", *SMALL, "--head-dim", "64", "--device", device]) == 2
    text = _out(capsys).strip()
    assert len(text.splitlines()) == 1, text
    assert "InvalidOption" in text and f"--device={device!r}" in text and "no GPU is present" in text
    assert "`run` needs one" in text and ("only described" in text) == (device == "sm_90")


# -- NumPy scalars are taken as Python values; bad attention() options name the argument -----------

NUMPY_SCALARS = [("scale", np.float32(0.5), 0.5), ("softcap", np.float32(2.0), 2.0),
                 ("dropout_p", np.float64(0.25), 0.25), ("window", (np.int64(3), np.int32(0)), (3, 0)),
                 ("causal", np.bool_(True), True), ("return_lse", np.bool_(False), False)]


@pytest.mark.parametrize("field, value, plain", NUMPY_SCALARS)
def test_numpy_scalars_are_accepted_as_python_values(field, value, plain):
    desc = AttentionDescriptor(batch=1, seqlen_q=4, seqlen_kv=4, heads_q=2, heads_kv=2, head_dim=8, **{field: value})
    assert getattr(desc, field) == plain and type(getattr(desc, field)) is type(plain)
    if field == "window":
        assert all(type(side) is int for side in desc.window)


@pytest.mark.parametrize("option, value", [("window", 5), ("scale", "a"), ("softcap", None), ("dropout_p", None)])
def test_bad_attention_options_name_the_argument(option, value):
    q = np.ones((1, 4, 2, 8), np.float32)
    with pytest.raises(errors.InvalidDescriptor) as info:
        attnplan.attention(q, q, q, **{option: value})
    assert info.value.field == option and info.value.value == value and info.value.allowed
    assert isinstance(info.value, AttnPlanError)


def test_attention_takes_numpy_scalar_options():
    q = np.random.default_rng(1).standard_normal((1, 4, 2, 8)).astype(np.float32)
    out = attnplan.attention(q, q, q, scale=np.float32(0.5), window=[np.int64(1), 0], softcap=np.float32(3.0))
    assert np.isfinite(out).all()


# -- 16. an unknown backend and an unreadable arch are attnplan errors naming what is allowed ---------

def test_an_unknown_backend_is_an_attnplan_error_naming_the_registered_ones():
    from attnplan import registry
    with pytest.raises(errors.UnknownBackend) as caught:
        registry.get("nope")
    error = caught.value
    assert isinstance(error, AttnPlanError) and isinstance(error, KeyError)      # old `except KeyError` still works
    assert (error.field, error.value) == ("backend", "nope") and "reference" in error.allowed
    assert str(error).startswith("no backend named 'nope'; registered: ")           # not KeyError's quoting


def test_cache_warmup_with_an_unreadable_arch_names_the_flag(capsys):
    with pytest.raises(InvalidOption, match=r"--arch='foo' is invalid: an sm arch such as sm_80") as caught:
        from attnplan.backends.nvrtc.warmup import warmup
        warmup("foo", ["bf16"], [64], None)
    assert caught.value.field == "--arch"
    assert cli.main(["cache", "warmup", "--arch", "sm_9x"]) != 0
    assert "--arch='sm_9x' is invalid" in capsys.readouterr().out      # the CLI's console, as for every error


@pytest.mark.parametrize("dtype, shown", [(np.int32, "int32"), (np.uint32, "uint32"), (np.int64, "int64"),
                                          (np.bool_, "bool")])
def test_a_non_float_q_is_named_with_its_numpy_dtype(dtype, shown):
    from attnplan import attention
    good = np.zeros((1, 4, 2, 64), np.float32)
    with pytest.raises(InvalidArguments) as caught:
        attention(np.zeros((1, 4, 2, 64), dtype), good, good)
    assert caught.value.argument == "q" and f"holds {shown} elements" in str(caught.value)
    assert "other:" not in str(caught.value) and "'i32'" not in str(caught.value)
    with pytest.raises(InvalidArguments, match=f"argument 'v': holds {shown} elements"):
        attention(good, good, np.zeros((1, 4, 2, 64), dtype))


def test_from_sku_names_a_malformed_pinned_config_and_raises_a_backends_bug(monkeypatch):
    from attnplan import registry
    from attnplan.errors import SkuMismatch
    desc = AttentionDescriptor(batch=1, seqlen_q=8, seqlen_kv=8, heads_q=1, heads_kv=1, head_dim=16, dtype="f32")
    sku = Plan.select(desc, "cpu", prefer="reference").sku
    backend = registry.get("reference")

    def buggy_build(*args, **kwargs):
        raise KeyError("an internal bug")
    monkeypatch.setattr(backend, "build", buggy_build)
    with pytest.raises(KeyError, match="an internal bug"):          # a bug is not a "mismatch"
        Plan.from_sku(desc, sku, "cpu")
    monkeypatch.undo()
    pytest.importorskip("attnplan.backends.nvrtc.compiler")
    sm80 = AttentionDescriptor(batch=1, seqlen_q=64, seqlen_kv=64, heads_q=1, heads_kv=1, head_dim=64, dtype="f16")
    try:
        pinned = Plan.select(sm80, "sm_80", prefer="nvrtc.sm80", restrict=True).sku
    except errors.NoPlanError as exc:          # NVRTC missing here
        pytest.skip(str(exc))
    config = {k: v for k, v in pinned.config_dict.items() if k != "block_n"}
    with pytest.raises(SkuMismatch, match="pinned config has no 'block_n'"):
        Plan.from_sku(sm80, attrs.evolve(pinned, config=config), "sm_80")
    with pytest.raises(SkuMismatch, match=r"pinned config block_n=\(64,\) is not an integer"):
        Plan.from_sku(sm80, attrs.evolve(pinned, config={**pinned.config_dict, "block_n": [64]}), "sm_80")



def test_install_hints_name_what_really_installs():
    from attnplan.install_hints import EXTRA_PACKAGES, install_hint
    text = install_hint("cuda13", "cuda12")
    assert "pip install -e '.[cuda13]' (or '.[cuda12]')" in text and "cupy-cuda13x" in text
    # every extra a hint names is one pyproject.toml declares, with the packages listed there
    import tomllib
    from pathlib import Path
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("pyproject.toml is not beside the tests")
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for extra, packages in EXTRA_PACKAGES.items():
        declared = {re.split(r"[<>=\[ ]", p)[0] for p in extras[extra]}
        assert set(packages.split()) <= declared, extra
    from attnplan import registry
    from attnplan.device import Device
    for name in ("nvrtc.sm80", "cudnn", "reference"):
        for reason in registry.get(name).availability(AttentionDescriptor(batch=1, seqlen_q=8, seqlen_kv=8, heads_q=1,
                                                                            heads_kv=1, head_dim=64), Device.cuda(arch=90)):
            assert "pip install attnplan" not in reason, (name, reason)


def test_empty_packed_totals_run_on_the_reference_with_defined_outputs(monkeypatch):
    """GPU fuzz (2026-12-02, H200): varlen with no query rows (or no key rows) reached the kernels,
    whose TMA maps and cuDNN graphs cannot take an empty array's strides; such a call now runs on the
    reference build of the same descriptor."""
    from attnplan import AttentionDescriptor, Plan
    from attnplan.backends.reference import ReferenceBackend
    desc = AttentionDescriptor(batch=1, seqlen_q=1, seqlen_kv=1, heads_q=1, heads_kv=1, head_dim=8, dtype="f32",
                               layout="thd", return_lse=True)
    plan = Plan.select(desc, "cpu")
    calls = []

    class Kernel:                       # a stand-in for a GPU backend's executable
        forward = staticmethod(lambda *a: calls.append("kernel"))
        check_arguments = None
        workspace_size = 0

    monkeypatch.setattr(plan, "_executable", Kernel())
    monkeypatch.setattr(plan, "backend", type("B", (), {"name": "nvrtc.sm90a"})())
    empty_q = {"q": np.zeros((0, 1, 8), np.float32), "k": np.ones((1, 1, 8), np.float32),
               "v": np.ones((1, 1, 8), np.float32), "cu_seqlens_q": np.array([0, 0], np.int32),
               "cu_seqlens_kv": np.array([0, 1], np.int32)}
    result = plan.run(**empty_q)
    assert result.out.shape == (0, 1, 8) and result.lse.shape == (1, 0) and calls == []
    empty_kv = {**empty_q, "q": np.ones((1, 1, 8), np.float32), "k": np.zeros((0, 1, 8), np.float32),
                "v": np.zeros((0, 1, 8), np.float32), "cu_seqlens_q": np.array([0, 1], np.int32),
                "cu_seqlens_kv": np.array([0, 0], np.int32)}
    result = plan.run(**empty_kv)
    assert calls == [] and (result.out == 0).all() and np.isneginf(result.lse).all()
    assert isinstance(plan._reference, type(ReferenceBackend().build(desc, plan.device)))
    full = {**empty_kv, "k": np.ones((1, 1, 8), np.float32), "v": np.ones((1, 1, 8), np.float32),
            "cu_seqlens_kv": np.array([0, 1], np.int32)}
    plan.run(**full)
    assert calls == ["kernel"]
