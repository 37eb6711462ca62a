"""Tile configurations and shared-memory sizes of the sm80 kernels (kernels/sm80/fwd.cu, then bwd.cu below).

The kernel is compiled with -D HEAD_DIM, HEAD_DIM_V, BLOCK_M, BLOCK_N, NUM_WARPS (plus dtype and
feature switches) and launched as

    grid  = (ceil(seqlen_q / block_m), heads_q, batch)    seqlen_q: the maximum over sequences (varlen)
    block = num_warps * 32 threads
    dynamic shared memory = shared_memory_bytes(head_dim, head_dim_v, block_m, block_n)

The runtime must raise cudaFuncAttributeMaxDynamicSharedMemorySize when that exceeds 48 KiB.
Every configuration returned by `tile_config` fits the arch it was asked for.  The kernel also
requires 16-byte aligned q/k/v/out base pointers and row/head/batch (page) strides that are
multiples of 8 elements (16-byte cp.async and vector stores), scale > 0, and softcap > 0 whenever
HAS_SOFTCAP is on.
"""

from __future__ import annotations

# Largest dynamic shared memory per block (bytes) by compute capability; unknown archs get the
# smallest (sm_86 / sm_89 class) limit.
MAX_DYNAMIC_SMEM = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_SMALLEST_SMEM = 99 * 1024

# (block_m, block_n, num_warps, stages) by max(head_dim, head_dim_v) rounded up to the next key: 4
# warps x 32 query rows up to d=128 (S and O fit in registers), 8 warps x 16 rows above it (O alone
# is d/2 floats per thread there); stages = K tile buffers.  Measured on an H100 (bench/tile_sweep.py):
# single-buffered, 128x64 beat 128x128 at d=64 and d=128 (bench/results/2026-11-23-h100-sm80-forward-
# tiles.json); with K double-buffered, 128x128 is 8-14% faster at d=64, 128x64 1-4% faster at d=128
# (bench/results/2026-11-23-h100-sm80-forward-kbuffers.json) and 128x64 / 8 warps 5-7% faster at
# d=256 (…-forward-d256-kbuffers.json).  So two K buffers wherever they fit.
_PREFERRED = ((64, (128, 128, 4)), (128, (128, 64, 4)), (256, (128, 64, 8)))
# Tried in order when the preferred tile does not fit the arch's shared memory (d=256 on sm_89).
_FALLBACKS = ((64, 64, 4), (64, 32, 4))


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _row_stride(cols: int) -> int:
    """Elements per shared-memory row: swizzled rows of 64k elements, else padded by 8 (fwd.cu SmemLayout)."""
    cols = _round_up(cols, 16)
    return cols if cols % 64 == 0 else cols + 8


def shared_memory_bytes(head_dim: int, head_dim_v: int, block_m: int, block_n: int, stages: int = 1,
                        dtype_bytes: int = 2) -> int:
    """Dynamic shared memory of one CTA: Q (or the output tile, whichever is larger) + `stages` K
    tiles + one V tile."""
    qk, v = _row_stride(head_dim), _row_stride(head_dim_v)
    return (block_m * max(qk, v) + stages * block_n * qk + block_n * v) * dtype_bytes


def smem_limit(arch: int) -> int:
    """Largest dynamic shared memory per block on sm_`arch` (unknown archs: the smallest class)."""
    return MAX_DYNAMIC_SMEM.get(arch, _SMALLEST_SMEM)


def _two_if_fits(smem_of_stages, arch: int) -> int:
    """2 (double-buffered) when smem_of_stages(2) fits sm_`arch`'s shared memory, else 1."""
    return 2 if smem_of_stages(2) <= smem_limit(arch) else 1


def forward_stages(head_dim: int, head_dim_v: int, block_m: int, block_n: int, arch: int) -> int:
    """K tile buffers of attn_fwd_kernel: 2 where they fit sm_`arch`'s shared memory, else 1."""
    return _two_if_fits(lambda stages: shared_memory_bytes(head_dim, head_dim_v, block_m, block_n, stages), arch)


def tile_config(head_dim: int, head_dim_v: int | None = None, arch: int = 80) -> dict:
    """{block_m, block_n, num_warps, stages, smem_bytes} for the given head dims on sm_`arch` (80, 86,
    89, 90 ...)."""
    head_dim_v = head_dim if head_dim_v is None else head_dim_v
    _check_dims(head_dim, head_dim_v)
    _, preferred = _by_widest(_PREFERRED, head_dim, head_dim_v)
    return _first_fitting((preferred, *_FALLBACKS),
                          lambda m, n: forward_stages(head_dim, head_dim_v, m, n, arch),
                          lambda m, n, stages: shared_memory_bytes(head_dim, head_dim_v, m, n, stages),
                          head_dim, head_dim_v, arch, "tile")


def _by_widest(table, head_dim: int, head_dim_v: int) -> tuple:
    """(limit, entry) of the first row of `table` whose head-dim limit covers the wider head dim."""
    widest = max(head_dim, head_dim_v)
    return next((limit, entry) for limit, entry in table if widest <= limit)


def _first_fitting(candidates, stages_of, smem_of, head_dim: int, head_dim_v: int, arch: int, what: str) -> dict:
    """The first (block_m, block_n, num_warps) of `candidates` whose shared memory
    smem_of(block_m, block_n, stages), with stages = stages_of(block_m, block_n), fits sm_`arch`."""
    limit = smem_limit(arch)
    for block_m, block_n, num_warps in candidates:
        stages = stages_of(block_m, block_n)
        smem = smem_of(block_m, block_n, stages)
        if smem <= limit:
            return {"block_m": block_m, "block_n": block_n, "num_warps": num_warps, "stages": stages,
                    "smem_bytes": smem}
    raise ValueError(f"head dims {head_dim}/{head_dim_v}: no sm80 {what} fits {limit} bytes of shared memory "
                     f"on sm_{arch}")


def grid(seqlen_q: int, heads_q: int, batch: int, block_m: int) -> tuple[int, int, int]:
    """Launch grid; seqlen_q is the maximum sequence length for varlen."""
    return (-(-seqlen_q // block_m), heads_q, batch)


# -- backward (kernels/sm80/bwd.cu) ------------------------------------------------------------
#
# attn_bwd_kernel: grid = (ceil(seqlen_kv / block_n), heads_kv, batch), block = num_warps * 32,
# dynamic shared memory = backward_shared_memory_bytes(...).  Pairs of warps own slabs of
# block_n / (num_warps / 2) keys (16 or 32; check_backward_tile): one warp of a pair computes S^T and
# dP^T for half of the query rows, the other for the other half, and each keeps half of the dK / dV
# columns, with P^T and dS^T exchanged through shared memory.
# attn_bwd_dq_kernel (deterministic only): grid = (ceil(seqlen_q / block_m), heads_q, batch) with the
# dq tile below.  Preprocess and convert kernels: runners.py (AUX_ROWS, AUX_THREADS).

# (block_m, block_n, num_warps) by the wider head dim, after FlashAttention-2's sm80 choices; the
# fallbacks serve archs with less shared memory (sm_86 / sm_89).  d <= 64: 128 query rows per step
# (FlashAttention-2's d64 tile) beat 64 by 2-3.5% on an H200 at s=4096; d <= 128: 64 rows stay best
# (bench/tile_sweep.py --direction backward, bench/results/2026-11-23-h200-sm80-backward-tiles.json).
_BWD_PREFERRED = ((64, (128, 128, 8)), (128, (64, 128, 8)), (256, (64, 64, 8)))
# Causal d <= 64: the smaller tile wastes less on the diagonal and wins by 3-5% at s=2k-8k on an H100,
# while 128x128 wins by 7% without the mask (bench/results/2026-11-23-h100-sm80-backward-d64-tiles.json).
_BWD_PREFERRED_CAUSAL = {64: (64, 64, 4)}
_BWD_FALLBACKS = {64: ((64, 64, 4),), 128: ((64, 64, 4), (32, 64, 4)), 256: ((32, 32, 4),)}
_DQ_PREFERRED = ((128, (64, 64, 4)), (256, (64, 32, 4)))
_DQ_FALLBACKS = ((32, 32, 2),)


def backward_shared_memory_bytes(head_dim: int, head_dim_v: int, block_m: int, block_n: int, stages: int = 1,
                                 dtype_bytes: int = 2) -> int:
    """K, V (block_n rows), `stages` buffers of Q, dO (block_m rows) and of block_m fp32 LSE and
    delta values, P^T and dS^T (block_n x block_m): bwd.cu kv::kSmemBytes."""
    qk, v = _row_stride(_round_up(head_dim, 32)), _row_stride(_round_up(head_dim_v, 32))
    tiles = (block_n + stages * block_m) * (qk + v) + 2 * block_n * _row_stride(block_m)
    return tiles * dtype_bytes + stages * 2 * block_m * 4


def dq_shared_memory_bytes(head_dim: int, head_dim_v: int, block_m: int, block_n: int, dtype_bytes: int = 2) -> int:
    """Q, dO (block_m rows) and K, V (block_n rows) of the deterministic dQ kernel (bwd.cu dq::kSmemBytes)."""
    qk, v = _row_stride(head_dim), _row_stride(head_dim_v)
    return (block_m + block_n) * (qk + v) * dtype_bytes


def _check_dims(head_dim: int, head_dim_v: int) -> None:
    for dim in (head_dim, head_dim_v):
        if dim % 8 or not 8 <= dim <= 256:
            raise ValueError(f"head dim {dim}: must be a multiple of 8 in [8, 256]")


def check_backward_tile(block_m: int, block_n: int, num_warps: int) -> None:
    """ValueError unless attn_bwd_kernel can be built with this tile (bwd.cu kv:: static_asserts)."""
    slabs = num_warps // 2
    if num_warps % 2 or not slabs or block_n % slabs or block_n // slabs not in (16, 32):
        raise ValueError(f"backward tile block_n={block_n}, num_warps={num_warps}: num_warps must be even and "
                         f"block_n / (num_warps / 2) must be 16 or 32")
    if block_m % 32:
        raise ValueError(f"backward tile block_m={block_m}: must be a multiple of 32")


def backward_stages(head_dim: int, head_dim_v: int, block_m: int, block_n: int, arch: int) -> int:
    """2 (double-buffered query-side tiles) when that fits sm_`arch`'s shared memory, else 1."""
    return _two_if_fits(
        lambda stages: backward_shared_memory_bytes(head_dim, head_dim_v, block_m, block_n, stages), arch)


def backward_tile_config(head_dim: int, head_dim_v: int | None = None, arch: int = 80, causal: bool = False) -> dict:
    """{block_m, block_n, num_warps, stages, smem_bytes} of attn_bwd_kernel on sm_`arch`: the preferred
    tile double-buffered, else single-buffered, else the fallbacks likewise."""
    head_dim_v = head_dim if head_dim_v is None else head_dim_v
    _check_dims(head_dim, head_dim_v)
    key, preferred = _by_widest(_BWD_PREFERRED, head_dim, head_dim_v)
    if causal:
        preferred = _BWD_PREFERRED_CAUSAL.get(key, preferred)
    return _first_fitting((preferred, *_BWD_FALLBACKS[key]),
                          lambda m, n: backward_stages(head_dim, head_dim_v, m, n, arch),
                          lambda m, n, stages: backward_shared_memory_bytes(head_dim, head_dim_v, m, n, stages),
                          head_dim, head_dim_v, arch, "backward tile")


def dq_tile_config(head_dim: int, head_dim_v: int | None = None, arch: int = 80) -> dict:
    """{block_m, block_n, num_warps, stages (always 1), smem_bytes} of the deterministic
    attn_bwd_dq_kernel on sm_`arch`."""
    head_dim_v = head_dim if head_dim_v is None else head_dim_v
    _check_dims(head_dim, head_dim_v)
    _, preferred = _by_widest(_DQ_PREFERRED, head_dim, head_dim_v)
    return _first_fitting((preferred, *_DQ_FALLBACKS), lambda m, n: 1,
                          lambda m, n, stages: dq_shared_memory_bytes(head_dim, head_dim_v, m, n),
                          head_dim, head_dim_v, arch, "dQ tile")
