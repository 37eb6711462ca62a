// The order in which a persistent sm_90a kernel takes its work tiles: linear work index -> (query
// tile, head, batch).  A persistent grid of about one CTA per SM walks the indices (CTA c takes c,
// c + gridDim.x, ...; or the next index from an atomic counter), so the order decides both the load
// balance at the end of the grid and which K/V are in L2 together.
//
// The order, and why:
// - (head, batch) pairs are cut into waves of `pairs_per_wave` consecutive pairs (heads of one
//   sequence next to each other, so the query heads that share a KV head under GQA are in one wave).
//   The host sizes a wave so that its K and V fit in L2 (l2_wave_pairs): the CTAs working on one
//   wave then read each K/V tile from DRAM about once.  Without this, a causal wave spread over many
//   heads streams every head's K/V from DRAM, and at 128-row query tiles the forward pass would be
//   bound by memory (128 flop per byte loaded, below an H100's ~240).
// - Within a wave, query tiles go in descending order, all pairs of the wave at one tile before the
//   next: with causal masking query tile m sees m+1 key tiles (more with bottom-right alignment,
//   never fewer for larger m), so the work per item never grows along a wave: longest processing
//   time first.  Handed out by an atomic counter this is Graham's LPT list schedule, within 4/3 of
//   the optimal makespan on identical processors; the long tiles start first and the one-key-tile
//   ones fill the tail.  Without causal masking every
//   item costs the same and the order within a wave does not matter.
// - With one wave (pairs_per_wave >= heads * batch) the whole order is longest first.
// Equal sequence lengths are assumed (dense layouts); varlen problems need per-sequence costs.
#pragma once

#include "common/host_device.cuh"

namespace attn {
namespace sm90a {

struct WorkTile {
  int m_block;  // query tile
  int head;     // query head
  int batch;    // sequence
};

__host__ __device__ constexpr int num_work_tiles(int num_m_blocks, int heads, int batch) {
  return num_m_blocks * heads * batch;
}

__host__ __device__ constexpr WorkTile work_tile(int index, int num_m_blocks, int heads, int batch,
                                                 int pairs_per_wave) {
  const int pairs = heads * batch;
  const int wave_items = pairs_per_wave * num_m_blocks;
  const int wave = index / wave_items;
  const int first_pair = wave * pairs_per_wave;
  const int remaining = pairs - first_pair;
  const int wave_pairs = remaining < pairs_per_wave ? remaining : pairs_per_wave;  // the last wave may be short
  const int within = index - wave * wave_items;
  const int pair = first_pair + within % wave_pairs;
  return WorkTile{num_m_blocks - 1 - within / wave_pairs, pair % heads, pair / heads};
}

// Pairs per wave whose K and V (seqlen_kv x head_dim each, per KV head) fit in `l2_bytes`: whole GQA
// groups (`group` query heads per KV head share one K/V), at least one group.
__host__ __device__ constexpr int l2_wave_pairs(long long l2_bytes, int seqlen_kv, int head_dim, int elem_bytes,
                                                int group) {
  const long long kv_bytes = 2LL * seqlen_kv * head_dim * elem_bytes;
  const long long kv_heads = l2_bytes / kv_bytes;
  return static_cast<int>((kv_heads < 1 ? 1 : kv_heads) * group);
}

}  // namespace sm90a
}  // namespace attn
