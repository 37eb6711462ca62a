// FlashAttention forward kernel for sm_90a (Hopper): TMA loads, wgmma, warp specialization.
// Rung "tma" of the sm90a generation (backends/nvrtc/sm90a: verified.json says which rungs a GPU
// run has verified; the planner does not choose an unverified one).
//
// One CTA computes BLOCK_M = 128 query rows of one (sequence, query head), 384 threads:
//   warpgroup 0, the producer: setmaxnreg.dec, then one thread issues the TMA loads -- Q once, then
//     K and V of every key tile the query tile visits (mask.cuh key_tile_range, diagonal first)
//     through a ring of KV_STAGES buffers each, full / empty mbarriers per buffer (fwd_layout.cuh);
//   warpgroups 1 and 2, the consumers: setmaxnreg.inc, 64 query rows each; per key tile: wait K,
//     S = Q K^T (SS wgmma), release K, score modifiers and mask through the wgmma accumulator's
//     fragment coordinates (sm90a/fragment.cuh; common/problem.cuh, mask.cuh), the online softmax
//     (softmax.cuh, the accumulator viewed as [1][N/8][4]), P to A fragments in registers, wait V,
//     O += P V (RS wgmma, V MN-major), release V.  Then O scaled, staged in the consumer's own rows
//     of the Q tile and written by TMA stores; the LSE by plain stores.
// No intra-warpgroup overlap or ping-pong yet: each GEMM is waited for before the softmax.
//
// Parts: the layout and index math (sm90a/fwd_layout.cuh, host-compilable), configuration
// (sm90a/fwd_config.cuh), mainloop (sm90a/fwd_mainloop.cuh), epilogue (sm90a/fwd_epilogue.cuh), the
// PTX wrappers (sm90a/ptx.cuh) and wgmma layouts (sm90a/layouts.cuh), and the headers every
// generation shares (mask.cuh, softmax.cuh, common/).
//
// Launch (backends/nvrtc/sm90a/runner.py): grid (ceil(seqlen_q / BLOCK_M), heads_q, batch), 384
// threads, kSmemBytes of dynamic shared memory.  The runtime prepends `struct FwdParams` (the
// standard fields plus four CUtensorMaps: q_map, k_map, v_map, o_map; backends/nvrtc/sm90a/__init__.py),
// passed as one __grid_constant__ parameter so that TMA can address the maps in it.

#include "common/scheduler.cuh"
#include "sm90a/fwd_config.cuh"
#include "sm90a/fwd_mainloop.cuh"
#include "sm90a/fwd_epilogue.cuh"

extern "C" __global__ void __launch_bounds__(attn::sm90a::kThreads, 1)
    attn_fwd_kernel(const __grid_constant__ FwdParams p) {
  using namespace attn;
  using namespace attn::sm90a;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const TileCoord coord = heaviest_first_tile();
  const Sequence seq = sequence_of(p, coord.batch);
  const int m0 = coord.block * kBlockM;
  if (m0 >= seq.seqlen_q) return;
  const MaskInfo mask = mask_of(p, seq);
  const int row_last = imin(m0 + kBlockM, seq.seqlen_q) - 1;
  const int hkv = coord.head / static_cast<int>(p.heads_q / p.heads_kv);
  const TileWork work{m0, coord.head, hkv, coord.batch, key_tile_range(m0, row_last, kBlockN, mask)};

  const SharedTiles smem = SharedTiles::at(smem_raw);
  if (threadIdx.x == 0) init_barriers(smem);
  __syncthreads();

  const int warpgroup = static_cast<int>(threadIdx.x) / kWarpgroupThreads;
  if (warpgroup == 0) {
    setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == 0) produce(p, smem, work);
    return;
  }
  setmaxnreg_inc<kConsumerRegisters>();

  const int consumer = warpgroup - 1;
  const int thread = static_cast<int>(threadIdx.x) % kWarpgroupThreads;
  const ScoreMods mods = score_mods(p, coord.batch, coord.head);
  const int row_first = m0 + consumer * kConsumerRows;
  const ScoreRules rules{mask, mods, kScoresInLog2 ? 1.f : mods.scale_l2, row_first,
                         imin(row_first + kConsumerRows, seq.seqlen_q) - 1};

  float o[kHeadDim / 2];
#pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) o[i] = 0.f;
  OnlineSoftmax<kAccumulatorMTiles> softmax;
  softmax.init();
  consume_tiles(smem, work, consumer, thread, rules, o, softmax);

  float sink_logit = 0.f;
#if HAS_SINK_LOGITS
  sink_logit = static_cast<const float*>(p.sink_logits)[coord.head];
#endif
  float out_scale[2], lse[2];
  softmax.finalize(rules.exp_scale, sink_logit, 1.f, out_scale, lse);
  store_output(p, smem, work, consumer, thread, row_first, seq.seqlen_q, o, out_scale);
  store_row_lse(p, work, WgmmaRowsC::at(thread, row_first, 0), thread, seq.seqlen_q, lse);
}
