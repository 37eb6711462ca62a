// Index math of the sm_90a forward kernel (kernels/sm90a/fwd.cu), host-compilable like layouts.cuh:
// where each tile sits in shared memory, which TMA box fills which bytes, where each wgmma's
// descriptor starts, where the output is staged for its TMA store, and which buffer and barrier
// phase each key tile of the ring uses.  tests/sm90a_host/dump_fwd.cpp prints these functions and
// tests/test_sm90a_forward.py checks them (against layouts.cuh's descriptor read-back and brute
// force); backends/nvrtc/sm90a/tiles.py restates the byte count (ATTN_EXPECTED_SMEM_BYTES).
//
// Every tile is the same shape: `rows` rows of the head dim cut into 64-column panels (128 bytes of
// 16-bit elements, one 128-byte swizzle span), panel after panel, each `rows` x 128 bytes and
// swizzled (layouts.cuh tile_offset).  It is what one TMA box of (64 columns, rows) writes per
// panel, and what k_major_tile_fields / mn_major_tile_fields describe to wgmma.
#pragma once

#include "sm90a/layouts.cuh"

namespace attn {
namespace sm90a {

constexpr int kPanelColumns = 64;           // 16-bit elements in one 128-byte swizzle span
constexpr unsigned kPanelRowBytes = 128;
constexpr Swizzle kTileSwizzle = Swizzle::k128B;
constexpr int kTileElemBytes = 2;           // f16 / bf16
constexpr unsigned kTileAlignment = 1024;   // one 128B swizzle atom (8 rows x 128 B): tiles start on it
constexpr int kConsumerRows = kWgmmaM;      // query rows of one consumer warpgroup (one m64 wgmma)
constexpr unsigned kBarrierBytes = 8;       // one mbarrier object

__host__ __device__ constexpr unsigned round_up_bytes(unsigned x, unsigned m) { return (x + m - 1) / m * m; }

// -- The K / V ring ---------------------------------------------------------------------------------
// Key tile k (the k-th the query tile visits) goes through buffer k % stages.  Each buffer has a
// "full" barrier (the producer's expect_tx, completed by the TMA bytes) and an "empty" one (every
// consumer thread arrives once it is done reading); both complete once per round, so round k / stages
// waits for the phase of parity (k / stages) & 1.  The producer's first round must not wait for an
// empty barrier that nobody has released yet: it waits for parity phase ^ 1, which for a fresh
// barrier names the phase before its first, counted as complete ("mbarrier.try_wait.parity": the
// parity of the current or the immediately preceding phase).
struct PipelineState {
  int stage;
  unsigned phase;
};

__host__ __device__ constexpr PipelineState pipeline_state(int iteration, int stages) {
  return PipelineState{iteration % stages, static_cast<unsigned>((iteration / stages) & 1)};
}

__host__ __device__ constexpr unsigned consumer_wait_parity(PipelineState s) { return s.phase; }
__host__ __device__ constexpr unsigned producer_wait_parity(PipelineState s) { return s.phase ^ 1u; }

// -- Shared memory: Q, then `Stages` K tiles, then `Stages` V tiles, then the barriers -------------
// Q is BlockM rows (all consumer warpgroups: warpgroup w reads rows 64w..64w+63, which are 64w * 128
// bytes into every panel); K and V are BlockN rows each.  After its last S = Q K^T, consumer w stages
// its output in its own rows of Q (no other warpgroup reads them), so the output needs no buffer of
// its own.  kBytes adds one atom of slack: the kernel aligns the dynamic shared memory's base up to
// 1024 bytes at run time (a swizzled tile must start on an atom for the descriptor's base offset 0).
// HeadDimV (the head dim of V and the output) may be below HeadDim (192 / 128): V tiles and the
// output's boxes have HeadDimV / 64 panels, Q and K HeadDim / 64; the output is staged in the first
// HeadDimV columns of the consumer's Q rows.
template <int BlockM, int BlockN, int HeadDim, int Stages, int HeadDimV = HeadDim>
struct FwdLayout {
  static constexpr int kPanels = HeadDim / kPanelColumns;    // of Q and K
  static constexpr int kVPanels = HeadDimV / kPanelColumns;  // of V and the output
  static constexpr int kConsumers = BlockM / kConsumerRows;
  static constexpr unsigned kQBytes = BlockM * HeadDim * kTileElemBytes;
  static constexpr unsigned kKTileBytes = BlockN * HeadDim * kTileElemBytes;
  static constexpr unsigned kVTileBytes = BlockN * HeadDimV * kTileElemBytes;
  static constexpr unsigned kQ = 0;
  static constexpr unsigned kK = kQ + kQBytes;
  static constexpr unsigned kV = kK + Stages * kKTileBytes;
  static constexpr unsigned kBarriers = kV + Stages * kVTileBytes;
  // q_full, then k_full[s], k_empty[s], v_full[s], v_empty[s], then q_empty (a persistent CTA's next
  // Q waits for Q's rows to be free: read by the last S = Q K^T, and the output staged there stored),
  // then v_landed (varlen and paged KV: a V tile whose rows run past the sequence lands there first, so
  // that the producer can zero those rows before it completes v_full; fwd_mainloop.cuh load_tiles).
  static constexpr int kNumBarriers = 3 + 4 * Stages;
  // After the barriers: the work slot, one int (a persistent CTA's next work index), padded to 8 bytes.
  static constexpr unsigned kWorkSlot = kBarriers + kNumBarriers * kBarrierBytes;
  static constexpr unsigned kBarrierRegionBytes = round_up_bytes(kNumBarriers * kBarrierBytes + 8, 128);
  static constexpr unsigned kBytes = kBarriers + kBarrierRegionBytes + kTileAlignment;

  static_assert(HeadDim % kPanelColumns == 0 && HeadDimV % kPanelColumns == 0 && HeadDimV <= HeadDim,
                "the head dims are whole 64-column panels, V's no wider than Q's (its staging rows)");
  static_assert(BlockM % kConsumerRows == 0 && BlockN % 16 == 0, "tiles are whole wgmma rows and k-steps");

  __host__ __device__ static constexpr unsigned k_tile(int stage) { return kK + stage * kKTileBytes; }
  __host__ __device__ static constexpr unsigned v_tile(int stage) { return kV + stage * kVTileBytes; }

  // Barrier indices into the barrier region.
  __host__ __device__ static constexpr int q_full() { return 0; }
  __host__ __device__ static constexpr int k_full(int stage) { return 1 + stage; }
  __host__ __device__ static constexpr int k_empty(int stage) { return 1 + Stages + stage; }
  __host__ __device__ static constexpr int v_full(int stage) { return 1 + 2 * Stages + stage; }
  __host__ __device__ static constexpr int v_empty(int stage) { return 1 + 3 * Stages + stage; }
  __host__ __device__ static constexpr int q_empty() { return 1 + 4 * Stages; }
  __host__ __device__ static constexpr int v_landed() { return 2 + 4 * Stages; }

  // The destination of TMA box `panel` (columns 64 panel ..) of a tile of `rows` rows, from the tile's start.
  __host__ __device__ static constexpr unsigned panel(int rows, int p) { return p * rows * kPanelRowBytes; }
  // Column coordinate of box `panel` (the map's innermost dimension).
  __host__ __device__ static constexpr int panel_column(int p) { return p * kPanelColumns; }

  // Consumer warpgroup w's 64 rows of Q, from each Q panel's start (a multiple of the atom).
  __host__ __device__ static constexpr unsigned q_rows_of(int consumer) {
    return consumer * kConsumerRows * kPanelRowBytes;
  }

  // Descriptor start offsets of k-step kk (16 columns of the head dim, or 16 keys for V):
  //   Q (A of S = Q K^T, K-major), consumer w: from Q's start; K (B, K-major) and V (B of O += P V,
  //   MN-major): from the tile's start.
  __host__ __device__ static constexpr unsigned q_k_step(int consumer, int kk) {
    return kQ + q_rows_of(consumer) + k_major_k_step_offset(kTileSwizzle, BlockM, kk);
  }
  __host__ __device__ static constexpr unsigned k_k_step(int kk) {
    return k_major_k_step_offset(kTileSwizzle, BlockN, kk);
  }
  __host__ __device__ static constexpr unsigned v_k_step(int kk) {
    return mn_major_k_step_offset(kTileSwizzle, kk, kTileElemBytes);
  }

  // Where consumer w stages output element (row, col) of its 64 rows (as 16-bit values), from the
  // layout's start: the bytes Q's element (64w + row, col) had, so a TMA store of box (64 columns, 64
  // rows) from store_source(w, panel) writes what the map's 128B swizzle expects there.
  __host__ __device__ static constexpr unsigned staging(int consumer, int row, int col) {
    return kQ + tile_offset(kTileSwizzle, BlockM, consumer * kConsumerRows + row, col, kTileElemBytes);
  }
  __host__ __device__ static constexpr unsigned store_source(int consumer, int p) {
    return kQ + panel(BlockM, p) + q_rows_of(consumer);
  }
};

}  // namespace sm90a
}  // namespace attn
