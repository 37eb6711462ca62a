"""`attnplan bench` (a sweep; table, JSON, plot) and `attnplan bench compare A.json B.json`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from attnplan.errors import InvalidOption
from ..install_hints import install_hint

GPU_SEQLENS = "512,1024,2048,4096,8192,16384"
CPU_SEQLENS = "32,64"          # the reference on a CPU: small problems, so the command never just fails
CPU_TOKENS = 128


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _words(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark every backend (and PyTorch SDPA peers) on a problem sweep",
                       description="Sweeps FlashAttention's standard setup (16k tokens, hidden 2048) by default.")
    p.add_argument("--dtypes", type=_words, default=["bf16"])
    p.add_argument("--head-dims", type=_ints, default=[64, 128])
    p.add_argument("--seqlens", type=_ints, default=None, help=f"default {GPU_SEQLENS} (GPU), {CPU_SEQLENS} (CPU)")
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--directions", type=_words, default=["forward", "backward"])
    p.add_argument("--features", type=_words, default=[], help="any of window,gqa,varlen,paged (added to every problem)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per problem (default 16384 on GPU)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--backends", type=_words, default=None, help="our backends to run (default: all that accept)")
    p.add_argument("--peers", type=_words, default=None, help="peers to run (default: all installed; 'none')")
    p.add_argument("--baseline", default=None, help="backend the ratio column divides by (default torch.flash)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--output", default=None, help="results JSON (default bench/results/<date>-<device>.json)")
    p.add_argument("--plot", default=None, help="PNG path (default: beside the JSON)")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.set_defaults(func=cmd_bench)
    inner = p.add_subparsers(dest="bench_command")
    c = inner.add_parser("compare", help="per-problem ratios of B to A; exit 1 on regressions")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--threshold", type=float, default=0.05)
    c.set_defaults(func=cmd_compare)
    t = inner.add_parser("table", help="the planner's table (attnplan/tuning/<arch>.json) from results files")
    t.add_argument("results", nargs="+", help="bench results JSON files of one arch (same-run sweeps)")
    t.add_argument("-o", "--output", required=True, help="the table to write, e.g. attnplan/tuning/sm90.json")
    t.set_defaults(func=cmd_table)


def _check_names(flag: str, names, known: list[str], is_known) -> None:
    """InvalidOption naming the first of `names` that is not known, with the list of known ones."""
    for name in names or ():
        if not is_known(name):
            raise InvalidOption(flag, name, f"one of {', '.join(known)}")


def check_sweep_flags(args) -> None:
    """Refuse what the sweep would only trip over later (or silently skip): unknown backends,
    peers or directions, and an output file that cannot be written."""
    from attnplan import registry
    from attnplan.cli import positive
    from . import peers
    from . import results as results_io

    names = [b.name for b in registry.backends()]
    families = sorted({registry.family(n) for n in names} - set(names))
    _check_names("--backends", args.backends, names + [f"{f} (a family)" for f in families],
                 lambda n: n in names or n in families)
    _check_names("--peers", args.peers, [*peers.KNOWN, "none"], lambda n: n in peers.KNOWN or n == "none")
    _check_names("--directions", args.directions, ["forward", "backward"], lambda n: n in ("forward", "backward"))
    for flag, values in (("--head-dims", args.head_dims), ("--seqlens", args.seqlens)):
        for value in values or ():
            positive(flag, value, None)
    positive("--hidden", args.hidden, None)
    if not args.no_save:
        target = Path(args.output) if args.output else Path(results_io.DEFAULT_FOLDER)
        try:
            results_io.check_writable(target, folder=not args.output)
        except OSError as exc:
            raise InvalidOption("--output", str(target),
                                f"a file that can be written ({exc})") from None


def cmd_bench(args) -> int:
    from attnplan.cli import positive
    from attnplan.device import default_device
    from . import results as results_io
    from .problems import sweep
    from .runner import run_sweep

    console = _console()
    check_sweep_flags(args)
    on_gpu = default_device().kind == "cuda"
    seqlens = args.seqlens or _ints(GPU_SEQLENS if on_gpu else CPU_SEQLENS)
    tokens = positive("--tokens", args.tokens, 16384 if on_gpu else CPU_TOKENS)
    hidden = args.hidden if on_gpu or args.tokens else min(args.hidden, 128)
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    try:
        problems = sweep(args.dtypes, args.head_dims, seqlens, causals, args.directions, args.features, tokens, hidden)
        problems[0].descriptor() if problems else None
    except Exception as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    peer_names = [] if args.peers == ["none"] else args.peers
    repeats = positive("--repeats", args.repeats, 30 if on_gpu else 3)
    path = None
    clock = {"last": time.perf_counter()}

    def finished(problem, partial):           # print each problem's rows and save as we go
        nonlocal path
        progress.advance(task)
        now = time.perf_counter()
        progress.console.print(f"[dim]{escape(problem.label)}: {now - clock['last']:.1f} s "
                               "(inputs, reference, all backends)[/dim]")
        clock["last"] = now
        for row in partial["rows"]:
            if row["problem"]["seqlen_q"] == problem.seqlen_q and _label(row["problem"]) == problem.label:
                progress.console.print(escape(f"{problem.label:42s} {row['backend']:16s} "
                                              f"{row['tflops'] or 0:8.1f} TFLOP/s  correct={row['correct']}"))
        if not args.no_save:
            path = results_io.write(partial, path or args.output or results_io.default_path(partial))

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(problems))
        data = run_sweep(problems, backends=args.backends, peer_names=peer_names, repeats=repeats,
                         warmup=args.warmup, on_problem=finished)
    console.print(results_table(data, args.baseline))
    if not data["rows"]:
        console.print("[yellow]no backend accepted any problem[/yellow]")
    if args.no_save:
        return 0
    path = results_io.write(data, path or args.output or results_io.default_path(data))
    console.print(f"results: {escape(str(path))}")
    try:
        from .plots import plot
        png = plot(data, args.plot or path.with_suffix(".png"))
        console.print(f"plot: {escape(str(png))}")
    except ImportError:
        console.print(f"[yellow]{escape('matplotlib not installed: no plot (' + install_hint('bench') + ')')}[/yellow]")
    except ValueError as exc:
        console.print(f"[yellow]no plot: {escape(str(exc))}[/yellow]")
    return 0 if all(r["correct"] for r in data["rows"] if "error" not in r) else 1


def results_table(data: dict, baseline: str | None = None) -> Table:
    names = {r["backend"] for r in data["rows"]}
    baseline = baseline or ("torch.flash" if "torch.flash" in names else None)
    table = Table(title=escape(f"{data['device']['name']}  (TFLOP/s; ratio to {baseline or '-'})"))
    for column in ("problem", "backend", "ms", "TFLOP/s", "ratio", "correct", "first call ms", "kernel"):
        table.add_column(column, justify="right" if column in ("ms", "TFLOP/s", "ratio", "first call ms") else "left")
    base = {}
    for r in data["rows"]:
        if r["backend"] == baseline and r.get("tflops"):
            base[_label(r["problem"])] = r["tflops"]
    for r in data["rows"]:
        label = _label(r["problem"])
        ratio = r["tflops"] / base[label] if r.get("tflops") and label in base else None
        verdict = "yes" if r["correct"] else ("error" if "error" in r else "[red]WRONG[/red]")
        kernel = (r.get("sku") or {}).get("kernel", "") if r.get("sku") else r.get("error", "")[:60]
        table.add_row(escape(label), escape(r["backend"]), f"{r['ms']:.3f}" if r.get("ms") else "-",
                      f"{r['tflops']:.3g}" if r.get("tflops") else "-", f"{ratio:.2f}" if ratio else "-",
                      verdict, f"{r.get('first_call_ms', 0):.0f}", escape(kernel))
    return table


def _label(p: dict) -> str:
    from .problems import BenchProblem
    return BenchProblem.from_dict(p).label


def cmd_compare(args) -> int:
    from . import results as results_io
    console = _console()
    if not 0 <= args.threshold < 1:
        raise InvalidOption("--threshold", args.threshold, "a fraction 0 <= t < 1 (0.05: B may be 5% slower than A)")
    try:
        a, b = results_io.load(args.a), results_io.load(args.b)
    except (OSError, ValueError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    rows = results_io.compare(a, b, args.threshold)
    table = Table(title=f"B / A TFLOP/s (regression: below {1 - args.threshold:.2f})")
    for column in ("problem", "backend", "A", "B", "B/A", ""):
        table.add_column(column)
    for r in rows:
        table.add_row(escape(_label(r["problem"])), escape(r["backend"]), _fmt(r["a_tflops"]), _fmt(r["b_tflops"]),
                      f"{r['ratio']:.3f}" if r["ratio"] else "-", "[red]REGRESSION[/red]" if r["regression"] else "")
    console.print(table)
    if not rows:
        console.print("[yellow]no problem/backend in common[/yellow]")
    return 1 if any(r["regression"] for r in rows) else 0


def cmd_table(args) -> int:
    from attnplan.tuning.generate import write_table
    console = _console()
    try:
        path, table = write_table(args.results, args.output)
    except (OSError, ValueError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    candidates = sorted({c.key.candidate for c in table.cells})
    console.print(escape(f"{path}: {len(table.cells)} cells for {table.arch} ({', '.join(candidates)}) "
                         f"from {len(table.sources)} results files"))
    return 0


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=220)


def _fmt(x) -> str:
    return f"{x:.1f}" if x else "-"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
