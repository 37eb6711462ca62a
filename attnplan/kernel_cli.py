"""`attnplan kernel inspect [problem flags]`: what our compiled kernels for a problem hold (registers,
shared memory, stack, spills, SASS opcodes), read from the cubins on a machine with or without a GPU."""

from __future__ import annotations

import json

from rich.markup import escape
from rich.table import Table

from . import cli, registry
from .device import as_device
from .errors import NoPlanError
from .kernel_inspect import inspect_cubin
from .plan import explain
from .install_hints import install_hint

DEFAULT_DEVICE = "sm_90"     # a described H100: what the shipped tables are for
DEFAULT_FAMILY = "nvrtc"     # the backends that compile kernels of their own (they have `cubins`)
TOP_OPCODES = 6


def add_kernel_parser(sub) -> None:
    p = sub.add_parser("kernel", help="our compiled kernels: registers, shared memory, spills, SASS opcodes")
    inner = p.add_subparsers(dest="kernel_command", required=True)
    i = inner.add_parser("inspect", help="compile (or read from the cache) the kernels a plan would launch, "
                                         "and show what each cubin holds")
    cli.add_problem_arguments(i)
    i.set_defaults(device=DEFAULT_DEVICE, func=cmd_kernel_inspect)
    i.add_argument("--json", action="store_true",
                   help='{"kernels": [{name, registers, shared_bytes, stack_bytes, spill_bytes, opcodes}, ...]}')
    i.add_argument("--top", type=int, default=TOP_OPCODES, help="opcodes shown per kernel in the table")


def compiled_candidate(desc, device, wanted: str):
    """The first backend `wanted` names (a backend or a family) that compiles kernels and whose
    capability checks take `desc`.  Capabilities only: a described device has no GPU or CuPy to offer."""
    members = [b for b in registry.resolve(wanted) if hasattr(b, "cubins")]
    if not members:
        raise ValueError(f"--backend {wanted}: not a backend that compiles kernels ({DEFAULT_FAMILY}.*)")
    verdicts = explain(desc, device, prefer=wanted)
    for backend in members:
        if verdicts.of(backend.name).capable:
            return backend
    reasons = "; ".join(f"{b.name}: {', '.join(verdicts.of(b.name).reasons)}" for b in members)
    raise NoPlanError(f"no {wanted} backend takes this problem on {device}: {reasons}", verdicts)


def _launch_order(kernels, entry_points):
    rank = {name: i for i, name in enumerate(entry_points)}
    return sorted(kernels, key=lambda k: rank.get(k.name, len(rank)))


def cmd_kernel_inspect(args) -> int:
    from .backends.nvrtc.compiler import NvrtcUnavailable

    device = as_device(args.device)
    if device.kind != "cuda" or device.arch is None:
        raise ValueError(f"--device {args.device}: kernel inspect needs a CUDA arch (sm_NN, or a present GPU)")
    desc = cli.descriptor_from(args, device)
    backend = compiled_candidate(desc, device, args.backend or DEFAULT_FAMILY)
    try:
        modules = [(name, _launch_order(inspect_cubin(cubin), entries))
                   for name, cubin, entries in backend.cubins(desc, device)]
    except NvrtcUnavailable as exc:
        cli.console.print(f"[red]error[/red]: {escape(str(exc) + ' (' + install_hint('nvrtc') + ')')}")
        return 2
    if args.json:
        print(json.dumps({"kernels": [k.as_dict() for _, kernels in modules for k in kernels]}))
        return 0
    cli.print_plain(f"backend: {backend.name}   device: {device}")
    for name, kernels in modules:
        table = Table(title=escape(name), caption="shared, stack, spill: bytes (spill: local loads + stores)",
                      show_lines=True)
        table.add_column("kernel", no_wrap=True)
        for column in ("regs", "shared", "stack", "spill", "instrs"):
            table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
        table.add_column("top opcodes", no_wrap=True, overflow="ellipsis")
        for k in kernels:
            top = "\n".join(f"{n:>5} {op}" for op, n in list(k.opcodes.items())[:args.top])
            table.add_row(escape(k.name), str(k.registers), str(k.shared_bytes), str(k.stack_bytes),
                          f"[red]{k.spill_bytes}[/red]" if k.spill_bytes else "0", str(sum(k.opcodes.values())),
                          escape(top))
        cli.console.print(table)
    return 0
