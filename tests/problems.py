"""Random attention problems for the tests: arrays plus the index arguments a layout needs.

`make_problem` returns a dict of keyword arguments that both `attnplan.attention` and
`brute_force.attention` accept (q, k, v and, as needed, cu_seqlens_*, block_table, seqlens_kv,
alibi_slopes, sink_logits, layout).  Paged caches get a shuffled block table and random junk in
every row no sequence owns, so reading a wrong page or row shows up as a wrong answer.
"""

from __future__ import annotations

from typing import Optional, Sequence

import ml_dtypes
import numpy as np

DTYPES = {"f64": np.float64, "f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16,
          "e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}


def _cu(lengths: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def make_problem(rng: np.random.Generator, *, batch: int = 1, seqlen_q: int = 5, seqlen_kv: int = 7,
                 heads_q: int = 2, heads_kv: int = 2, head_dim: int = 8, head_dim_v: Optional[int] = None,
                 layout: str = "bshd", dtype: str = "f64", lengths_q: Optional[Sequence[int]] = None,
                 lengths_kv: Optional[Sequence[int]] = None, page_size: Optional[int] = None,
                 pages_per_seq: Optional[int] = None, alibi: Optional[str] = None,
                 sink_logits: bool = False) -> dict:
    """Arguments of one random problem.

    layout "bshd" / "bhsd" / "thd"; for "thd" `lengths_q` / `lengths_kv` give each sequence's
    length (default: random in [0, seqlen]).  `page_size` switches to a paged KV cache with
    `pages_per_seq` pages per sequence (default: just enough for seqlen_kv); `lengths_kv` then
    gives `seqlens_kv`.  alibi: None, "heads" (slopes [heads_q]) or "batch_heads" ([batch, heads_q]).
    """
    head_dim_v = head_dim if head_dim_v is None else head_dim_v
    host = DTYPES[dtype]

    def normal(*shape):
        return rng.standard_normal(shape).astype(host)

    args: dict = {"layout": layout}
    if layout == "thd":
        lengths_q = list(lengths_q) if lengths_q is not None else list(rng.integers(0, seqlen_q + 1, batch))
        batch = len(lengths_q)
        args["q"] = normal(sum(lengths_q), heads_q, head_dim)
        args["cu_seqlens_q"] = _cu(lengths_q)
        args["max_seqlen_q"] = seqlen_q
    elif layout == "bhsd":
        args["q"] = normal(batch, heads_q, seqlen_q, head_dim)
    else:
        args["q"] = normal(batch, seqlen_q, heads_q, head_dim)

    if page_size is not None:
        pages_per_seq = pages_per_seq or -(-seqlen_kv // page_size)
        lengths_kv = list(lengths_kv) if lengths_kv is not None else list(rng.integers(0, seqlen_kv + 1, batch))
        num_pages = batch * pages_per_seq + 1          # one spare page nobody owns
        args["k"] = normal(num_pages, page_size, heads_kv, head_dim)
        args["v"] = normal(num_pages, page_size, heads_kv, head_dim_v)
        args["block_table"] = rng.permutation(num_pages)[: batch * pages_per_seq].reshape(
            batch, pages_per_seq).astype(np.int32)
        args["seqlens_kv"] = np.asarray(lengths_kv, dtype=np.int32)
        args["max_seqlen_kv"] = seqlen_kv
    elif layout == "thd":
        lengths_kv = list(lengths_kv) if lengths_kv is not None else list(rng.integers(0, seqlen_kv + 1, batch))
        args["k"] = normal(sum(lengths_kv), heads_kv, head_dim)
        args["v"] = normal(sum(lengths_kv), heads_kv, head_dim_v)
        args["cu_seqlens_kv"] = _cu(lengths_kv)
        args["max_seqlen_kv"] = seqlen_kv
    elif layout == "bhsd":
        args["k"] = normal(batch, heads_kv, seqlen_kv, head_dim)
        args["v"] = normal(batch, heads_kv, seqlen_kv, head_dim_v)
    else:
        args["k"] = normal(batch, seqlen_kv, heads_kv, head_dim)
        args["v"] = normal(batch, seqlen_kv, heads_kv, head_dim_v)

    if alibi == "heads":
        args["alibi_slopes"] = rng.uniform(0.05, 0.6, heads_q).astype(np.float32)
    elif alibi == "batch_heads":
        args["alibi_slopes"] = rng.uniform(0.05, 0.6, (batch, heads_q)).astype(np.float32)
    if sink_logits:
        args["sink_logits"] = rng.uniform(-1.0, 1.5, heads_q).astype(np.float32)
    return args
