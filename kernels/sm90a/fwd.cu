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
// Launch (backends/nvrtc/sm90a/runner.py): grid (pairs per wave, ceil(seqlen_q / BLOCK_M), waves), or for
// "persistent" (min(work tiles, SMs), 1, 1); 384 threads, kSmemBytes of dynamic shared memory.  The
// runtime prepends `struct FwdParams` (the standard fields plus four CUtensorMaps: q_map, k_map,
// v_map, o_map; backends/nvrtc/sm90a/__init__.py), passed as one __grid_constant__ parameter so that
// TMA can address the maps in it.

#include "common/scheduler.cuh"
#include "sm90a/fwd_config.cuh"
#include "sm90a/fwd_mainloop.cuh"
#include "sm90a/fwd_epilogue.cuh"
#include "sm90a/fwd_cp_async.cuh"
#include "sm90a/tile_scheduler.cuh"

namespace attn {
namespace sm90a {

// The CTA's work tiles.  Without a persistent grid: one, its grid coordinate (launch_order_tile).  In a
// persistent grid (rungs "persistent", "pingpong_persistent"): work indices in tile_scheduler.cuh's order, handed out
// dynamically -- the CTA's first is blockIdx.x, each next one gridDim.x + atomicAdd(p.tile_counter, 1)
// (the runner zeroes the counter before each launch), so that a CTA that finishes early takes the
// next tile: Graham's list schedule over the longest-first order.  The producer thread draws the
// indices and hands each to the consumers in the work slot with that tile's Q: it writes the slot
// once Q's buffer is free (q_empty: both consumers are done with the previous tile, and so with the
// slot), then arrives on q_full, whose completion the consumers wait for before reading it.  An index
// past the last tile ends the CTA: the producer hands it over without a load.
struct WorkQueue {
  int total;
  int num_m_blocks;
  int heads;
  int batch;
  int pairs_per_wave;

  __device__ __forceinline__ static WorkQueue of(const FwdParams& p) {
    const int num_m = (static_cast<int>(p.seqlen_q) + kBlockM - 1) / kBlockM;
    const int heads = static_cast<int>(p.heads_q), batch = static_cast<int>(p.batch);
    const int group = static_cast<int>(p.heads_q / p.heads_kv);
    return WorkQueue{num_work_tiles(num_m, heads, batch), num_m, heads, batch,
                     l2_wave_pairs(kWaveL2Bytes, p.seqlen_kv, kHeadDim, kTileElemBytes, group)};
  }
  __device__ __forceinline__ TileCoord coord(int index) const {
    const WorkTile t = work_tile(index, num_m_blocks, heads, batch, pairs_per_wave);
    return TileCoord{t.m_block, t.head, t.batch};
  }
};

// A grid of one CTA per work tile (every rung but the persistent ones) is (pairs per wave, query tiles,
// waves) over (head, sequence) pairs p = blockIdx.z * gridDim.x + blockIdx.x (backends/nvrtc/sm90a/
// tiles.py grid).  The hardware hands CTAs to free SMs in launch order, blockIdx.x fastest, so all
// pairs of a wave start query tile m before any starts m - 1, longest first: with causal masking the
// host makes waves of as many pairs as fit in L2 (tiles.py wave_pairs), and the last query tiles,
// which see the most keys, start first across the wave, not only within each pair; without it one
// pair per wave gives the classic (query tile, head, batch) order.  The order costs the CTA one
// division (by the head count), where the persistent queue's index math costs several.
__device__ __forceinline__ TileCoord launch_order_tile(const FwdParams& p) {
  const int pair = static_cast<int>(blockIdx.z * gridDim.x + blockIdx.x);
  const int heads = static_cast<int>(p.heads_q);
  return TileCoord{static_cast<int>(gridDim.y - 1 - blockIdx.y), pair % heads, pair / heads};
}

__device__ __forceinline__ int next_work_index(const FwdParams& p) {
  return static_cast<int>(gridDim.x) + atomicAdd(static_cast<int*>(p.tile_counter), 1);
}

// The producer warp's next work index: drawn by its leader, the same for every lane.
__device__ __forceinline__ int draw_work_index(const FwdParams& p, const Producer& producer) {
  if constexpr (kProducerLanes == 1) {
    return next_work_index(p);
  } else {
    const int next = producer.leader() ? next_work_index(p) : 0;
    return __shfl_sync(0xffffffffu, next, 0);
  }
}

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

  float o[kHeadDimV / 2];
#pragma unroll
  for (int i = 0; i < kHeadDimV / 2; ++i) o[i] = 0.f;
  OnlineSoftmax<kAccumulatorMTiles> softmax;
  softmax.init();
  if constexpr (kRung == Rung::kWgmma)
    consume_tiles_cp_async(p, smem, w, seq, consumer, thread, rules, o, softmax);
  else
    consume_tiles(smem, w, consumer, thread, rules, o, softmax);

  float sink_logit = 0.f;
#if HAS_SINK_LOGITS
  sink_logit = static_cast<const float*>(p.sink_logits)[w.h];
#endif
  float out_scale[2], lse[2];
  softmax.finalize(rules.exp_scale, sink_logit, 1.f, out_scale, lse);
  store_output(p, smem, w, seq, consumer, thread, row_first, o, out_scale);
  store_row_lse(p, w, WgmmaRowsC::at(thread, row_first, 0), thread, seq, lse);
}

}  // namespace sm90a
}  // namespace attn

extern "C" __global__ void __launch_bounds__(attn::sm90a::kThreads, 1)
    attn_fwd_kernel(const __grid_constant__ FwdParams p) {
  using namespace attn;
  using namespace attn::sm90a;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const SharedTiles smem = SharedTiles::at(smem_raw);
  if constexpr (!kHasProducer) {  // rung "wgmma": every warpgroup a consumer, loading its own tiles
    TileWork w;
    Sequence seq;
    MaskInfo mask;
    if (work_of(p, launch_order_tile(p), 0, 0, w, seq, mask))
      consume_work(p, smem, w, seq, mask, static_cast<int>(threadIdx.x) / kWarpgroupThreads,
                   static_cast<int>(threadIdx.x) % kWarpgroupThreads);
    return;
  }
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
    if constexpr (kProducerLanes == 1) {
      if (threadIdx.x != 0) return;
    } else {
      if (threadIdx.x >= kProducerLanes) return;
    }
    Producer producer{static_cast<int>(threadIdx.x), 0};
    if (producer.leader()) prefetch_tensor_maps(p);
    if constexpr (!kPersistentGrid) {
      if (!work_of(p, launch_order_tile(p), 0, 0, w, seq, mask)) return;
      load_tiles(p, smem, w, seq, producer);
      return;
    }
    const WorkQueue queue = WorkQueue::of(p);
    for (int index = static_cast<int>(blockIdx.x);;) {
      const bool valid = index < queue.total;
      const bool has_work = valid && work_of(p, queue.coord(index), ring, round, w, seq, mask);
      const int next = has_work ? draw_work_index(p, producer) : 0;  // drawn early: its latency hides under the loads
      wait_q_free(smem, round);
      if (producer.leader()) *smem.work_slot() = index;
      if (!has_work) {
        if (producer.leader()) mbarrier_arrive(smem.barrier(Layout::q_full()));  // the index alone: no tile, or the end
        if (!valid) return;
        ++round;
        index = draw_work_index(p, producer);
        continue;
      }
      load_tiles(p, smem, w, seq, producer);  // Q's arrive.expect_tx releases the slot's write with it
      ring += w.tiles.count();
      ++round;
      index = next;
    }
  }
  setmaxnreg_inc<kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int thread = static_cast<int>(threadIdx.x) % kWarpgroupThreads;
  if constexpr (!kPersistentGrid) {
    if (work_of(p, launch_order_tile(p), 0, 0, w, seq, mask)) consume_work(p, smem, w, seq, mask, consumer, thread);
    return;
  }
  const WorkQueue queue = WorkQueue::of(p);
  for (;;) {
    mbarrier_wait_parity(smem.barrier(Layout::q_full()), consumer_wait_parity(q_state(round)));
    const int index = *smem.work_slot();
    if (index >= queue.total) return;
    if (!work_of(p, queue.coord(index), ring, round, w, seq, mask)) {
      mbarrier_arrive(smem.barrier(Layout::q_empty()));  // done with the slot
      ++round;
      continue;
    }
    consume_work(p, smem, w, seq, mask, consumer, thread);
    ring += w.tiles.count();
    ++round;
  }
}
