// Configuration of the sm_90a forward kernel (kernels/sm90a/fwd.cu), from the dispatch key's
// defines: tile shape, warp roles, register budgets and the shared-memory layout.
#pragma once

#include "common/types.cuh"
#include "common/features.cuh"
#include "sm90a/fwd_layout.cuh"

#ifndef KV_STAGES
#define KV_STAGES 2
#endif

// The rung (backends/nvrtc/sm90a/__init__.py RUNGS): RUNG_<NAME> defined to 1; "tma" when none is.
#ifndef RUNG_TMA
#define RUNG_TMA 0
#endif
#ifndef RUNG_OVERLAP
#define RUNG_OVERLAP 0
#endif
#ifndef RUNG_PINGPONG
#define RUNG_PINGPONG 0
#endif
#ifndef RUNG_PERSISTENT
#define RUNG_PERSISTENT 0
#endif
#ifndef RUNG_WGMMA
#define RUNG_WGMMA 0
#endif
#ifndef RUNG_PINGPONG_PERSISTENT
#define RUNG_PINGPONG_PERSISTENT 0
#endif
#if RUNG_WGMMA + RUNG_TMA + RUNG_OVERLAP + RUNG_PINGPONG + RUNG_PERSISTENT + RUNG_PINGPONG_PERSISTENT > 1
#error "one rung at a time: RUNG_WGMMA, RUNG_TMA, RUNG_OVERLAP, RUNG_PINGPONG, RUNG_PERSISTENT or RUNG_PINGPONG_PERSISTENT"
#endif

#if HAS_DROPOUT
#error "the sm90a forward has no dropout (backends/nvrtc/sm90a declines it)"
#endif

namespace attn {
namespace sm90a {

constexpr int kBlockM = BLOCK_M;
constexpr int kBlockN = BLOCK_N;
// The head dims in memory, and as the tiles hold them: whole 64-column panels, so a head dim of 96 is
// padded to 128 (TMA fills the columns past the tensor's head dim with zeros, rung wgmma copies
// zeros there); S = Q K^T runs over the real columns only, O += P V over the padded ones, and the
// output's columns past the real head dim are not stored.
constexpr int kHeadDimData = HEAD_DIM;     // of Q and K
constexpr int kHeadDimVData = HEAD_DIM_V;  // of V and the output
constexpr int kHeadDim = (HEAD_DIM + 63) / 64 * 64;
constexpr int kHeadDimV = (HEAD_DIM_V + 63) / 64 * 64;
constexpr int kStages = KV_STAGES;  // K and V buffers each: the ring's depth

// Warp roles: warpgroup 0 is the producer (one thread issues every TMA load; the rest idle), warpgroups
// 1 .. kConsumers each compute 64 query rows of the tile.  Rung "wgmma" has no producer: its
// warpgroups 0 .. kConsumers - 1 load their tiles themselves (cp.async) and compute.
constexpr int kConsumers = kBlockM / kConsumerRows;
constexpr bool kHasProducer = !RUNG_WGMMA;
constexpr int kWarpgroups = (kHasProducer ? 1 : 0) + kConsumers;
constexpr int kThreads = kWarpgroups * kWarpgroupThreads;
constexpr int kConsumerThreads = kConsumers * kWarpgroupThreads;

constexpr int kRegisterFile = 65536;

// The mainloop's schedule (fwd_mainloop.cuh consume_tiles):
//   kWgmma    the simplest correct wgmma kernel: every thread loads Q, K and V by cp.async into the
//             same swizzled tiles (no producer, no mbarriers, no setmaxnreg), a two-stage buffer
//             with the next key tile's loads in flight, each GEMM waited for (fwd_cp_async.cuh);
//   kTma      each GEMM waited for before the softmax (the producer, the ring and setmaxnreg only);
//   kOverlap  the softmax of key tile k overlaps S_k's successor GEMMs inside the warpgroup;
//   kPingPong   kOverlap, and the two consumers take turns issuing GEMMs (named barriers);
//   kPersistent kOverlap in a persistent grid: about one CTA per SM walks the work tiles
//               (tile_scheduler.cuh), so that one tile's epilogue overlaps the next one's loads;
//   kPingPongPersistent  kPingPong in the persistent grid (FlashAttention-3's causal schedule): the
//               turns are balanced within each work tile, so they carry over from tile to tile.
enum class Rung { kWgmma, kTma, kOverlap, kPingPong, kPersistent, kPingPongPersistent };
constexpr Rung kRung = RUNG_WGMMA ? Rung::kWgmma
                       : RUNG_PINGPONG_PERSISTENT ? Rung::kPingPongPersistent
                       : RUNG_PERSISTENT ? Rung::kPersistent
                       : RUNG_PINGPONG ? Rung::kPingPong
                       : RUNG_OVERLAP  ? Rung::kOverlap
                                       : Rung::kTma;
constexpr bool kPersistentGrid = kRung == Rung::kPersistent || kRung == Rung::kPingPongPersistent;
constexpr bool kTakesTurns = kRung == Rung::kPingPong || kRung == Rung::kPingPongPersistent;
// How the output leaves (fwd_epilogue.cuh): staged in the consumer's rows of Q and written by TMA
// stores, or stored straight from the accumulator registers.  Direct in the persistent grid, so that
// Q's buffer is free for the next work tile's Q as soon as the last S = Q K^T has read it (the load
// then runs under the last P V and the epilogue), and with varlen, where a partial tile's rows run
// on into the next sequence, which a TMA store of whole boxes would overwrite.
constexpr bool kDirectOutput = kPersistentGrid || IS_VARLEN;
// Varlen: TMA fills only past the tensor's end, so the rows of a key tile past its sequence's end hold
// the next sequence's keys; paged KV: the last page's unused rows (whatever the cache holds there), or
// nothing loaded at all (boxes past the sequence are not issued).  The mask hides them in S, but in
// O += P V a P of 0 times an Inf or NaN there would still be NaN: the producer zeroes those rows of V
// before the consumers read it (fwd_mainloop.cuh load_tiles), with its whole warp (kProducerLanes;
// one thread issues the loads).
constexpr bool kZeroVTail = IS_VARLEN || IS_PAGED;
constexpr int kProducerLanes = kZeroVTail ? 32 : 1;

// Register budgets after setmaxnreg (one CTA per SM): the producer keeps what a loop of TMA issues
// needs, the consumers take the rest (O is kHeadDim / 2 floats per thread, S kBlockN / 2, P
// kBlockN / 4).  setmaxnreg moves registers within what the CTA was launched with -- kThreads times
// the launch count (65536 / kThreads rounded down to 8) -- so a consumer's .inc waits forever unless
// the producers' .dec freed enough: producer * 128 + consumer * kConsumerThreads <= that pool.
//   two consumers (384 threads, 168 at launch: 64512): 24 + 240 (64512);
//   three (192 query rows; 512 threads, 128 at launch: 65536): 24 + 160 (64512);
//   the persistent grid's producer also draws work indices and keeps the queue: 40 + 232 (64512)
//   with two consumers, 32 + 160 (65536) with three.
constexpr int kLaunchRegisters = kRegisterFile / kThreads / 8 * 8;
constexpr int kProducerRegisters = kPersistentGrid ? (kConsumers == 2 ? 40 : 32) : 24;
constexpr int kConsumerRegisters = kConsumers == 2 ? (kPersistentGrid ? 232 : 240) : 160;
// A persistent wave's K and V stay within this much L2 (tile_scheduler.cuh l2_wave_pairs): half the
// H100 / H200's 50 MB, so that the wave's tiles and what other traffic there is fit together.
constexpr long long kWaveL2Bytes = 24LL << 20;

// Named barriers (0 is __syncthreads'): consumer w's staging barrier is 1 + w, its turn barrier
// (kPingPong) 1 + kConsumers + w, each completed by kTurnThreads: one consumer syncing, the other arriving.
constexpr unsigned kFirstConsumerBarrier = 1;
constexpr unsigned kFirstTurnBarrier = kFirstConsumerBarrier + kConsumers;
constexpr unsigned kTurnThreads = 2 * kWarpgroupThreads;
// Rung "wgmma": every consumer thread syncs here once its cp.async copies of a tile have landed (and
// once it is done reading a buffer the next copies overwrite).
constexpr unsigned kLoadBarrier = kFirstTurnBarrier + kConsumers;

static_assert(kHeadDimData == 64 || kHeadDimData == 96 || kHeadDimData == 128 || kHeadDimData == 192 ||
                  kHeadDimData == 256, "HEAD_DIM: 64, 96, 128, 192 or 256");
static_assert(kHeadDimVData == kHeadDimData || (kHeadDimData == 192 && kHeadDimVData == 128),
              "HEAD_DIM_V: HEAD_DIM, or 128 with HEAD_DIM 192");
static_assert(kBlockN % 16 == 0 && kBlockN >= 64 && kBlockN <= 256, "BLOCK_N: a multiple of 16 in 64..256");
static_assert(kBlockM % kConsumerRows == 0 && (kConsumers == 2 || kConsumers == 3),
              "BLOCK_M: two or three consumer warpgroups of 64 rows (the register budgets assume them)");
static_assert(!kTakesTurns || kConsumers == 2, "the ping-pong turns are between two consumers");
static_assert(NUM_WARPS * 32 == kThreads, "NUM_WARPS: the producer warpgroup (but in rung wgmma) and the consumers'");
static_assert(kRung != Rung::kWgmma || kStages == 2, "rung wgmma double-buffers K and V: KV_STAGES 2");
static_assert(kRung != Rung::kWgmma || !IS_PAGED, "rung wgmma copies K and V by cp.async without page tables");
static_assert(kStages >= 1 && kStages <= 4, "KV_STAGES: 1 to 4");
static_assert(!kHasProducer || kProducerRegisters * kWarpgroupThreads + kConsumerRegisters * kConsumerThreads <=
                                     kLaunchRegisters * kThreads,
              "the setmaxnreg budgets exceed the registers the CTA is launched with (the .inc would never return)");

using Layout = FwdLayout<kBlockM, kBlockN, kHeadDim, kStages, kHeadDimV>;
constexpr int kSmemBytes = static_cast<int>(Layout::kBytes);
// Cross-check of the Python formula (backends/nvrtc/sm90a/tiles.py: shared_memory_bytes), on every compile.
#ifndef ATTN_EXPECTED_SMEM_BYTES
#error "ATTN_EXPECTED_SMEM_BYTES: the launcher's shared-memory size must be passed (backends/nvrtc/generation.py)"
#endif
static_assert(kSmemBytes == ATTN_EXPECTED_SMEM_BYTES, "sm90a tiles.shared_memory_bytes disagrees with the kernel");

constexpr int kSTiles = kBlockN / 8;   // n8 column blocks of S (the [1][kSTiles][4] fragment)
constexpr int kOTiles = kHeadDimV / 8;  // of O
constexpr int kPSteps = kBlockN / kWgmmaK;     // k-steps of O += P V
constexpr int kQKSteps = kHeadDimData / kWgmmaK;   // k-steps of S = Q K^T: the real columns only

}  // namespace sm90a
}  // namespace attn
