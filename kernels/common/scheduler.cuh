// Tile schedulers: which output tile (and head, sequence) a CTA computes.  Non-persistent today:
// one CTA per tile, the grid is (tiles, heads, batch).  A persistent scheduler (a CTA loops over
// tiles handed out longest first) replaces these for the sm_90a generation.
#pragma once

namespace attn {

struct TileCoord {
  int block;  // query tile (forward, dQ) or key tile (dK/dV)
  int head;   // query head (forward, dQ) or kv head (dK/dV)
  int batch;  // sequence
};

// Heaviest tiles first: with causal masking the last query tiles see the most keys, so launching
// them first lets the long CTAs start early and the short ones fill the tail of the wave.
__device__ __forceinline__ TileCoord heaviest_first_tile() {
  return TileCoord{static_cast<int>(gridDim.x - 1 - blockIdx.x), static_cast<int>(blockIdx.y),
                   static_cast<int>(blockIdx.z)};
}

// Tiles in grid order.
__device__ __forceinline__ TileCoord in_order_tile() {
  return TileCoord{static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z)};
}

}  // namespace attn
