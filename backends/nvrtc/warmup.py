"""Compile kernels ahead of time (in parallel) into the disk cache: `attnplan cache warmup`."""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from rich.markup import escape
from rich.progress import Progress

from attnplan.descriptor import AttentionDescriptor
from attnplan.device import Device

from . import compiler
from .backend import backends
from .dispatch import DispatchKey


def _compile(key: DispatchKey) -> tuple[str, bool]:
    _, cached = compiler.compile_key(key)
    return key.name, cached


def keys_for(descriptors, arch: int, limit: int | None = None) -> list[DispatchKey]:
    """The distinct dispatch keys the generations of GENERATIONS would build for `descriptors` on
    sm_`arch` (each descriptor by every generation that takes it; with `limit`, only the first `limit`
    descriptors each generation takes)."""
    from attnplan.capabilities import capability_reasons
    device, keys = Device.cuda(arch=arch), {}
    descriptors = list(descriptors)
    for backend in backends():
        taken = 0
        for desc in descriptors:
            if limit is not None and taken >= limit:
                break
            if not capability_reasons(backend.capabilities, desc, device) and not backend.reasons(desc, device):
                taken += 1
                key = backend.dispatch_key(desc, device)
                keys[key.name] = key
    return list(keys.values())


def compile_all(keys: list[DispatchKey], console=None, workers: int | None = None) -> int:
    """Compile every key (cache hits are free); returns the number that failed."""
    workers = workers or max(1, min(len(keys), os.cpu_count() or 1))
    failures = 0
    with Progress(console=console, transient=False) as progress, ProcessPoolExecutor(workers) as pool:
        task = progress.add_task(f"compiling {len(keys)} kernels", total=len(keys))
        futures = {pool.submit(_compile, key): key for key in keys}
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as exc:  # report every failure, keep compiling the rest
                failures += 1
                progress.console.print(f"[red]failed[/red] {escape(f'{futures[future].name}: {exc}')}")
            progress.advance(task)
    return failures


def standard_descriptors(dtypes, head_dims) -> list[AttentionDescriptor]:
    """The common cells: dtype x head dim x causal x each mask feature alone."""
    features = ({}, {"window": (128, 0)}, {"window": (128, 0), "sink_tokens": 4}, {"alibi": True},
                {"softcap": 30.0}, {"sink_logits": True}, {"dropout_p": 0.1})
    descs = []
    for dtype, head_dim, causal, extra in itertools.product(dtypes, head_dims, (False, True), features):
        descs.append(AttentionDescriptor(batch=1, seqlen_q=128, seqlen_kv=128, heads_q=1, heads_kv=1,
                                         head_dim=head_dim, dtype=dtype, causal=causal, **extra))
    return descs


def warmup(arch: str, dtypes, head_dims, console) -> int:
    text = str(arch).strip().lower().removeprefix("sm_").removeprefix("sm").removesuffix("a")
    if not text.isdigit():
        from attnplan.errors import InvalidOption
        raise InvalidOption("--arch", arch, "an sm arch such as sm_80, sm_89 or sm_90 (or 80, 90a)")
    arch_number = int(text)
    keys = keys_for(standard_descriptors(dtypes, head_dims), arch_number)
    failures = compile_all(keys, console)
    console.print(f"{len(keys) - failures} of {len(keys)} kernels in the cache")
    return 1 if failures else 0
