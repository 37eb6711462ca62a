// FlashAttention forward kernel for sm_90a (Hopper): TMA loads, wgmma, warp specialization.
// The rungs of the sm90a generation (fwd_config.cuh Rung; backends/nvrtc/sm90a: verified.json says
// which rungs a GPU run has verified; the planner does not choose an unverified one).
//
// One CTA computes work tiles of BLOCK_M = 128 query rows of one (sequence, query head), 384 threads:
//   warpgroup 0, the producer: setmaxnreg.dec, then one thread issues the TMA loads -- Q once per work
//     tile (after the previous tile's output has left Q's rows: q_empty), then K and V of every key
//     tile the query tile visits (mask.cuh key_tile_range, diagonal first) through a ring of KV_STAGES
//     buffers each, full / empty mbarriers per buffer (fwd_layout.cuh);
//   warpgroups 1 and 2, the consumers: setmaxnreg.inc, 64 query rows each; per key tile: S = Q K^T (SS
//     wgmma), score modifiers and mask through the wgmma accumulator's fragment coordinates
//     (sm90a/fragment.cuh; common/problem.cuh, mask.cuh), the online softmax (softmax.cuh), P to A
//     fragments in registers, O += P V (RS wgmma, V MN-major), each buffer released once read.  Rung
//     "tma" waits for each GEMM; "overlap" issues S_k and the P V of tile k-1 together and runs
//     tile k's softmax while that P V runs (FlashAttention-3's intra-warpgroup overlap);
//     "pingpong" adds turns between the consumers; "persistent" is "overlap" in a persistent grid.
//     Then O scaled, staged in the consumer's own rows of the Q tile and written by TMA stores; the
//     LSE by plain stores.
//
// Parts: the layout and index math (sm90a/fwd_layout.cuh, host-compilable), configuration
// (sm90a/fwd_config.cuh), mainloop (sm90a/fwd_mainloop.cuh), epilogue (sm90a/fwd_epilogue.cuh), the
// work order (sm90a/tile_scheduler.cuh), the PTX wrappers (sm90a/ptx.cuh) and wgmma layouts
// (sm90a/layouts.cuh), and the headers every generation shares (mask.cuh, softmax.cuh, common/).
//
// Launch (backends/nvrtc/sm90a/runner.py): grid (ceil(seqlen_q / BLOCK_M), heads_q, batch), or for
// "persistent" (min(work tiles, SMs), 1, 1); 384 threads, kSmemBytes of dynamic shared memory.  The
// runtime prepends `struct FwdParams` (the standard fields plus four CUtensorMaps: q_map, k_map,
// v_map, o_map; backends/nvrtc/sm90a/__init__.py), passed as one __grid_constant__ parameter so that
// TMA can address the maps in it.

#include "common/scheduler.cuh"
#include "sm90a/fwd_config.cuh"
#include "sm90a/fwd_mainloop.cuh"
#include "sm90a/fwd_epilogue.cuh"
#include "sm90a/tile_scheduler.cuh"

namespace attn {
namespace sm90a {

// The CTA's work tiles: one (its grid coordinate, heaviest first) or, in a persistent grid, work
// indices blockIdx.x, blockIdx.x + gridDim.x, ... in tile_scheduler.cuh's order.
struct WorkSchedule {
  int index;
  int total;
  int num_m_blocks;
  int pairs_per_wave;

  __device__ __forceinline__ static WorkSchedule start(const FwdParams& p) {
    if constexpr (!kPersistentGrid) return WorkSchedule{0, 1, 0, 0};
    const int num_m = (static_cast<int>(p.seqlen_q) + kBlockM - 1) / kBlockM;
    const int group = static_cast<int>(p.heads_q / p.heads_kv);
    return WorkSchedule{static_cast<int>(blockIdx.x), num_work_tiles(num_m, p.heads_q, p.batch), num_m,
                        l2_wave_pairs(kWaveL2Bytes, p.seqlen_kv, kHeadDim, kTileElemBytes, group)};
  }
  __device__ __forceinline__ bool valid() const { return index < total; }
  __device__ __forceinline__ void next() { index += kPersistentGrid ? static_cast<int>(gridDim.x) : 1; }
  __device__ __forceinline__ TileCoord coord(const FwdParams& p) const {
    if constexpr (!kPersistentGrid) return heaviest_first_tile();
    const WorkTile t = work_tile(index, num_m_blocks, p.heads_q, p.batch, pairs_per_wave);
    return TileCoord{t.m_block, t.head, t.batch};
  }
};

// Work tile `coord` (false for a query tile past the sequence's end, which has no work).
__device__ __forceinline__ bool work_of(const FwdParams& p, TileCoord coord, int ring, int round, TileWork& w,
                                        Sequence& seq, MaskInfo& mask) {
  seq = sequence_of(p, coord.batch);
  const int m0 = coord.block * kBlockM;
  if (m0 >= seq.seqlen_q) return false;
  mask = mask_of(p, seq);
  const int row_last = imin(m0 + kBlockM, seq.seqlen_q) - 1;
  const int hkv = coord.head / static_cast<int>(p.heads_q / p.heads_kv);
  w = TileWork{m0, coord.head, hkv, coord.batch, key_tile_range(m0, row_last, kBlockN, mask), ring, round};
  return true;
}

// One consumer's work tile: the mainloop, the softmax's final factors, the output and the LSE.
__device__ __forceinline__ void consume_work(const FwdParams& p, const SharedTiles& smem, const TileWork& w,
                                             const Sequence& seq, const MaskInfo& mask, int consumer, int thread) {
  const ScoreMods mods = score_mods(p, w.b, w.h);
  const int row_first = w.m0 + consumer * kConsumerRows;
  const ScoreRules rules{mask, mods, kScoresInLog2 ? 1.f : mods.scale_l2, row_first,
                         imin(row_first + kConsumerRows, seq.seqlen_q) - 1};

  float o[kHeadDim / 2];
#pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) o[i] = 0.f;
  OnlineSoftmax<kAccumulatorMTiles> softmax;
  softmax.init();
  consume_tiles(smem, w, consumer, thread, rules, o, softmax);

  float sink_logit = 0.f;
#if HAS_SINK_LOGITS
  sink_logit = static_cast<const float*>(p.sink_logits)[w.h];
#endif
  float out_scale[2], lse[2];
  softmax.finalize(rules.exp_scale, sink_logit, 1.f, out_scale, lse);
  store_output(p, smem, w, consumer, thread, row_first, seq.seqlen_q, o, out_scale);
  store_row_lse(p, w, WgmmaRowsC::at(thread, row_first, 0), thread, seq.seqlen_q, lse);
}

}  // namespace sm90a
}  // namespace attn

extern "C" __global__ void __launch_bounds__(attn::sm90a::kThreads, 1)
    attn_fwd_kernel(const __grid_constant__ FwdParams p) {
  using namespace attn;
  using namespace attn::sm90a;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const SharedTiles smem = SharedTiles::at(smem_raw);
  if (threadIdx.x == 0) init_barriers(smem);
  __syncthreads();

  // The producer and the consumers walk the same work tiles and count ring iterations alike.
  const int warpgroup = static_cast<int>(threadIdx.x) / kWarpgroupThreads;
  int ring = 0, round = 0;
  TileWork w;
  Sequence seq;
  MaskInfo mask;
  if (warpgroup == 0) {
    setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x != 0) return;
    prefetch_tensor_maps(p);
    for (WorkSchedule s = WorkSchedule::start(p); s.valid(); s.next()) {
      if (!work_of(p, s.coord(p), ring, round, w, seq, mask)) continue;
      produce(p, smem, w);
      ring += w.tiles.count();
      ++round;
    }
    return;
  }
  setmaxnreg_inc<kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int thread = static_cast<int>(threadIdx.x) % kWarpgroupThreads;
  for (WorkSchedule s = WorkSchedule::start(p); s.valid(); s.next()) {
    if (!work_of(p, s.coord(p), ring, round, w, seq, mask)) continue;
    consume_work(p, smem, w, seq, mask, consumer, thread);
    ring += w.tiles.count();
    ++round;
  }
}
