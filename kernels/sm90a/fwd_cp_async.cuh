// Rung "wgmma" of the sm_90a forward (fwd_config.cuh Rung::kWgmma): the simplest correct wgmma kernel,
// for bisecting.  No producer warpgroup, no mbarriers, no setmaxnreg: the consumer warpgroups copy Q
// and every K / V tile themselves with 16-byte cp.async into the same swizzled tiles the TMA boxes
// write (layouts.cuh tile_offset), so the wgmma descriptors and the rest of the kernel are the other
// rungs'.  K and V are double-buffered: tile k + 1's copies are in flight while tile k is computed,
// and each GEMM is waited for (as in rung "tma").  Rows past the sequence are zero-filled, as TMA does.
#pragma once

#include "common/cp_async.cuh"
#include "common/problem.cuh"
#include "sm90a/fwd_mainloop.cuh"

namespace attn {
namespace sm90a {

// Rows row0 .. row0 + Rows - 1 of one (sequence, head)'s matrix of RealCols 16-bit columns (`base` its
// row 0, `row_stride` elements apart) into the tile of Cols columns at shared address `tile`, rows at
// or past `valid` and columns past RealCols (a padded head dim) as zeros: 16-byte chunks spread over
// every consumer thread (`tid` of kConsumerThreads).
template <int Rows, int Cols, int RealCols = Cols>
__device__ __forceinline__ void copy_tile(unsigned tile, const in_t* base, long long row_stride, int row0, int valid,
                                          int tid) {
  constexpr int kChunksPerRow = Cols * kTileElemBytes / 16;
  constexpr int kChunks = Rows * kChunksPerRow;
#pragma unroll 4
  for (int c = tid; c < kChunks; c += kConsumerThreads) {
    const int row = c / kChunksPerRow, col = (c % kChunksPerRow) * (16 / kTileElemBytes);
    const bool inside = row0 + row < valid && (RealCols == Cols || col < RealCols);
    const in_t* src = base + (inside ? static_cast<long long>(row0 + row) * row_stride + col : 0);
    cp_async_16(tile + tile_offset(kTileSwizzle, Rows, row, col, kTileElemBytes), src, inside ? 16 : 0);
  }
}

// This thread's copies have landed and are visible to wgmma (async proxy), and so have everybody's.
__device__ __forceinline__ void tiles_landed() {
  fence_proxy_async_shared_cta();
  named_barrier_sync(kLoadBarrier, kConsumerThreads);
}

// Every key tile of `w` for consumer `consumer` (thread `thread` of its warpgroup): the loads, then per
// tile S = Q K^T, modifiers and mask, the online softmax, P, O += P V.
__device__ __forceinline__ void consume_tiles_cp_async(const FwdParams& p, const SharedTiles& smem, const TileWork& w,
                                                       const Sequence& seq, int consumer, int thread,
                                                       const ScoreRules& rules, float (&o)[kHeadDimV / 2],
                                                       OnlineSoftmax<kAccumulatorMTiles>& softmax) {
  const int tid = consumer * kWarpgroupThreads + thread;
  const in_t* q = seq_base<const in_t>(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, w.b, w.h, seq.q_start);
  const in_t* k = seq_base<const in_t>(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, w.b, w.hkv,
                                       seq.kv_start);
  const in_t* v = seq_base<const in_t>(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, w.b, w.hkv,
                                       seq.kv_start);
  const int num_tiles = w.tiles.count();
  const auto load_kv = [&](int index, int stage) {
    const int key0 = w.tiles.tile(index) * kBlockN;
    copy_tile<kBlockN, kHeadDim, kHeadDimData>(smem.address(Layout::k_tile(stage)), k, p.k_row_stride, key0,
                                              seq.seqlen_kv, tid);
    copy_tile<kBlockN, kHeadDimV, kHeadDimVData>(smem.address(Layout::v_tile(stage)), v, p.v_row_stride, key0,
                                                 seq.seqlen_kv, tid);
  };
  copy_tile<kBlockM, kHeadDim, kHeadDimData>(smem.address(Layout::kQ), q, p.q_row_stride, w.m0, seq.seqlen_q, tid);
  if (num_tiles > 0) load_kv(0, 0);
  cp_async_commit();  // group 0: Q and key tile 0
  const unsigned long long q_desc = encode_descriptor(k_major_tile_fields(kTileSwizzle, smem.address(0), kBlockM));
  for (int kk = 0; kk < num_tiles; ++kk) {
    const int stage = kk & 1;
    if (kk + 1 < num_tiles) load_kv(kk + 1, stage ^ 1);  // into the buffer every thread finished reading
    cp_async_commit();                                    // possibly empty: the wait below leaves it pending
    cp_async_wait<1>();                                   // tile kk (and Q) landed
    tiles_landed();
    float s[kBlockN / 2];
    qk_gemm(s, q_desc, consumer, k_descriptor(smem, stage));
    score_tile(s, w.tiles.tile(kk), thread, rules);
    softmax.update(as_fragment(s), as_fragment(o), rules.exp_scale);
    unsigned pf[kPSteps][4];
    pack_p(s, pf);
    pv_gemm(o, pf, v_descriptor(smem, stage));
    named_barrier_sync(kLoadBarrier, kConsumerThreads);   // buffer `stage` read: the next copies may overwrite it
  }
  // Q has landed even without key tiles: the epilogue stages the output in its rows.
  cp_async_wait<0>();
  tiles_landed();
}

}  // namespace sm90a
}  // namespace attn
