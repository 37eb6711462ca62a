"""The device-side index check (kernels/common/index_check.cu, backends/index_guard.py) without a GPU:
its rules (common/index_rules.cuh, compiled with g++ and run as the kernel runs them) against the
host's check_index_values on random and broken index arrays; the kernel's NVRTC build; the guard's
launch plumbing and reporting with a fake CUDA runtime; the `check_values` modes of `Plan.run`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from attnplan import AttentionDescriptor, PagedKV, Plan
from attnplan.arguments import bind_arguments, check_index_values
from attnplan.backends import index_guard
from attnplan.errors import InvalidArguments
from attnplan.interop import as_tensor
from attnplan.kernels import SOURCE_DIR
from attnplan.value_checks import check_mode

HOST_PROGRAM = Path(__file__).parent / "host" / "index_rules_host.cpp"


@pytest.fixture(scope="module")
def emulate(tmp_path_factory):
    """Runs lines of cases through the host build of the rules; returns their result lines."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found")
    binary = tmp_path_factory.mktemp("index_rules") / "index_rules_host"
    subprocess.run([gxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{SOURCE_DIR}", str(HOST_PROGRAM),
                    "-o", str(binary)], check=True)

    def run(lines: list[str]) -> list[list[int]]:
        out = subprocess.run([str(binary)], input="\n".join(lines) + "\n", check=True, capture_output=True,
                             text=True).stdout
        return [[int(x) for x in line.split()] for line in out.splitlines()]
    return run


def _varlen_desc(batch: int, max_q: int, max_kv: int) -> AttentionDescriptor:
    return AttentionDescriptor(batch=batch, seqlen_q=max_q, seqlen_kv=max_kv, heads_q=2, heads_kv=2, head_dim=8,
                               dtype="f32", layout="thd")


def _host_verdict(check) -> str:
    try:
        check()
    except InvalidArguments as exc:
        return exc.argument
    return ""


def _cu_cases(rng, count: int) -> list[tuple[np.ndarray, int, int]]:
    """(cu, total, max_len): valid arrays and arrays broken in each way, batch 0 included."""
    cases = []
    for i in range(count):
        batch = int(rng.integers(0, 6))
        max_len = int(rng.integers(1, 40))
        lengths = rng.integers(0, max_len + 1, size=batch)
        cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        total = int(cu[-1])
        kind = i % 6
        if kind == 1:
            cu[0] = int(rng.integers(1, 5))                          # does not start at 0
        elif kind == 2 and batch >= 2:
            cu[1], cu[2] = cu[2] + 1, cu[1]                          # decreases
        elif kind == 3:
            total += int(rng.integers(1, 5))                         # ends short of the rows
        elif kind == 4 and batch:
            b = int(rng.integers(0, batch))
            cu[b + 1:] += max_len + 1 - (cu[b + 1] - cu[b])          # one sequence too long
            total = int(cu[-1])
        elif kind == 5 and batch:
            cu[int(rng.integers(1, batch + 1))] = -int(rng.integers(1, 1 << 30))
        cases.append((cu, total, max_len))
    return cases


def test_cu_seqlens_rules_match_the_host_check(emulate):
    rng = np.random.default_rng(0)
    cases = _cu_cases(rng, 600)
    lines = [f"cu {len(cu) - 1} {total} {max_len} " + " ".join(map(str, cu)) for cu, total, max_len in cases]
    broken = 0
    for (cu, total, max_len), result in zip(cases, emulate(lines)):
        batch = len(cu) - 1
        desc = _varlen_desc(max(batch, 1), max_len, max_len)
        host = _host_verdict(lambda: check_index_values(desc, {
            "cu_seqlens_q": cu, "cu_seqlens_kv": np.array([0, 0] if batch == 0 else cu), "q": np.zeros((total, 1)),
            "k": np.zeros((total if batch else 0, 1))})) if batch else \
            ("cu_seqlens_q" if cu[0] != 0 or total != 0 else "")
        fault, safe = result[0], np.array(result[1:])
        assert fault == (host == "cu_seqlens_q"), (cu, total, max_len, host)
        assert (safe == (0 if fault else cu)).all()
        broken += fault
    assert 300 < broken < 600                                       # both kinds were drawn


def _paged_cases(rng, count: int):
    cases = []
    for i in range(count):
        batch, page_size = int(rng.integers(1, 5)), int(rng.choice([1, 4, 16]))
        pages_per_seq = int(rng.integers(1, 6))
        seqlen_kv = int(rng.integers(1, pages_per_seq * page_size + 1))
        num_pages = int(rng.integers(0 if i % 17 == 0 else 1, 12))
        stride = pages_per_seq + int(rng.integers(0, 3))
        lengths = rng.integers(0, seqlen_kv + 1, size=batch).astype(np.int32)
        table = rng.integers(0, max(num_pages, 1), size=(batch, stride)).astype(np.int32)
        table[:, pages_per_seq:] = -7                                  # row padding: never read
        for s in range(batch):                                         # entries past the used pages: garbage
            table[s, -(-int(lengths[s]) // page_size):pages_per_seq] = -1
        kind = i % 5
        if kind == 1:
            lengths[int(rng.integers(0, batch))] = seqlen_kv + int(rng.integers(1, 9))
        elif kind == 2:
            lengths[int(rng.integers(0, batch))] = -int(rng.integers(1, 9))
        elif kind == 3:
            s = int(rng.integers(0, batch))
            lengths[s] = max(lengths[s], 1)
            table[s, int(rng.integers(0, -(-int(lengths[s]) // page_size)))] = num_pages + int(rng.integers(0, 3))
        cases.append((batch, seqlen_kv, page_size, pages_per_seq, stride, num_pages, lengths, table))
    return cases


def test_paged_rules_match_the_host_check_and_the_copies_are_safe(emulate):
    rng = np.random.default_rng(1)
    cases = _paged_cases(rng, 500)
    lines = [f"paged {b} {skv} {ps} {pps} {stride} {pages} " + " ".join(map(str, lengths)) + " " +
             " ".join(map(str, table.ravel())) for b, skv, ps, pps, stride, pages, lengths, table in cases]
    faults = set()
    for (batch, seqlen_kv, page_size, pps, stride, num_pages, lengths, table), result in zip(cases, emulate(lines)):
        desc = AttentionDescriptor(batch=batch, seqlen_q=4, seqlen_kv=seqlen_kv, heads_q=2, heads_kv=2, head_dim=8,
                                   dtype="f32", paged=PagedKV(page_size, pps))
        host = _host_verdict(lambda: check_index_values(desc, {
            "seqlens_kv": lengths, "block_table": table[:, :pps], "k": np.zeros((num_pages, 1))}))
        status = result[0]
        safe_lengths = np.array(result[1:1 + batch])
        safe_table = np.array(result[1 + batch:]).reshape(batch, pps)
        named = [name for bit, name in index_guard.FAULTS.items() if status & bit]
        assert (named[0] if named else "") == host, (lengths, table, num_pages, status, host)
        faults.add(host)
        for s in range(batch):                                         # what the kernels may read is in bounds
            assert 0 <= safe_lengths[s] <= seqlen_kv
            used = -(-int(safe_lengths[s]) // page_size)
            assert all(0 <= p < num_pages for p in safe_table[s, :used])
            if not status:
                assert safe_lengths[s] == lengths[s] and (safe_table[s] == table[s, :pps]).all()
    assert faults == {"", "seqlens_kv", "block_table"}


def test_the_check_kernel_compiles_for_every_arch_without_local_memory():
    compiler = pytest.importorskip("attnplan.backends.nvrtc.compiler")
    try:
        compiler.nvrtc_version()
    except compiler.NvrtcUnavailable as exc:  # pragma: no cover
        pytest.skip(str(exc))
    from attnplan import kernel_inspect
    for arch in (80, 89, 90):
        cubin = index_guard.cubin(arch)
        try:
            info = kernel_inspect.inspect_cubin(cubin)
        except kernel_inspect.InspectToolMissing as exc:  # pragma: no cover
            pytest.skip(str(exc))
        kernel = next(k for k in info if k.name == index_guard.ENTRY)
        assert kernel.spill_bytes == 0 and kernel.stack_bytes == 0 and kernel.registers <= 64
    assert "struct IndexCheckParams {" in index_guard.source()


# -- the guard's plumbing, with a fake CUDA runtime -------------------------------------------------

class FakeRuntime:
    """Records the guard's stream operations; `status` is what the next copy of the status word brings."""

    def __init__(self):
        self.calls, self.status, self.waited = [], 0, 0

    def pinned_word(self):
        word = np.zeros(1, np.uint32)
        return word, word

    def load(self, binary):
        assert binary[:4] == b"\x7fELF"
        return "kernel"

    def launch(self, kernel, grid, filled, stream):
        self.calls.append(("launch", grid, {name: getattr(filled, name) for name, _ in index_guard.PARAMS.fields},
                           stream))

    def clear_word(self, address, stream):
        self.calls.append(("clear", address, stream))

    def copy_word(self, word, address, stream):
        self.calls.append(("copy", address, stream))
        word[0] = self.status

    def new_event(self):
        return "event"

    def record(self, event, stream):
        assert event == "event"
        return True

    def wait_event(self, event):
        self.waited += 1

    def int32_view(self, address, shape, strides, name):
        extent = 1 + sum((n - 1) * st for n, st in zip(shape, strides))
        array = np.lib.stride_tricks.as_strided(np.zeros(extent, np.int32), shape, tuple(4 * st for st in strides))
        view = as_tensor(array, name)
        view.__dict__["ptr"] = address
        return view


def _paged_bound(desc, workspace=None, table=None):
    pages = 6
    args = {"q": np.zeros((desc.batch, desc.seqlen_q, 2, 8), np.float32),
            "k": np.zeros((pages, desc.paged.page_size, 2, 8), np.float32),
            "v": np.zeros((pages, desc.paged.page_size, 2, 8), np.float32),
            "seqlens_kv": np.array([5, 16, 0], np.int32),
            "block_table": np.arange(desc.batch * 4, dtype=np.int32).reshape(desc.batch, 4) % pages
            if table is None else table, "stream": 7}
    if workspace is not None:
        args["workspace"] = workspace
    return bind_arguments(desc, args, check_values=False)


PAGED = AttentionDescriptor(batch=3, seqlen_q=4, seqlen_kv=16, heads_q=2, heads_kv=2, head_dim=8, dtype="f32",
                            paged=PagedKV(4, 4))


def _guard(offset=0):
    pytest.importorskip("attnplan.backends.nvrtc.compiler").nvrtc_version()
    runtime = FakeRuntime()
    guard = index_guard.IndexGuard(PAGED, 0, 90, offset, runtime=runtime)
    guard.workspaces = index_guard.StreamWorkspaces(lambda device, nbytes: (None, 1 << 20))
    return guard, runtime


def test_apply_checks_on_the_stream_and_points_the_arguments_at_the_safe_copies():
    guard, runtime = _guard()
    bound = _paged_bound(PAGED)
    table_strides = bound.block_table.strides
    guard.apply(bound)
    (clear, base, stream), launch, copy = runtime.calls
    assert clear == "clear" and copy == ("copy", base, stream) and base == 1 << 20 and stream == 7
    _, grid, values, launch_stream = launch
    assert grid == (3, 1, 1) and launch_stream == stream
    scratch = index_guard.scratch_layout(PAGED)
    assert values["status"] == base and values["seqlens_kv_safe"] == base + scratch.seqlens_kv
    assert values["block_table_safe"] == base + scratch.block_table and values["num_pages"] == 6
    assert (values["page_size"], values["pages_per_seq"], values["table_row_stride"]) == (4, 4, 4)
    assert values["cu_seqlens_q"] == values["cu_seqlens_kv"] == 0
    assert bound.seqlens_kv.ptr == base + scratch.seqlens_kv and bound.block_table.ptr == base + scratch.block_table
    assert bound.block_table.strides == table_strides


def test_a_padded_block_table_keeps_its_row_stride_in_the_copy():
    guard, runtime = _guard()
    wide = np.zeros((3, 7), np.int32)
    bound = _paged_bound(PAGED, table=wide[:, :4])
    guard.apply(bound)
    values = runtime.calls[1][2]
    assert values["table_row_stride"] == 7 and bound.block_table.strides == (7, 1)


def test_a_fault_is_reported_by_the_next_run_and_by_check():
    guard, runtime = _guard()
    runtime.status = 8                                  # the kernel found a bad page
    guard.apply(_paged_bound(PAGED))
    runtime.status = 0
    with pytest.raises(InvalidArguments, match="block_table.*device-side check") as caught:
        guard.apply(_paged_bound(PAGED))
    assert caught.value.argument == "block_table"
    guard.apply(_paged_bound(PAGED))                    # reported once, then cleared
    runtime.status = 4 | 8
    guard.apply(_paged_bound(PAGED))
    with pytest.raises(InvalidArguments, match="seqlens_kv.*also broken: block_table"):
        guard.check()
    assert runtime.waited >= 1
    guard.check()                                       # nothing left to report


def test_a_caller_workspace_holds_the_scratch_after_the_kernels_own():
    guard, runtime = _guard(offset=512)
    need = 512 + index_guard.scratch_bytes(PAGED)
    workspace = np.zeros(need, np.uint8)
    bound = _paged_bound(PAGED, workspace=workspace)
    guard.apply(bound)
    assert runtime.calls[0][1] == bound.workspace.ptr + 512
    small = _paged_bound(PAGED, workspace=np.zeros(need - 1, np.uint8))
    with pytest.raises(InvalidArguments, match="workspace.*index check"):
        guard.apply(small)


# -- the modes of Plan.run --------------------------------------------------------------------------

def test_check_values_modes():
    assert check_mode(True) == check_mode(np.bool_(True)) == "auto"
    assert check_mode(False) == "off" and check_mode("host") == "host" and check_mode("device") == "device"
    for bad in ("yes", None, 1, "Device"):
        with pytest.raises(InvalidArguments, match="check_values"):
            check_mode(bad)


def test_plans_say_where_they_check_and_count_the_scratch():
    pytest.importorskip("attnplan.backends.nvrtc.compiler").nvrtc_version()
    varlen = _varlen_desc(3, 64, 64).replace(dtype="bf16", head_dim=64)
    gpu = Plan.select(varlen, "sm_90", prefer="nvrtc", restrict=True, policy="first")
    assert gpu.device_check_reason == ""
    assert gpu.workspace_size >= index_guard.scratch_bytes(varlen) > 0
    dense = Plan.select(varlen.replace(layout="bshd"), "sm_90", prefer="nvrtc", restrict=True, policy="first")
    assert "no index arguments" in dense.device_check_reason
    host = Plan.select(varlen.replace(dtype="f32"), "cpu")
    assert "not a GPU" in host.device_check_reason
    cu = np.array([0, 3, 3, 10], np.int32)
    args = {"q": np.zeros((10, 2, 8), np.float32), "k": np.zeros((10, 2, 8), np.float32),
            "v": np.zeros((10, 2, 8), np.float32), "cu_seqlens_q": cu, "cu_seqlens_kv": cu}
    host = Plan.select(_varlen_desc(3, 64, 64), "cpu")
    with pytest.raises(InvalidArguments, match="check_values.*'device' is not possible.*not a GPU"):
        host.run(check_values="device", **args)
    bad = {**args, "cu_seqlens_q": np.array([0, 3, 2, 10], np.int32)}
    with pytest.raises(InvalidArguments, match="cu_seqlens_q"):
        host.run(**bad)                                 # a host plan checks on the host, at once
    assert host.run(**args).out.shape == (10, 2, 8)
    host.check()                                        # no device check ran: nothing to report


def test_a_kept_buffer_serves_tables_of_different_row_strides():
    # One stream, two calls: the second table has padded rows, so its copy lies elsewhere in the scratch
    # with other strides; the view the kernels read must be the second call's, not a kept first one.
    guard, runtime = _guard()
    wide = np.zeros((3, 7), np.int32)
    first = _paged_bound(PAGED)
    guard.apply(first)
    second = _paged_bound(PAGED, table=wide[:, :4])
    guard.apply(second)
    values = runtime.calls[-2][2]
    assert values["table_row_stride"] == 7 and second.block_table.strides == (7, 1)
    assert second.block_table.ptr == values["block_table_safe"]
    assert first.block_table.strides == (4, 1)
