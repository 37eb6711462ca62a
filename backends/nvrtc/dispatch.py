"""The dispatch key: exactly the facts that change the generated code, and its canonical name."""

from __future__ import annotations

from typing import Optional

import attrs

from attnplan.descriptor import AttentionDescriptor

# Descriptor feature -> (macro, name fragment).  Order fixes the canonical name.
_FEATURES = (
    ("causal", "IS_CAUSAL", "causal"),
    ("window", "HAS_WINDOW", "window"),
    ("sink_tokens", "HAS_SINK_TOKENS", "sinks"),
    ("sink_logits", "HAS_SINK_LOGITS", "sinklogits"),
    ("alibi", "HAS_ALIBI", "alibi"),
    ("softcap", "HAS_SOFTCAP", "softcap"),
    ("varlen", "IS_VARLEN", "varlen"),
    ("paged", "IS_PAGED", "paged"),
    ("dropout", "HAS_DROPOUT", "dropout"),
    ("deterministic", "IS_DETERMINISTIC", "det"),   # backward only: dQ without atomics
)


@attrs.frozen
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int

    def as_dict(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen
class DispatchKey:
    generation: str          # the Generation's name: "sm80", ...
    arch: str                # compile target: "sm_80", "sm_89", "sm_90", "sm_90a"
    direction: str
    dtype: str
    head_dim: int
    head_dim_v: int
    tiles: TileConfig
    causal: bool = False
    window: bool = False
    sink_tokens: bool = False
    sink_logits: bool = False
    alibi: bool = False
    softcap: bool = False
    varlen: bool = False
    paged: bool = False
    dropout: bool = False
    deterministic: bool = False
    # The deterministic backward's dQ kernel tile; None otherwise.
    dq_tiles: Optional[TileConfig] = None
    # Buffers of the streamed tiles (2: double-buffered loads): the backward's query-side tiles,
    # the forward's K tile.
    stages: int = 1
    # The generation's variant of the same kernel (Generation.rungs: sm90a's "tma", "overlap",
    # "pingpong"); "" for a generation with one.  Compiled as RUNG_<NAME>=1.
    rung: str = ""

    @classmethod
    def for_problem(cls, desc: AttentionDescriptor, generation: str, arch: str, tiles: TileConfig,
                    dq_tiles: Optional[TileConfig] = None, stages: int = 1, rung: str = "") -> "DispatchKey":
        deterministic = desc.direction == "backward" and desc.deterministic
        return cls(generation=generation, arch=arch, direction=desc.direction, dtype=desc.dtype,
                   head_dim=desc.head_dim, head_dim_v=desc.head_dim_v, tiles=tiles, causal=desc.causal,
                   window=desc.has_window, sink_tokens=desc.sink_tokens > 0, sink_logits=desc.sink_logits,
                   alibi=desc.alibi, softcap=desc.softcap > 0, varlen=desc.varlen,
                   paged=desc.paged is not None, dropout=desc.dropout_p > 0, deterministic=deterministic,
                   dq_tiles=dq_tiles if deterministic else None, stages=stages, rung=rung)

    @property
    def name(self) -> str:
        """attn_<gen>_<dir>_<dtype>_d<qk>x<v>_m<bm>n<bn>w<warps>[s<stages>][_<rung>][_<feature>...][_dqm<bm>n<bn>w<warps>]_<arch>
        (s<stages>: double-buffered query tiles (backward) or K tiles (forward); dqm...: the deterministic dQ kernel's tile)"""
        t = self.tiles
        stages = f"s{self.stages}" if self.stages > 1 else ""
        parts = [f"attn_{self.generation}", "fwd" if self.direction == "forward" else "bwd", self.dtype,
                 f"d{self.head_dim}x{self.head_dim_v}", f"m{t.block_m}n{t.block_n}w{t.num_warps}{stages}"]
        if self.rung:
            parts.append(self.rung)
        parts += [fragment for field, _, fragment in _FEATURES if getattr(self, field)]
        if self.dq_tiles is not None:
            d = self.dq_tiles
            parts.append(f"dqm{d.block_m}n{d.block_n}w{d.num_warps}")
        parts.append(self.arch.replace("_", ""))
        return "_".join(parts)

    def defines(self) -> dict[str, int]:
        t = self.tiles
        macros = {"ATTN_DTYPE_BF16": int(self.dtype == "bf16"), "HEAD_DIM": self.head_dim,
                  "HEAD_DIM_V": self.head_dim_v, "BLOCK_M": t.block_m, "BLOCK_N": t.block_n,
                  "NUM_WARPS": t.num_warps}
        macros.update({macro: int(getattr(self, field)) for field, macro, _ in _FEATURES
                       if self.direction == "backward" or field != "deterministic"})
        macros["KV_STAGES"] = self.stages
        if self.rung:
            macros[f"RUNG_{self.rung.upper()}"] = 1
        if self.dq_tiles is not None:
            macros.update({"DQ_BLOCK_M": self.dq_tiles.block_m, "DQ_BLOCK_N": self.dq_tiles.block_n,
                           "DQ_NUM_WARPS": self.dq_tiles.num_warps})
        return macros
