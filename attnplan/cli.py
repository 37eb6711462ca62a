"""The `attnplan` command: info, explain, run, tune, cache, kernel (and bench)."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, registry
from .accuracy import relative_l2_error
from .descriptor import AttentionDescriptor, PagedKV
from .device import as_device, default_device
from .errors import AttnPlanError, InvalidOption
from .plan import Plan, assess
from .problems import random_inputs
from .timing import median, time_ms

console = Console()


def print_plain(text: str) -> None:
    """One line exactly as given: no markup, highlighting or emoji codes, and never wrapped, so a
    JSON payload in it stays one parseable line when the output is piped."""
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def add_problem_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that describe one attention problem (shared by explain, run and bench)."""
    p = parser.add_argument_group("problem")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seqlen-q", type=int, default=None)
    p.add_argument("--seqlen-kv", type=int, default=None)
    p.add_argument("--heads-q", type=int, default=None)
    p.add_argument("--heads-kv", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=None)
    p.add_argument("--head-dim-v", type=int, default=None)
    p.add_argument("--dtype", default="bf16", help="f16 | bf16 | f32 | f64 | e4m3 | e5m2")
    p.add_argument("--layout", default="bshd", help="bshd | bhsd | thd (varlen)")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--alignment", default="bottom_right", help="bottom_right | top_left")
    p.add_argument("--window", type=int, nargs=2, default=(-1, -1), metavar=("LEFT", "RIGHT"))
    p.add_argument("--sink-tokens", type=int, default=0)
    p.add_argument("--sink-logits", action="store_true")
    p.add_argument("--alibi", action="store_true")
    p.add_argument("--softcap", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--paged", type=int, default=None, metavar="PAGE_SIZE", help="paged KV with this page size")
    p.add_argument("--backward", action="store_true")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | sm_NN (described, for explain)")
    p.add_argument("--backend", default=None, help="run only this backend")


def positive(flag: str, value, default):
    """A size flag's value: `default` when the flag was left out; InvalidOption when it is not positive
    (0 must not quietly mean "the default")."""
    if value is None:
        return default
    if value <= 0:
        raise InvalidOption(flag, value, "a positive integer (leave the flag out for the default)")
    return value


def descriptor_from(args, device) -> AttentionDescriptor:
    on_gpu = device.kind == "cuda"
    seqlen_q = positive("--seqlen-q", args.seqlen_q, 2048 if on_gpu else 128)
    seqlen_kv = positive("--seqlen-kv", args.seqlen_kv, seqlen_q)
    head_dim = positive("--head-dim", args.head_dim, 128 if on_gpu else 64)
    heads_q = positive("--heads-q", args.heads_q, 16 if on_gpu else 4)
    page_size = positive("--paged", args.paged, None)
    paged = None if page_size is None else PagedKV(page_size, -(-seqlen_kv // page_size))
    return AttentionDescriptor(
        batch=positive("--batch", args.batch, 4 if on_gpu else 2), seqlen_q=seqlen_q, seqlen_kv=seqlen_kv,
        heads_q=heads_q, heads_kv=positive("--heads-kv", args.heads_kv, heads_q), head_dim=head_dim,
        head_dim_v=positive("--head-dim-v", args.head_dim_v, head_dim),
        dtype=args.dtype, layout=args.layout, causal=args.causal, causal_alignment=args.alignment,
        window=tuple(args.window), sink_tokens=args.sink_tokens, sink_logits=args.sink_logits, alibi=args.alibi,
        softcap=args.softcap, dropout_p=args.dropout, paged=paged, return_lse=True,
        deterministic=args.deterministic, direction="backward" if args.backward else "forward")


def _versions() -> dict:
    versions = {"attnplan": __version__, "python": platform.python_version()}
    for backend in registry.backends():
        versions.update(backend.library_versions())
    return versions


def cmd_info(args) -> int:
    device = as_device(args.device)
    console.print(f"[bold]attnplan {__version__}[/bold] on {escape(str(device))}")
    table = Table("backend", "libraries", "available on this device")
    for backend in registry.backends():
        versions = ", ".join(f"{k} {v}" for k, v in backend.library_versions().items()) or "-"
        probe = AttentionDescriptor(batch=1, seqlen_q=1, seqlen_kv=1, heads_q=1, heads_kv=1, head_dim=64, dtype="f16")
        own = backend.availability(probe, device) or backend.reasons(probe, device)
        table.add_row(escape(backend.name), escape(versions), "yes" if not own else escape("; ".join(own)))
    console.print(table)
    return 0


def _verdict_table(verdicts) -> Table:
    table = Table("", "backend", "kernel", "estimate TFLOP/s", "estimate us", "measured ms", "verdict",
                  show_lines=False)
    for v in verdicts:
        # Reasons are plain text: "[cuda13]" in a pip hint must not be read as rich markup.
        table.add_row(verdicts.mark(v.backend), escape(v.backend), escape(v.kernel),
                      f"{v.estimate_tflops:.0f}" if v.estimate_tflops else "-",
                      f"{v.estimate_us:.1f}" if v.estimate_us else "-",
                      f"{v.measured_ms:.3f}" if v.measured_ms else "-",
                      "[green]accepted[/green]" if v.accepted else escape("; ".join(v.reasons)))
    return table


def cmd_explain(args) -> int:
    device = as_device(args.device)
    desc = descriptor_from(args, device)
    restrict = args.backend is not None
    verdicts = assess(desc, device, prefer=args.backend, restrict=restrict, policy=args.policy)
    if args.json:
        print(json.dumps({"problem": desc.to_dict(), "device": str(device), **verdicts.as_json()}, default=str))
        return 0 if verdicts.choice else 1
    print_plain(f"problem: {json.dumps(desc.to_dict())}")
    print_plain(f"device: {device}")
    console.print(_verdict_table(verdicts))
    print_plain(f"policy {verdicts.policy}: ranking {', '.join(verdicts.ranking) or '-'}")
    print_plain(f"choice: {verdicts.choice or '-'} ({verdicts.why})")
    if verdicts.choice is None:
        console.print("[red]no plan[/red]: NoPlanError")
        return 1
    try:
        plan = Plan.select(desc, device, prefer=args.backend, restrict=restrict, policy=args.policy)
    except AttnPlanError as exc:
        console.print(f"[red]no plan[/red]: {exc.__class__.__name__}")
        return 1
    print_plain(f"chosen SKU: {plan.sku.to_json()}")
    return 0


def cmd_tune(args) -> int:
    device = as_device(args.device)
    desc = descriptor_from(args, device)
    restrict = args.backend is not None
    # Measure (again, with --force) and remember; the plan then comes from the fresh cache entry.
    verdicts = assess(desc, device, prefer=args.backend, restrict=restrict, policy="autotune", measure=True,
                      retune=args.force)
    plan = Plan.select(desc, device, prefer=args.backend, restrict=restrict, policy="autotune")
    table = Table("backend", "kernel", "measured ms", "measured TFLOP/s", "estimate TFLOP/s", "verdict")
    for v in verdicts:
        table.add_row(escape(("* " if v.backend == verdicts.choice else "") + v.backend), escape(v.kernel),
                      f"{v.measured_ms:.4f}" if v.measured_ms else "-",
                      f"{v.measured_tflops:.2f}" if v.measured_tflops else "-",
                      f"{v.estimate_tflops:.0f}" if v.estimate_tflops else "-",
                      "accepted" if v.accepted else escape("; ".join(v.reasons)))
    print_plain(f"problem: {json.dumps(desc.to_dict())}")
    print_plain(f"device: {device}")
    console.print(table)
    print_plain(f"choice: {verdicts.choice} ({verdicts.why})")
    print_plain(f"chosen SKU: {plan.sku.to_json()}")
    return 0


def _reference_plan(desc, device):
    return Plan.select(desc, device, prefer="reference", restrict=True)


def _runnable_device(text):
    """The device `run` computes on: the CPU or a GPU that is present.  A described arch (sm_90) stands
    for the present GPU when that GPU is of that arch; otherwise InvalidOption names --device."""
    device = as_device(text)
    if device.kind != "cuda" or device.present:
        return device
    present = default_device()
    if device.arch is not None and present.kind == "cuda" and present.arch == device.arch:
        return present
    here = f"the GPU present is {present.arch_name}" if present.kind == "cuda" else "no GPU is present"
    described = f"{device.arch_name} is only described; " if device.arch is not None else ""
    raise InvalidOption("--device", text, f"{described}{here}, and `run` needs one to compute on (use --device cpu; "
                                          "`attnplan explain` and `kernel inspect` take a described device)")


def cmd_run(args) -> int:
    device = _runnable_device(args.device)
    desc = descriptor_from(args, device)
    plan = Plan.select(desc, device, prefer=args.backend, restrict=args.backend is not None, policy=args.policy)
    inputs = random_inputs(desc, device, seed=args.seed)
    reference = _reference_plan(desc, device)
    if desc.direction == "backward":
        forward_desc = desc.replace(direction="forward")
        fwd_args = {k: v for k, v in inputs.items() if k != "dout"}
        out, lse = _reference_plan(forward_desc, device).run(**fwd_args)
        inputs.update(out=out, lse=lse)
    result = plan.run(**inputs)
    expected = reference.run(**inputs)
    if desc.direction == "backward":
        errors = {name: relative_l2_error(got, want) for name, got, want in zip(("dq", "dk", "dv"), result, expected)}
    else:
        errors = {"out": relative_l2_error(result.out, expected.out), "lse": relative_l2_error(result.lse, expected.lse)}
    repeats = positive("--repeats", args.repeats, None)
    times = time_ms(lambda: plan.run(check_values=False, **inputs), device, repeats=repeats, warmup=2)
    ms = median(times)
    tflops = desc.flops() / (ms * 1e-3) / 1e12
    print_plain(f"device: {device}")
    print_plain(f"SKU: {plan.sku.to_json()}")
    console.print("relative L2 error vs the float64 reference: "
                  + ", ".join(f"{k}={v:.3e}" for k, v in errors.items()))
    console.print(f"time: {ms:.3f} ms median of {len(times)} ({tflops:.2f} TFLOP/s)")
    limit = 1e-6 if desc.dtype == "f64" else 2e-2
    bad = [k for k, v in errors.items() if not v <= limit]
    if bad:
        console.print(f"[red]FAILED[/red]: error of {', '.join(bad)} above {limit}")
        return 1
    console.print("[green]OK[/green]")
    return 0


def cmd_cache(args) -> int:
    from . import kernel_cache
    if args.action == "list":
        table = Table("kernel", "arch", "bytes", "file")
        for entry in kernel_cache.entries():
            table.add_row(escape(entry.name), escape(entry.arch), str(entry.size), escape(entry.path.name))
        print_plain(f"cache: {kernel_cache.cache_dir()}")
        console.print(table)
    elif args.action == "clear":
        print_plain(f"removed {kernel_cache.clear()} entries from {kernel_cache.cache_dir()}")
    else:
        from .backends.nvrtc.warmup import warmup
        return warmup(args.arch, args.dtypes, args.head_dims, console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnplan", description=__doc__)
    parser.add_argument("--version", action="version", version=f"attnplan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="device, arch, backends and their library versions")
    info.add_argument("--device", default=None)
    info.set_defaults(func=cmd_info)
    for name, func, text in (("explain", cmd_explain, "each backend's verdict, estimate and rank, and the choice"),
                             ("run", cmd_run, "random inputs through a backend, checked against the reference"),
                             ("tune", cmd_tune, "time every accepting backend on the problem, remember the winner")):
        p = sub.add_parser(name, help=text)
        add_problem_arguments(p)
        if name == "run":
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--repeats", type=int, default=10)
        if name in ("explain", "run"):
            p.add_argument("--policy", default=None, help="fastest | first | autotune (default $ATTNPLAN_POLICY, "
                                                          "else fastest)")
        if name == "explain":
            p.add_argument("--json", action="store_true", help="one JSON object: problem, device, verdicts, "
                                                               "ranking, choice")
        if name == "tune":
            p.add_argument("--force", action="store_true", help="measure again even if the cache has an answer")
        p.set_defaults(func=func)
    cache = sub.add_parser("cache", help="the compiled-kernel cache")
    cache.add_argument("action", choices=("list", "clear", "warmup"))
    cache.add_argument("--arch", default="sm_90", help="for warmup: target arch")
    cache.add_argument("--dtypes", nargs="+", default=["f16", "bf16"])
    cache.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
    cache.set_defaults(func=cmd_cache)
    from .kernel_cli import add_kernel_parser
    add_kernel_parser(sub)
    try:
        from .bench.cli import add_bench_parser
    except ImportError:
        pass
    else:
        add_bench_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AttnPlanError as exc:
        console.print(f"[red]{exc.__class__.__name__}[/red]: {escape(str(exc))}", soft_wrap=True)   # one line
        return 2
    except (KeyError, ValueError) as exc:         # unknown --backend, malformed --device, ...
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        console.print(f"[red]error[/red]: {escape(str(message))}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
