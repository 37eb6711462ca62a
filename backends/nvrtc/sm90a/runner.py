"""The sm90a forward at run time: the parameter block with its four TMA maps, and the launch.

Kernel (kernels/sm90a/fwd.cu): attn_fwd_kernel, grid (pairs per wave, ceil(seqlen_q / block_m), waves) or the
persistent rung's (min(work tiles, SMs), 1, 1), tiles.num_warps(block_m, rung) * 32 threads (384 for two
consumers and the producer; 512 with three, block_m 192; rung "wgmma" has no producer: 256 / 384),
one parameter: `FwdParams` (the standard fields + q_map, k_map, v_map, o_map, and tile_counter: the
persistent rung's work counter, one int32 per stream, zeroed by a memset before each launch).

The maps are tiled CUtensorMaps (tma.py) over the caller's arrays, dims (head_dim, rows, heads,
batch): q in boxes of (64 columns, block_m rows), k and v (64, block_n), out (64, 64) (each consumer
warpgroup stores its own 64 rows; varlen and the persistent rung store from registers instead).
Varlen (thd) arrays are one batch of every sequence's packed rows; a paged KV cache's maps are
(head_dim, page_size, heads_kv, pages) with boxes of min(page_size, block_n) rows.  A map holds its tensor's address, so it is encoded per
pointer; what depends on the arrays' layout only (the map parameters, the strides of the block) is
worked out once per argument signature, and the filled block is kept per (signature, pointers): a
repeated call with the same tensors does no host work beyond the launch.
"""

from __future__ import annotations


import attrs

from attnplan.descriptor import AttentionDescriptor
from attnplan.device import Device
from attnplan.errors import InvalidArguments
from attnplan.layout_cache import LayoutCache
from attnplan.streams import stream_handle

from .. import launcher, params
from ..dispatch import DispatchKey
from ..launch_params import check_vector_pointers, layout_values, pointer_values
from . import tiles, tma

FORWARD_KERNEL = "attn_fwd_kernel"
MAP_FIELDS = ("q_map", "k_map", "v_map", "o_map")
TENSOR_MAP = params.Opaque(size=tma.TENSOR_MAP_BYTES, align=64)
# tile_counter: the persistent rung's work counter (one int32 per stream, zeroed before each launch).
FORWARD_PARAMS = params.STANDARD["forward"].extended([(name, TENSOR_MAP) for name in MAP_FIELDS]
                                                      + [("tile_counter", "ptr")])
FORWARD_PER_CALL = ("q", "k", "v", "out", "lse", "alibi_slopes", "sink_logits", "cu_seqlens_q", "cu_seqlens_kv",
                    "block_table", "seqlens_kv", "dropout_seed", "tile_counter") + MAP_FIELDS
FILLED_BLOCKS = 64           # filled parameter blocks kept per runner (distinct pointer sets)


H100_SMS = 132      # a described (absent) device's SM count: the H100 / H200 SXM's


def _sm_count(device: Device) -> int:
    """The device's SMs: a persistent grid's CTAs."""
    if not device.present:
        return H100_SMS
    import cupy
    return int(cupy.cuda.runtime.getDeviceProperties(device.index)["multiProcessorCount"])


def forward_entry_points(key: DispatchKey) -> tuple:
    return (FORWARD_KERNEL,)


def map_params(desc: AttentionDescriptor, key: DispatchKey, bound, out) -> dict:
    """name -> TensorMapParams of the four maps for these arrays' shapes and strides; InvalidArguments
    naming the array whose layout TMA cannot address (strides not 16-byte multiples, a head dim that
    is not contiguous)."""
    t = key.tiles
    rows = {"q": t.block_m, "k": t.block_n, "v": t.block_n, "out": tiles.CONSUMER_ROWS}
    maps = {}
    for name, tensor in (("q", bound.q), ("k", bound.k), ("v", bound.v), ("out", out)):
        shape, strides, layout = tuple(tensor.shape), tuple(tensor.strides), desc.layout
        if desc.paged is not None and name in ("k", "v"):
            layout = "paged"      # the caches: (column, row in the page, head, page), boxes of at most a page
        elif layout == "thd":
            # the kernel addresses every map as (column, row, head, batch): varlen's packed rows are one batch
            shape, strides, layout = (1,) + shape, (shape[0] * strides[0],) + strides, "bshd"
        try:
            maps[name] = tma.attention_map(layout, shape, desc.dtype if name != "out" else desc.out_dtype,
                                           rows[name], strides).params
        except tma.TensorMapError as exc:
            raise InvalidArguments(name, f"its strides {list(tensor.strides)} (elements) cannot be a TMA map: "
                                         f"{exc.rule}") from None
    return {f"{'o' if name == 'out' else name}_map": p for name, p in maps.items()}


@attrs.frozen(eq=False)
class Template:
    """What a signature fixes: the map parameters and the block with every layout field filled."""

    maps: dict                   # field -> TensorMapParams
    block: params.ParamBlock


class ForwardRunner:
    """Launches the sm90a forward for bound arguments (the module loads on first use)."""

    notes = ("forward: one CTA per (query tile, head, batch), or about one per SM in the persistent rung (work "
             "drawn from an atomic counter; the output does not depend on the order); a TMA producer warpgroup "
             "and two or three wgmma consumer warpgroups of 64 rows")

    def __init__(self, desc: AttentionDescriptor, key: DispatchKey, cubin: bytes, shared: dict, device: Device,
                 struct: params.StructLayout):
        self.desc, self.key, self.cubin, self.device, self.struct = desc, key, cubin, device, struct
        self.shared = shared["shared_memory_bytes"]
        persistent = _sm_count(device) if key.rung in tiles.PERSISTENT_RUNGS else 0
        group = desc.heads_q // desc.heads_kv
        per_wave = tiles.wave_pairs(desc.heads_q * desc.batch, group, tiles.launch_longest_first(desc),
                                    tiles.l2_wave_pairs(desc.seqlen_kv, desc.head_dim, desc.head_dim_v, group))
        self.grid = tiles.grid(desc.seqlen_q, desc.heads_q, desc.batch, key.tiles.block_m, persistent, per_wave)
        self.threads = key.tiles.num_warps * 32
        self.driver = None                   # None: cuda.bindings (tests put a fake here)
        self._kernel = None
        self._checked = LayoutCache()
        self._templates = LayoutCache()
        self._encoded: dict = {}             # (TensorMapParams, address) -> 128 bytes
        self._filled: dict = {}              # (signature, pointers) -> filled block
        self.persistent = bool(persistent)
        self._counters: dict = {}            # stream handle -> the persistent rung's int32 work counter

    def kernel(self):
        if self._kernel is None:
            self._kernel = launcher.load(self.cubin, FORWARD_KERNEL, self.shared, self.threads, self.device.index)
        return self._kernel

    def check_arguments(self, bound) -> None:
        """Base addresses 16-byte aligned (every call); q, k, v (and a given out) expressible as TMA
        maps (once per signature)."""
        check_vector_pointers({"q": bound.q, "k": bound.k, "v": bound.v, "out": bound.out})
        if bound.out is not None:
            self._checked.get(bound.signature, map_params, self.desc, self.key, bound, bound.out)

    def _template(self, bound, out, lse) -> Template:
        maps = map_params(self.desc, self.key, bound, out)
        return Template(maps, params.ParamBlock(self.struct, layout_values(self.desc, bound, out, lse), FORWARD_PER_CALL))

    def _encode(self, map_params_, address: int) -> bytes:
        cache_key = (map_params_, address)
        blob = self._encoded.get(cache_key)
        if blob is None:
            blob = tma.encode(map_params_, address, self.driver)     # None: cuda-python's driver
            if len(self._encoded) >= FILLED_BLOCKS * len(MAP_FIELDS):
                self._encoded.clear()
            self._encoded[cache_key] = blob
        return blob

    def counter(self, handle: int) -> int:
        """The device address of the persistent rung's work counter for stream `handle` (0 for the other
        rungs): one per stream, so that launches on different streams never share one."""
        if not self.persistent:
            return 0
        buffer = self._counters.get(handle)
        if buffer is None:
            import cupy
            with cupy.cuda.Device(self.device.index):
                buffer = cupy.zeros(1, dtype=cupy.int32)
            self._counters[handle] = buffer
        return int(buffer.data.ptr)

    def block(self, bound, out, lse, counter: int = 0):
        """The filled parameter block for these arguments (kept per signature and pointers)."""
        pointers = {**pointer_values(bound, out, lse), "tile_counter": counter}
        cache_key = (bound.signature, tuple(pointers.values())) if bound.signature is not None else None
        filled = self._filled.get(cache_key) if cache_key is not None else None
        if filled is None:
            check_vector_pointers({"out": out})
            template = self._templates.get(bound.signature, self._template, bound, out, lse)
            addresses = {"q_map": bound.q.ptr, "k_map": bound.k.ptr, "v_map": bound.v.ptr, "o_map": out.ptr}
            maps = {name: self._encode(p, addresses[name]) for name, p in template.maps.items()}
            filled = template.block.fill({**pointers, **maps})
            if cache_key is not None:
                if len(self._filled) >= FILLED_BLOCKS:
                    self._filled.clear()
                self._filled[cache_key] = filled
        return filled

    def __call__(self, bound, out, lse) -> None:
        kernel = self.kernel()                 # first: the context current for the map encoding
        handle = stream_handle(bound.stream, bound.q.origin)
        counter = self.counter(handle)
        filled = self.block(bound, out, lse, counter)
        if counter:
            # the persistent CTAs draw work indices from it (kernels/sm90a/fwd.cu WorkQueue): zero, in stream order
            import cupy
            with cupy.cuda.Device(self.device.index):
                cupy.cuda.runtime.memsetAsync(counter, 0, 4, handle)
        launcher.launch(kernel, self.grid, filled, handle)
