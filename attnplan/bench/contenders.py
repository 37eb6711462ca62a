"""A contender is one way to compute a benchmark problem: one of our plans, or a peer library.
Each is prepared once (its first call, compile / graph build included, is timed apart) and then
launched by input-set index so the timing loop can rotate inputs."""

from __future__ import annotations

import time
from typing import Callable, Optional

import attrs

from attnplan.plan import Plan


@attrs.frozen(eq=False)
class Prepared:
    backend: str
    sku: Optional[dict]
    first_call_ms: float
    launch: Callable[[int], object]          # launch(set_index): enqueue one run on that input set
    outputs: Callable[[int], dict]           # outputs(set_index): {"out": ..} or {"dq": .., "dk": .., "dv": ..}


def synchronize() -> None:
    from attnplan.device import default_device
    if default_device().kind == "cuda":
        import cupy
        cupy.cuda.get_current_stream().synchronize()


def _timed_first_call(build: Callable[[], Callable[[int], object]]) -> tuple[Callable[[int], object], float]:
    start = time.perf_counter()
    launch = build()
    launch(0)
    synchronize()
    return launch, (time.perf_counter() - start) * 1e3


def prepare_plan(backend: str, desc, input_sets: list[dict], fixed: list, plan: Optional[Plan] = None) -> Prepared:
    """One of our backends.  `input_sets` hold q/k/v/... per set; `fixed` holds out/lse/dout
    per set for backward (computed once by the reference)."""
    from attnplan.arguments import lse_shape
    from attnplan.interop import empty, wrap_storage, as_tensor
    from attnplan.dtypes import lse_dtype

    results: dict[int, object] = {}
    plan_holder: dict = {}

    def build():
        chosen = plan or Plan.select(desc, prefer=backend, restrict=True, policy="first")
        plan_holder["plan"] = chosen
        q = as_tensor(input_sets[0]["q"], "q")
        if desc.direction == "forward":
            shape = q.shape[:-1] + (desc.head_dim_v,)
            out = [wrap_storage(empty(shape, desc.out_dtype, q), desc.out_dtype)
                   for _ in input_sets]
            lse = [wrap_storage(empty(lse_shape(desc, q.shape[0]), lse_dtype(desc.dtype), q), lse_dtype(desc.dtype))
                   for _ in input_sets]

            def launch(i):
                chosen.run(check_values=False, out=out[i], lse=lse[i], **input_sets[i])
                results[i] = {"out": out[i], "lse": lse[i]}
        else:
            def launch(i):
                grads = chosen.run(check_values=False, **input_sets[i], **fixed[i])
                results[i] = dict(zip(("dq", "dk", "dv"), grads))
        return launch

    launch, first = _timed_first_call(build)
    return Prepared(backend, plan_holder["plan"].sku.to_dict(), first, launch, lambda i: results[i])
