// The sm_90a forward mainloop's parts: the CTA's shared memory and barriers, the producer (TMA loads
// of Q once and of K / V through the ring of fwd_layout.cuh) and the consumer's two GEMMs (S = Q K^T
// with both operands from shared memory, O += P V with P from registers), strung together by
// consume_tiles with the shared mask, score modifiers and online softmax.
#pragma once

#include "common/problem.cuh"
#include "softmax.cuh"
#include "sm90a/ptx.cuh"
#include "sm90a/fragment.cuh"
#include "sm90a/fwd_config.cuh"

namespace attn {
namespace sm90a {

// The CTA's dynamic shared memory with its base aligned up to the swizzle atom (Layout::kBytes
// reserves the slack).
struct SharedTiles {
  unsigned char* base;

  __device__ __forceinline__ static SharedTiles at(unsigned char* raw) {
    const unsigned misalignment = smem_u32(raw) & (kTileAlignment - 1);
    return SharedTiles{raw + ((kTileAlignment - misalignment) & (kTileAlignment - 1))};
  }
  __device__ __forceinline__ unsigned char* bytes(unsigned offset) const { return base + offset; }
  __device__ __forceinline__ unsigned address(unsigned offset) const { return smem_u32(base) + offset; }
  __device__ __forceinline__ unsigned long long* barrier(int index) const {
    return reinterpret_cast<unsigned long long*>(base + Layout::kBarriers) + index;
  }
};

// A tensor map of the parameter block (an Opaque field, backends/nvrtc/sm90a/runner.py).  The block
// is a __grid_constant__ kernel parameter, so the map's generic address is valid for TMA.
__device__ __forceinline__ const TmaDescriptor* tensor_map(const unsigned char (&bytes)[sizeof(TmaDescriptor)]) {
  return reinterpret_cast<const TmaDescriptor*>(bytes);
}

// What one CTA computes: query rows m0 .. m0 + kBlockM - 1 of head h (kv head hkv) of sequence b,
// against the key tiles of `tiles`.
struct TileWork {
  int m0;
  int h;
  int hkv;
  int b;
  KeyTileRange tiles;
};

// Full barriers count the producer's one arrive (plus the TMA bytes); empty ones every consumer thread.
__device__ __forceinline__ void init_barriers(const SharedTiles& smem) {
  mbarrier_init(smem.barrier(Layout::q_full()), 1);
#pragma unroll
  for (int s = 0; s < kStages; ++s) {
    mbarrier_init(smem.barrier(Layout::k_full(s)), 1);
    mbarrier_init(smem.barrier(Layout::k_empty(s)), kConsumerThreads);
    mbarrier_init(smem.barrier(Layout::v_full(s)), 1);
    mbarrier_init(smem.barrier(Layout::v_empty(s)), kConsumerThreads);
  }
  fence_barrier_init();
}

// -- The producer: one thread issues every load ---------------------------------------------------

// One tile of `rows` rows starting at row `row0` of (head, batch), every panel, completing on `full`.
template <int Rows>
__device__ __forceinline__ void load_tile(unsigned char* dst, const TmaDescriptor* map, unsigned long long* full,
                                          unsigned bytes, int row0, int head, int batch) {
  mbarrier_arrive_expect_tx(full, bytes);
#pragma unroll
  for (int panel = 0; panel < Layout::kPanels; ++panel)
    tma_load_4d(dst + Layout::panel(Rows, panel), map, full, Layout::panel_column(panel), row0, head, batch);
}

__device__ __forceinline__ void produce(const FwdParams& p, const SharedTiles& smem, const TileWork& w) {
  const TmaDescriptor* q_map = tensor_map(p.q_map);
  const TmaDescriptor* k_map = tensor_map(p.k_map);
  const TmaDescriptor* v_map = tensor_map(p.v_map);
  prefetch_tensormap(q_map);
  prefetch_tensormap(k_map);
  prefetch_tensormap(v_map);
  prefetch_tensormap(tensor_map(p.o_map));
  load_tile<kBlockM>(smem.bytes(Layout::kQ), q_map, smem.barrier(Layout::q_full()), Layout::kQBytes, w.m0, w.h, w.b);
  const int num_tiles = w.tiles.count();
  for (int k = 0; k < num_tiles; ++k) {
    const PipelineState st = pipeline_state(k, kStages);
    const int key0 = w.tiles.tile(k) * kBlockN;
    mbarrier_wait_parity(smem.barrier(Layout::k_empty(st.stage)), producer_wait_parity(st));
    load_tile<kBlockN>(smem.bytes(Layout::k_tile(st.stage)), k_map, smem.barrier(Layout::k_full(st.stage)),
                       Layout::kKVTileBytes, key0, w.hkv, w.b);
    mbarrier_wait_parity(smem.barrier(Layout::v_empty(st.stage)), producer_wait_parity(st));
    load_tile<kBlockN>(smem.bytes(Layout::v_tile(st.stage)), v_map, smem.barrier(Layout::v_full(st.stage)),
                       Layout::kKVTileBytes, key0, w.hkv, w.b);
  }
}

// -- The consumer's GEMMs (one warpgroup, 64 query rows) -------------------------------------------

// S = Q K^T: Q (this consumer's rows) and K both K-major in shared memory, one m64n<kBlockN>k16 per
// 16 columns of the head dim; returns once the accumulators are final.
__device__ __forceinline__ void qk_gemm(float (&s)[kBlockN / 2], unsigned long long q_desc, int consumer,
                                        unsigned long long k_desc) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kQKSteps; ++kk)
    wgmma_ss<kBlockN, in_t>(s, descriptor_advance(q_desc, Layout::q_k_step(consumer, kk)),
                            descriptor_advance(k_desc, Layout::k_k_step(kk)), kk > 0);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  fence_accumulator(s);
}

// O += P V: P from registers (A fragments), V MN-major (head dim contiguous: TransB = 1).
__device__ __forceinline__ void pv_gemm(float (&o)[kHeadDim / 2], const unsigned (&pf)[kPSteps][4],
                                        unsigned long long v_desc) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kPSteps; ++kk)
    wgmma_rs<kHeadDim, in_t, 1>(o, pf[kk], descriptor_advance(v_desc, Layout::v_k_step(kk)), 1);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  fence_accumulator(o);
}

// P = the softmax's probabilities as wgmma A fragments: the accumulator and A layouts put each element
// in the same thread (layouts.cuh p_source_register), so it is a convert, no shuffle.
__device__ __forceinline__ void pack_p(const float (&s)[kBlockN / 2], unsigned (&pf)[kPSteps][4]) {
#pragma unroll
  for (int kk = 0; kk < kPSteps; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r) pf[kk][r] = pack2(s[p_source_register(kk, r, 0)], s[p_source_register(kk, r, 1)]);
}

// What a consumer's rows need to score one key tile: the modifiers and mask of docs/semantics.md.
struct ScoreRules {
  MaskInfo mask;
  ScoreMods mods;
  float exp_scale;  // score -> log2 units (1 when the modifiers already converted)
  int row_first;    // the consumer's first and last query rows (row_last clipped to seqlen_q - 1)
  int row_last;
};

// Every key tile of `w` for consumer `consumer` (thread `thread` of its warpgroup): wait K, S = Q K^T,
// release K, modifiers and mask, the online softmax (O rescaled), P, wait V, O += P V, release V.
__device__ __forceinline__ void consume_tiles(const SharedTiles& smem, const TileWork& w, int consumer, int thread,
                                              const ScoreRules& rules, float (&o)[kHeadDim / 2],
                                              OnlineSoftmax<kAccumulatorMTiles>& softmax) {
  const unsigned long long q_desc = encode_descriptor(k_major_tile_fields(kTileSwizzle, smem.address(0), kBlockM));
  mbarrier_wait_parity(smem.barrier(Layout::q_full()), 0);
  const int num_tiles = w.tiles.count();
  for (int k = 0; k < num_tiles; ++k) {
    const PipelineState st = pipeline_state(k, kStages);
    const int tile = w.tiles.tile(k);

    float s[kBlockN / 2];
    const unsigned long long k_desc =
        encode_descriptor(k_major_tile_fields(kTileSwizzle, smem.address(Layout::k_tile(st.stage)), kBlockN));
    mbarrier_wait_parity(smem.barrier(Layout::k_full(st.stage)), consumer_wait_parity(st));
    qk_gemm(s, q_desc, consumer, k_desc);
    mbarrier_arrive(smem.barrier(Layout::k_empty(st.stage)));

    auto& scores = as_fragment(s);
    const WgmmaRowsC at = WgmmaRowsC::at(thread, rules.row_first, tile * kBlockN);
    if constexpr (kScoresInLog2) apply_score_mods(scores, at, rules.mods, rules.mask.off);
    if (tile_needs_mask(tile, kBlockN, rules.row_first, rules.row_last, rules.mask)) apply_mask(scores, at, rules.mask);
    softmax.update(scores, as_fragment(o), rules.exp_scale);
    unsigned pf[kPSteps][4];
    pack_p(s, pf);

    const unsigned long long v_desc =
        encode_descriptor(mn_major_tile_fields(kTileSwizzle, smem.address(Layout::v_tile(st.stage)), kBlockN));
    mbarrier_wait_parity(smem.barrier(Layout::v_full(st.stage)), consumer_wait_parity(st));
    pv_gemm(o, pf, v_desc);
    mbarrier_arrive(smem.barrier(Layout::v_empty(st.stage)));
  }
}

}  // namespace sm90a
}  // namespace attn
