// FlashAttention-2 style forward kernel for sm_80 .. sm_90 (warp-level mma.sync tensor cores).
//
// One CTA computes BLOCK_M query rows of one (sequence, query head); NUM_WARPS warps each own
// BLOCK_M / NUM_WARPS consecutive rows (one or two m16 tiles).  Per key tile of BLOCK_N keys:
//   wait K -> start loading V -> S = Q K^T -> score mods, mask -> online softmax -> wait V ->
//   start loading the next K -> O += P V
// so the K load overlaps P V and the V load overlaps Q K^T and the softmax (one shared-memory
// buffer each for Q, K, V).  With KV_STAGES = 2 K has two buffers and the next K starts loading
// with V, overlapping the whole iteration.  Q stays in shared memory and is re-read with ldmatrix; S, P and O live
// in registers.  The launch contract (grid, strides, varlen, paged KV) is described in
// backends/nvrtc/sm80/tiles.py; the semantics in docs/semantics.md.
//
// Parts, each in its own header: element types and PTX wrappers (common/types.cuh), the fragment
// coordinates every mask and score rule is applied through (common/fragment.cuh), sequence
// coordinates, mask setup, score modifiers and dropout keep bits (common/problem.cuh, shared with
// the backward), the visibility rule and key-tile range (mask.cuh), the online softmax in three
// steps (softmax.cuh), the tile scheduler (common/scheduler.cuh), the shared epilogue
// (common/epilogue.cuh); this generation's shared-memory tiles, loaders and warp GEMMs
// (sm80/smem.cuh), configuration (sm80/fwd_config.cuh), mainloop parts (sm80/fwd_mainloop.cuh) and
// output staging (sm80/fwd_epilogue.cuh).  Below: the kernel that strings them together.
//
// The runtime prepends `struct FwdParams` (backends/nvrtc/params.py) to this file.

#include "common/scheduler.cuh"
#include "softmax.cuh"
#include "sm80/fwd_config.cuh"
#include "sm80/fwd_mainloop.cuh"
#include "sm80/fwd_epilogue.cuh"

// ---------------------------------------------------------------------------------------------
// The kernel.  grid = (ceil(max seqlen_q / BLOCK_M), heads_q, batch), block = NUM_WARPS * 32,
// dynamic shared memory = kSmemBytes (= sm80/tiles.py: shared_memory_bytes).
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(NUM_WARPS * 32) attn_fwd_kernel(const FwdParams p) {
  using namespace attn;
  using namespace attn::sm80;

  const TileCoord work = heaviest_first_tile();
  const int m_block = work.block, h = work.head, b = work.batch;
  const Sequence seq = sequence_of(p, b);
  const int m0 = m_block * kBlockM;
  if (m0 >= seq.seqlen_q) return;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warp_row0 = warp * kWarpRows;
  const int hkv = h / static_cast<int>(p.heads_q / p.heads_kv);

  const MaskInfo mask = mask_of(p, seq);
  const int row_last = imin(m0 + kBlockM, seq.seqlen_q) - 1;
  const KeyTileRange tiles = key_tile_range(m0, row_last, kBlockN, mask);
  const int num_tiles = tiles.count();

  extern __shared__ __align__(128) unsigned char smem_raw[];
  elem_t* smem_q = reinterpret_cast<elem_t*>(smem_raw);  // region 0: Q, later the output tile
  elem_t* smem_k = smem_q + kSmemRegion0;
  elem_t* smem_v = smem_k + kKStages * kSmemK;
  const unsigned smem_q_u32 = smem_u32(smem_q), smem_k_u32 = smem_u32(smem_k), smem_v_u32 = smem_u32(smem_v);

  // Prologue: Q and the first K tile in one cp.async group.
  const elem_t* q = static_cast<const elem_t*>(p.q) + h * p.q_head_stride;
#if IS_VARLEN
  q += static_cast<long long>(seq.q_start) * p.q_row_stride;
#else
  q += b * p.q_batch_stride;
#endif
  const long long q_row_stride = p.q_row_stride;
  TileLoader<kBlockM, kHeadDim, LayoutQK>::load(smem_q, seq.seqlen_q - m0, q,
                                                [&](int row, int) { return q + (m0 + row) * q_row_stride; });
  const KvAddressing k_addr = kv_addressing(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, hkv, seq);
  const KvAddressing v_addr = kv_addressing(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, hkv, seq);
  if (num_tiles > 0) load_kv_tile<kHeadDim, LayoutQK>(smem_k, k_addr, tiles.tile(0) * kBlockN, seq.seqlen_kv);
  cp_async_commit();

  // This thread's query rows and key column offset inside the score fragments.
  FragRows fr;
#pragma unroll
  for (int r = 0; r < 2 * kMTiles; ++r) fr.rows[r] = m0 + warp_row0 + (r / 2) * 16 + (r % 2) * 8 + lane / 4;
  const int col_in_tile = 2 * (lane % 4);

  const ScoreMods mods = score_mods(p, b, h);
  const float exp_scale = kScoresInLog2 ? 1.f : mods.scale_l2;
#if HAS_DROPOUT
  const DropoutKeys dropout = dropout_keys(p);
#endif

  float acc_o[kMTiles][kOTiles][4];
  zero(acc_o);
  OnlineSoftmax<kMTiles> softmax;
  softmax.init();

  for (int k = 0; k < num_tiles; ++k) {
    const int tile = tiles.tile(k);
    const int key0 = tile * kBlockN;

    const int kbuf = kKStages == 2 ? (k & 1) : 0;
    cp_async_wait<0>();  // K (and Q) landed ...
    __syncthreads();     // ... for every thread, and every warp is done with the previous V (and K)
    load_kv_tile<kHeadDimV, LayoutV>(smem_v, v_addr, key0, seq.seqlen_kv);
    cp_async_commit();
    if constexpr (kKStages == 2) {
      if (k + 1 < num_tiles)
        load_kv_tile<kHeadDim, LayoutQK>(smem_k + (kbuf ^ 1) * kSmemK, k_addr, tiles.tile(k + 1) * kBlockN,
                                         seq.seqlen_kv);
      cp_async_commit();  // possibly empty: the wait below always leaves exactly this group pending
    }

    float s[kMTiles][kNTiles][4];
    zero(s);
    gemm_ss<kMTiles, kNTiles, kDimQK / 16>(s, AFromRows<LayoutQK>(smem_q_u32, warp_row0, lane),
                                           BFromRows<LayoutQK>(smem_k_u32 + kbuf * kSmemK * kElemBytes, 0, lane));
    const int col0 = key0 + col_in_tile;
    const QueryRowsC<kMTiles> at{fr.rows, col0, 0};
    if constexpr (kScoresInLog2) apply_score_mods(s, at, mods, mask.off);  // log2 units, softcap and ALiBi applied
    if (tile_needs_mask(tile, kBlockN, m0, row_last, mask)) apply_mask(s, at, mask);
    softmax.update(s, acc_o, exp_scale);
#if HAS_DROPOUT
    drop_scores(s, dropout, b, h, fr, key0, lane);
#endif
    unsigned pf[kMTiles][kKSteps][4];
    pack_a(s, pf);

    cp_async_wait<kKStages - 1>();  // V landed ...
    __syncthreads();                // ... for every thread, and every warp is done reading K
    if (kKStages == 1 && k + 1 < num_tiles) {
      load_kv_tile<kHeadDim, LayoutQK>(smem_k, k_addr, tiles.tile(k + 1) * kBlockN, seq.seqlen_kv);
      cp_async_commit();
    }
    gemm_rs<kMTiles, kOTiles, kKSteps>(acc_o, pf, BFromCols<LayoutV>(smem_v_u32, 0, lane));
  }

  float sink_logit = 0.f;
#if HAS_SINK_LOGITS
  sink_logit = static_cast<const float*>(p.sink_logits)[h];
#endif
  float dropout_scale = 1.f;
#if HAS_DROPOUT
  dropout_scale = static_cast<float>(p.dropout_scale);
#endif
  float out_scale[2 * kMTiles], lse[2 * kMTiles];
  softmax.finalize(exp_scale, sink_logit, dropout_scale, out_scale, lse);

  cp_async_wait<0>();  // nothing may still be landing in region 0 (no tiles: the Q load)
  __syncthreads();     // every warp is done with Q, K and V
  store_output(p, acc_o, out_scale, lse, smem_q, fr, warp_row0, lane, b, h, seq, m0);
}
