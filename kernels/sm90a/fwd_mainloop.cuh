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
  // The work index the producer hands the consumers with each Q (persistent grid: fwd.cu TileQueue).
  __device__ __forceinline__ volatile int* work_slot() const {
    return reinterpret_cast<volatile int*>(base + Layout::kWorkSlot);
  }
};

// A tensor map of the parameter block (an Opaque field, backends/nvrtc/sm90a/runner.py).  The block
// is a __grid_constant__ kernel parameter, so the map's generic address is valid for TMA.
__device__ __forceinline__ const TmaDescriptor* tensor_map(const unsigned char (&bytes)[sizeof(TmaDescriptor)]) {
  return reinterpret_cast<const TmaDescriptor*>(bytes);
}

// One work tile: query rows m0 .. m0 + kBlockM - 1 of head h (kv head hkv) of sequence b, against the
// key tiles of `tiles`.  `ring` is the ring iteration of its first key tile and `round` the how-many-th
// work tile of the CTA it is (both 0 unless the CTA is persistent): the producer and the consumers
// count them alike, so every barrier phase follows from them.
struct TileWork {
  int m0;
  int h;
  int hkv;
  int b;
  KeyTileRange tiles;
  int ring;
  int round;
};

// Full barriers count the producer's one arrive (plus the TMA bytes); the ring's empty ones every
// consumer thread; q_empty every consumer thread too (thread 0 once its output store has read the staging rows).
__device__ __forceinline__ void init_barriers(const SharedTiles& smem) {
  mbarrier_init(smem.barrier(Layout::q_full()), 1);
  mbarrier_init(smem.barrier(Layout::q_empty()), kConsumerThreads);
#pragma unroll
  for (int s = 0; s < kStages; ++s) {
    mbarrier_init(smem.barrier(Layout::k_full(s)), 1);
    mbarrier_init(smem.barrier(Layout::k_empty(s)), kConsumerThreads);
    mbarrier_init(smem.barrier(Layout::v_full(s)), 1);
    mbarrier_init(smem.barrier(Layout::v_empty(s)), kConsumerThreads);
  }
  if constexpr (kZeroVTail) mbarrier_init(smem.barrier(Layout::v_landed()), 1);
  fence_barrier_init();
}

// -- The producer: one thread issues every load ---------------------------------------------------

// One tile of `rows` rows starting at row `row0` of (head, batch), every panel, completing on `full`.
template <int Rows, int Panels = Layout::kPanels>
__device__ __forceinline__ void load_tile(unsigned char* dst, const TmaDescriptor* map, unsigned long long* full,
                                          unsigned bytes, int row0, int head, int batch) {
  mbarrier_arrive_expect_tx(full, bytes);
#pragma unroll
  for (int panel = 0; panel < Panels; ++panel)
    tma_load_4d(dst + Layout::panel(Rows, panel), map, full, Layout::panel_column(panel), row0, head, batch);
}

__device__ __forceinline__ void prefetch_tensor_maps(const FwdParams& p) {
  prefetch_tensormap(tensor_map(p.q_map));
  prefetch_tensormap(tensor_map(p.k_map));
  prefetch_tensormap(tensor_map(p.v_map));
  prefetch_tensormap(tensor_map(p.o_map));
}

// Q's barriers complete once per work tile: round r waits for phase r & 1 (the ring's rule, one buffer).
__device__ __forceinline__ PipelineState q_state(int round) { return pipeline_state(round, 1); }
__device__ __forceinline__ PipelineState q_state(const TileWork& w) { return q_state(w.round); }

// Q's buffer (and the work slot) are free for the CTA's work tile `round`: the previous tile's output
// stores have read their staging rows.
__device__ __forceinline__ void wait_q_free(const SharedTiles& smem, int round) {
  mbarrier_wait_parity(smem.barrier(Layout::q_empty()), producer_wait_parity(q_state(round)));
}

#if IS_PAGED
// Paged KV: key tile key0's rows from sequence b's pages (`pages`: its block-table row), the map's
// coordinates (column, row in the page, kv head, page).  One box is min(page_size, kBlockN) rows --
// the tile lies within one page, or holds whole pages (backends/nvrtc/sm90a/tiles.py paged_block_n)
// -- and the page size a multiple of 8, so every box starts on a swizzle atom.  Boxes wholly past
// the sequence's `valid` rows are not issued (their pages need not exist); the transaction count is
// the issued boxes' bytes.
template <int Panels>
__device__ __forceinline__ void load_paged_tile(unsigned char* dst, const TmaDescriptor* map, unsigned long long* full,
                                                const int* pages, int page_size, int key0, int valid, int hkv) {
  const int box_rows = imin(page_size, kBlockN);
  const int boxes = (imin(valid, kBlockN) + box_rows - 1) / box_rows;
  mbarrier_arrive_expect_tx(full, static_cast<unsigned>(boxes * box_rows) * kPanelRowBytes * Panels);
#pragma unroll 1
  for (int j = 0; j < boxes; ++j) {  // not unrolled: the producer's registers are few
    const int key = key0 + j * box_rows;
    const int page = pages[key / page_size];
#pragma unroll
    for (int panel = 0; panel < Panels; ++panel)
      tma_load_4d(dst + Layout::panel(kBlockN, panel) + j * box_rows * kPanelRowBytes, map, full,
                  Layout::panel_column(panel), key % page_size, hkv, page);
  }
}
#endif

// Rows `valid` .. kBlockN - 1 of the V tile at `tile` set to zero by the producer warp's 32 lanes: whole
// 128-byte rows of every panel (the swizzle permutes chunks within a row only, so they are contiguous).
__device__ __forceinline__ void zero_tile_rows(unsigned char* tile, int valid, int lane) {
#pragma unroll 1
  for (int panel = 0; panel < Layout::kVPanels; ++panel) {
    uint4* rows = reinterpret_cast<uint4*>(tile + Layout::panel(kBlockN, panel));
    for (int i = valid * (kPanelRowBytes / 16) + lane; i < kBlockN * static_cast<int>(kPanelRowBytes / 16); i += 32)
      rows[i] = make_uint4(0u, 0u, 0u, 0u);
  }
}

template <int N>
struct IntConstant {
  static constexpr int value = N;
};

// The producer's state across the CTA's work tiles: `lane` of the producer warp (kProducerLanes of it
// run the producer; lane 0 issues every load and arrive) and how many V tiles have gone through
// v_landed (its phase parity).
struct Producer {
  int lane;
  int landed;

  __device__ __forceinline__ bool leader() const { return kProducerLanes == 1 || lane == 0; }
};

// Q of work tile `w` (of sequence `seq`), then K and V of every key tile it visits through the ring;
// Q's buffer must be free.  Coordinates (column, row, head, batch): varlen maps have one "batch" of
// every sequence's rows, each sequence from its first row.
__device__ __forceinline__ void load_tiles(const FwdParams& p, const SharedTiles& smem, const TileWork& w,
                                           const Sequence& seq, Producer& producer) {
  const TmaDescriptor* q_map = tensor_map(p.q_map);
  const TmaDescriptor* k_map = tensor_map(p.k_map);
  const TmaDescriptor* v_map = tensor_map(p.v_map);
  const int batch = IS_VARLEN ? 0 : w.b;
  if (producer.leader())
    load_tile<kBlockM>(smem.bytes(Layout::kQ), q_map, smem.barrier(Layout::q_full()), Layout::kQBytes,
                       seq.q_start + w.m0, w.h, batch);
#if IS_PAGED
  const int* pages = static_cast<const int*>(p.block_table) + w.b * p.block_table_batch_stride;
  const int page_size = static_cast<int>(p.page_size);
  // K or V of key tile key0 (valid rows: the rest of the sequence) onto `full`
  const auto load_kv = [&](auto panels, unsigned char* dst, const TmaDescriptor* map, unsigned long long* full,
                           unsigned, int key0, int valid, int) {
    load_paged_tile<decltype(panels)::value>(dst, map, full, pages, page_size, key0, valid, w.hkv);
  };
#else
  const auto load_kv = [&](auto panels, unsigned char* dst, const TmaDescriptor* map, unsigned long long* full,
                           unsigned bytes, int, int, int row0) {
    load_tile<kBlockN, decltype(panels)::value>(dst, map, full, bytes, row0, w.hkv, batch);
  };
#endif
  using KPanels = IntConstant<Layout::kPanels>;
  using VPanels = IntConstant<Layout::kVPanels>;
  const int num_tiles = w.tiles.count();
  for (int k = 0; k < num_tiles; ++k) {
    const PipelineState st = pipeline_state(w.ring + k, kStages);
    const int key0 = w.tiles.tile(k) * kBlockN;
    const int row0 = seq.kv_start + key0;
    const int valid = seq.seqlen_kv - key0;
    mbarrier_wait_parity(smem.barrier(Layout::k_empty(st.stage)), producer_wait_parity(st));
    if (producer.leader())
      load_kv(KPanels{}, smem.bytes(Layout::k_tile(st.stage)), k_map, smem.barrier(Layout::k_full(st.stage)),
              Layout::kKTileBytes, key0, valid, row0);
    mbarrier_wait_parity(smem.barrier(Layout::v_empty(st.stage)), producer_wait_parity(st));
    unsigned char* v_tile = smem.bytes(Layout::v_tile(st.stage));
    if (kZeroVTail && valid < kBlockN) {
      // The tile lands on v_landed; its rows past the sequence are zeroed (and the zeros made visible to
      // wgmma, the async proxy) before v_full completes with the leader's plain arrive.
      unsigned long long* landed = smem.barrier(Layout::v_landed());
      if (producer.leader()) load_kv(VPanels{}, v_tile, v_map, landed, Layout::kVTileBytes, key0, valid, row0);
      mbarrier_wait_parity(landed, static_cast<unsigned>(producer.landed & 1));
      ++producer.landed;
      zero_tile_rows(v_tile, valid, producer.lane);
      fence_proxy_async_shared_cta();
      __syncwarp();
      if (producer.leader()) mbarrier_arrive(smem.barrier(Layout::v_full(st.stage)));
    } else if (producer.leader()) {
      load_kv(VPanels{}, v_tile, v_map, smem.barrier(Layout::v_full(st.stage)), Layout::kVTileBytes, key0, valid, row0);
    }
  }
}

// -- The consumer's GEMMs (one warpgroup, 64 query rows) -------------------------------------------

// S = Q K^T: Q (this consumer's rows) and K both K-major in shared memory, one m64n<kBlockN>k16 per
// 16 columns of the head dim, issued (not committed: the caller commits, so it may group or wait).
__device__ __forceinline__ void issue_qk(float (&s)[kBlockN / 2], unsigned long long q_desc, int consumer,
                                         unsigned long long k_desc) {
#pragma unroll
  for (int kk = 0; kk < kQKSteps; ++kk)
    wgmma_ss<kBlockN, in_t>(s, descriptor_advance(q_desc, Layout::q_k_step(consumer, kk)),
                            descriptor_advance(k_desc, Layout::k_k_step(kk)), kk > 0);
}

// O += P V: P from registers (A fragments), V MN-major (head dim contiguous: TransB = 1); issued.
__device__ __forceinline__ void issue_pv(float (&o)[kHeadDimV / 2], const unsigned (&pf)[kPSteps][4],
                                         unsigned long long v_desc) {
#pragma unroll
  for (int kk = 0; kk < kPSteps; ++kk)
    wgmma_rs<kHeadDimV, in_t, 1>(o, pf[kk], descriptor_advance(v_desc, Layout::v_k_step(kk)), 1);
}

// One GEMM as its own group, waited for: returns once the accumulators are final.
__device__ __forceinline__ void qk_gemm(float (&s)[kBlockN / 2], unsigned long long q_desc, int consumer,
                                        unsigned long long k_desc) {
  wgmma_fence();
  issue_qk(s, q_desc, consumer, k_desc);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  fence_accumulator(s);
}

__device__ __forceinline__ void pv_gemm(float (&o)[kHeadDimV / 2], const unsigned (&pf)[kPSteps][4],
                                        unsigned long long v_desc) {
  wgmma_fence();
  issue_pv(o, pf, v_desc);
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

// The descriptors of stage `stage`'s K tile (K-major, B of S = Q K^T) and V tile (MN-major, B of O += P V).
__device__ __forceinline__ unsigned long long k_descriptor(const SharedTiles& smem, int stage) {
  return encode_descriptor(k_major_tile_fields(kTileSwizzle, smem.address(Layout::k_tile(stage)), kBlockN));
}
__device__ __forceinline__ unsigned long long v_descriptor(const SharedTiles& smem, int stage) {
  return encode_descriptor(mn_major_tile_fields(kTileSwizzle, smem.address(Layout::v_tile(stage)), kBlockN));
}

// Key tile `tile`'s scores, in place: the score modifiers, then the mask where the tile needs one.
__device__ __forceinline__ void score_tile(float (&s)[kBlockN / 2], int tile, int thread, const ScoreRules& rules) {
  auto& scores = as_fragment(s);
  const WgmmaRowsC at = WgmmaRowsC::at(thread, rules.row_first, tile * kBlockN);
  if constexpr (kScoresInLog2) apply_score_mods(scores, at, rules.mods, rules.mask.off);
  if (tile_needs_mask(tile, kBlockN, rules.row_first, rules.row_last, rules.mask)) apply_mask(scores, at, rules.mask);
}

// Q's buffer is free once this consumer's last S = Q K^T has completed (every consumer thread
// arrives): with the output stored from registers (kDirectOutput) a persistent CTA's next Q may then
// land under the last P V and the epilogue.  Staged outputs release it in the epilogue instead.
__device__ __forceinline__ void release_q_after_last_qk(const SharedTiles& smem, bool last) {
  if constexpr (kDirectOutput && kHasProducer)
    if (last) mbarrier_arrive(smem.barrier(Layout::q_empty()));
}

// Rung "tma": every key tile of `w` for consumer `consumer` (thread `thread` of its warpgroup), each
// GEMM waited for before the next step: wait K, S = Q K^T, release K, modifiers and mask, the online
// softmax (O rescaled), P, wait V, O += P V, release V.
__device__ __forceinline__ void consume_tiles_serial(const SharedTiles& smem, const TileWork& w, int consumer,
                                                     int thread, const ScoreRules& rules, float (&o)[kHeadDimV / 2],
                                                     OnlineSoftmax<kAccumulatorMTiles>& softmax) {
  const unsigned long long q_desc = encode_descriptor(k_major_tile_fields(kTileSwizzle, smem.address(0), kBlockM));
  mbarrier_wait_parity(smem.barrier(Layout::q_full()), consumer_wait_parity(q_state(w)));
  const int num_tiles = w.tiles.count();
  for (int k = 0; k < num_tiles; ++k) {
    const PipelineState st = pipeline_state(w.ring + k, kStages);
    const int tile = w.tiles.tile(k);

    float s[kBlockN / 2];
    mbarrier_wait_parity(smem.barrier(Layout::k_full(st.stage)), consumer_wait_parity(st));
    qk_gemm(s, q_desc, consumer, k_descriptor(smem, st.stage));
    mbarrier_arrive(smem.barrier(Layout::k_empty(st.stage)));
    release_q_after_last_qk(smem, k == num_tiles - 1);

    score_tile(s, tile, thread, rules);
    softmax.update(as_fragment(s), as_fragment(o), rules.exp_scale);
    unsigned pf[kPSteps][4];
    pack_p(s, pf);

    mbarrier_wait_parity(smem.barrier(Layout::v_full(st.stage)), consumer_wait_parity(st));
    pv_gemm(o, pf, v_descriptor(smem, st.stage));
    mbarrier_arrive(smem.barrier(Layout::v_empty(st.stage)));
  }
  release_q_after_last_qk(smem, num_tiles == 0);
}

// The ping-pong schedule of the two consumer warpgroups (rung "pingpong"): a consumer issues its GEMMs
// only in its turn, and hands the turn over once they are issued, so that the tensor cores run one
// warpgroup's GEMMs while the other computes its softmax.  Turn barrier of consumer c: named barrier
// kFirstTurnBarrier + c, completed by c's 128 threads syncing and the other consumer's 128 arriving.
// Consumer 1 hands consumer 0 the first turn; every consumer takes the same number of turns (one per
// key tile plus the last P V), and consumer 1 does not hand over after its last turn, so that every
// arrival is matched by a sync and no barrier is left part-way when the CTA exits.  With kEnabled
// false (bisecting) every call is a no-op.
template <bool kEnabled>
struct ConsumerTurns {
  int consumer;

  __device__ __forceinline__ void begin() const {
    if (kEnabled && consumer == 1) hand_over();
  }
  __device__ __forceinline__ void wait_turn() const {
    if (kEnabled) named_barrier_sync(kFirstTurnBarrier + consumer, kTurnThreads);
  }
  __device__ __forceinline__ void end_turn(bool last) const {
    if (kEnabled && !(last && consumer == 1)) hand_over();
  }

 private:
  __device__ __forceinline__ void hand_over() const {
    named_barrier_arrive(kFirstTurnBarrier + (1 - consumer), kTurnThreads);
  }
};

// Rung "pingpong": the same tiles as consume_tiles_serial, with the softmax of key tile k overlapping
// GEMMs (FlashAttention-3's intra-warpgroup overlap) and the turns of ConsumerTurns.  Per key tile
// k >= 1, in the consumer's turn: issue S_k = Q K_k^T, then O += P_{k-1} V_{k-1} (two wgmma groups),
// hand the turn over; wait for S_k only (wait_group 1), release K_k, modifiers, mask, the softmax's
// maxima and exponentials; then wait for P V, release V_{k-1}, rescale O by the new maxima's
// correction and pack P_k.  Tile 0 has only its S; the last P V follows the loop.  The ring is the
// same: K_k and V_{k-1} are in different buffers whenever kStages >= 2.
template <bool kPingPong>
__device__ __forceinline__ void consume_tiles_overlapped(const SharedTiles& smem, const TileWork& w, int consumer,
                                                         int thread, const ScoreRules& rules,
                                                         float (&o)[kHeadDimV / 2],
                                                         OnlineSoftmax<kAccumulatorMTiles>& softmax) {
  static_assert(kStages >= 2, "the overlapped mainloop holds K_k and V_(k-1) at once: two buffers at least");
  // Q must have landed even when no key tile is visible: the epilogue stages the output in its rows.
  mbarrier_wait_parity(smem.barrier(Layout::q_full()), consumer_wait_parity(q_state(w)));
  const int num_tiles = w.tiles.count();
  if (num_tiles == 0) {  // the same for both consumers: no turn is taken
    release_q_after_last_qk(smem, true);
    return;
  }
  const unsigned long long q_desc = encode_descriptor(k_major_tile_fields(kTileSwizzle, smem.address(0), kBlockM));
  const ConsumerTurns<kPingPong> turns{consumer};
  constexpr int kRows = OnlineSoftmax<kAccumulatorMTiles>::kRows;
  float max_scaled[kRows], correction[kRows];
  unsigned pf[kPSteps][4];
  turns.begin();
  {
    const PipelineState st = pipeline_state(w.ring, kStages);
    float s[kBlockN / 2];
    mbarrier_wait_parity(smem.barrier(Layout::k_full(st.stage)), consumer_wait_parity(st));
    turns.wait_turn();
    wgmma_fence();
    issue_qk(s, q_desc, consumer, k_descriptor(smem, st.stage));
    wgmma_commit_group();
    turns.end_turn(false);
    wgmma_wait_group<0>();
    fence_accumulator(s);
    mbarrier_arrive(smem.barrier(Layout::k_empty(st.stage)));
    release_q_after_last_qk(smem, num_tiles == 1);
    score_tile(s, w.tiles.tile(0), thread, rules);
    softmax.max_step(as_fragment(s), rules.exp_scale, max_scaled, correction);  // O is 0: no rescale
    softmax.exp_step(as_fragment(s), rules.exp_scale, max_scaled, correction);
    pack_p(s, pf);
  }
  for (int k = 1; k < num_tiles; ++k) {
    const PipelineState st = pipeline_state(w.ring + k, kStages);
    const PipelineState prev = pipeline_state(w.ring + k - 1, kStages);
    float s[kBlockN / 2];
    mbarrier_wait_parity(smem.barrier(Layout::k_full(st.stage)), consumer_wait_parity(st));
    mbarrier_wait_parity(smem.barrier(Layout::v_full(prev.stage)), consumer_wait_parity(prev));
    turns.wait_turn();
    wgmma_fence();
    issue_qk(s, q_desc, consumer, k_descriptor(smem, st.stage));
    wgmma_commit_group();
    issue_pv(o, pf, v_descriptor(smem, prev.stage));
    wgmma_commit_group();
    turns.end_turn(false);
    wgmma_wait_group<1>();
    fence_accumulator(s);
    mbarrier_arrive(smem.barrier(Layout::k_empty(st.stage)));
    release_q_after_last_qk(smem, k == num_tiles - 1);
    score_tile(s, w.tiles.tile(k), thread, rules);
    softmax.max_step(as_fragment(s), rules.exp_scale, max_scaled, correction);
    softmax.exp_step(as_fragment(s), rules.exp_scale, max_scaled, correction);
    wgmma_wait_group<0>();
    fence_accumulator(o);
    mbarrier_arrive(smem.barrier(Layout::v_empty(prev.stage)));
    softmax.rescale(as_fragment(o), correction);
    pack_p(s, pf);
  }
  const PipelineState last = pipeline_state(w.ring + num_tiles - 1, kStages);
  mbarrier_wait_parity(smem.barrier(Layout::v_full(last.stage)), consumer_wait_parity(last));
  turns.wait_turn();
  wgmma_fence();
  issue_pv(o, pf, v_descriptor(smem, last.stage));
  wgmma_commit_group();
  turns.end_turn(true);
  wgmma_wait_group<0>();
  fence_accumulator(o);
  mbarrier_arrive(smem.barrier(Layout::v_empty(last.stage)));
}

// The rung's mainloop (fwd_config.cuh kRung).
__device__ __forceinline__ void consume_tiles(const SharedTiles& smem, const TileWork& w, int consumer, int thread,
                                              const ScoreRules& rules, float (&o)[kHeadDimV / 2],
                                              OnlineSoftmax<kAccumulatorMTiles>& softmax) {
  if constexpr (kTakesTurns)
    consume_tiles_overlapped<true>(smem, w, consumer, thread, rules, o, softmax);
  else if constexpr (kRung == Rung::kOverlap || kRung == Rung::kPersistent)
    consume_tiles_overlapped<false>(smem, w, consumer, thread, rules, o, softmax);
  else
    consume_tiles_serial(smem, w, consumer, thread, rules, o, softmax);
}

}  // namespace sm90a
}  // namespace attn
