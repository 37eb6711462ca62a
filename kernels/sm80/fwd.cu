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
// backends/nvrtc/sm80_tiles.py; the semantics in docs/semantics.md.
//
// Parts, each in its own header or section: element types and PTX wrappers (common/), shared-memory
// tiles, loaders and warp GEMMs (sm80/smem.cuh), sequence coordinates, mask setup, score
// modifiers and dropout keep bits (common/problem.cuh, shared with the backward), the visibility
// rule and key-tile range (mask.cuh), the online softmax (softmax.cuh); below: shared-memory
// layout, K/V tile loads (paged too), the epilogue, and the kernel that strings them together.
//
// The runtime prepends `struct FwdParams` (backends/nvrtc/params.py) to this file.

#include "common/types.cuh"
#include "sm80/mma.cuh"
#include "sm80/smem.cuh"
#include "common/problem.cuh"
#include "softmax.cuh"

#include "common/features.cuh"
#ifndef KV_STAGES
#define KV_STAGES 1
#endif

namespace attn {
namespace sm80 {

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------
constexpr int kBlockM = BLOCK_M;
constexpr int kBlockN = BLOCK_N;
constexpr int kNumWarps = NUM_WARPS;
constexpr int kThreads = kNumWarps * 32;
constexpr int kHeadDim = HEAD_DIM;
constexpr int kHeadDimV = HEAD_DIM_V;
constexpr int kDimQK = round_up(kHeadDim, 16);  // mma k-steps are 16 wide; padding columns hold zeros
constexpr int kDimV = round_up(kHeadDimV, 16);  // one ldmatrix.x4.trans covers 16 output columns
constexpr int kWarpRows = kBlockM / kNumWarps;
constexpr int kMTiles = kWarpRows / 16;          // m16 tiles per warp
constexpr int kNTiles = kBlockN / 8;             // n8 score tiles per key tile
constexpr int kKSteps = kBlockN / 16;            // k16 steps of P V
constexpr int kOTiles = kDimV / 8;               // n8 output tiles

static_assert(kHeadDim % 8 == 0 && kHeadDim >= 8 && kHeadDim <= 256, "HEAD_DIM: multiple of 8, <= 256");
static_assert(kHeadDimV % 8 == 0 && kHeadDimV >= 8 && kHeadDimV <= 256, "HEAD_DIM_V: multiple of 8, <= 256");
static_assert(kBlockM % kNumWarps == 0 && kWarpRows % 16 == 0, "each warp owns whole m16 tiles");
static_assert(kBlockN % 16 == 0, "BLOCK_N: multiple of 16");

// ---------------------------------------------------------------------------------------------
// Shared-memory layout and tile loads: sm80/smem.cuh (shared with the backward kernels).
// ---------------------------------------------------------------------------------------------
using LayoutQK = RowLayout<kDimQK>;
using LayoutV = RowLayout<kDimV>;  // also the output staging tile

// Region 0 holds Q during the main loop and the output tile in the epilogue.
constexpr int kSmemRegion0 = kBlockM * (LayoutQK::kStride > LayoutV::kStride ? LayoutQK::kStride : LayoutV::kStride);
constexpr int kSmemK = kBlockN * LayoutQK::kStride;
constexpr int kSmemV = kBlockN * LayoutV::kStride;
constexpr int kKStages = KV_STAGES;  // K tile buffers (2: the next K loads during this tile's whole iteration)
static_assert(kKStages == 1 || kKStages == 2, "KV_STAGES: 1 or 2");
constexpr int kSmemBytes = (kSmemRegion0 + kKStages * kSmemK + kSmemV) * kElemBytes;
#ifdef ATTN_EXPECTED_SMEM_BYTES  // cross-check of backends/nvrtc/sm80_tiles.py:shared_memory_bytes
static_assert(kSmemBytes == ATTN_EXPECTED_SMEM_BYTES, "sm80_tiles.shared_memory_bytes disagrees with the kernel");
#endif

// ---------------------------------------------------------------------------------------------
// Global -> shared tile loads (cp.async, 16 bytes per thread and step).  Rows >= valid_rows and the
// padding chunks beyond the real head dim are zero-filled, so out-of-range keys can never inject
// NaN/Inf into P V and padded head-dim columns add nothing to Q K^T.
//
// Each thread keeps one chunk column and walks down the rows kRowsPerStep at a time, advancing its
// source pointer by a constant: only a pointer and a stride stay live across the main loop (a
// per-step table of 64-bit addresses would be hoisted out of it and cost registers).
// ---------------------------------------------------------------------------------------------
template <int ROWS, int REAL_COLS, class Layout>
using TileLoader = RowLoader<kThreads, ROWS, REAL_COLS, Layout>;

// Where key row j (within the sequence) of k or v lives.
struct KvAddressing {
  const elem_t* base;  // head hkv of this sequence (dense/varlen: at key 0; paged: at page 0, row 0)
  long long row_stride;
#if IS_PAGED
  long long page_stride;
  const int* block_table;  // this sequence's row of the block table
  int page_size;
#endif
};

__device__ __forceinline__ KvAddressing kv_addressing(const FwdParams& p, const void* tensor, long long batch_stride,
                                                      long long row_stride, long long head_stride, int b, int hkv,
                                                      const Sequence& seq) {
  KvAddressing a;
  a.row_stride = row_stride;
  const elem_t* t = static_cast<const elem_t*>(tensor) + hkv * head_stride;
#if IS_PAGED
  a.base = t;
  a.page_stride = batch_stride;  // the k/v batch stride is the page stride
  a.block_table = static_cast<const int*>(p.block_table) + b * p.block_table_batch_stride;
  a.page_size = static_cast<int>(p.page_size);
#elif IS_VARLEN
  a.base = t + static_cast<long long>(seq.kv_start) * row_stride;
#else
  a.base = t + b * batch_stride;
#endif
  (void)p; (void)seq; (void)b; (void)batch_stride;
  return a;
}

template <int REAL_COLS, class Layout>
__device__ __forceinline__ void load_kv_tile(elem_t* smem, const KvAddressing& a, int key0, int seqlen_kv) {
  using Loader = TileLoader<kBlockN, REAL_COLS, Layout>;
#if IS_PAGED
  // Key j sits in page block_table[j / page_size], row j % page_size.
  Loader::load(smem, seqlen_kv - key0, a.base, [&](int row, int) {
    const int j = key0 + row;
    const int page = a.block_table[j / a.page_size];
    return a.base + page * a.page_stride + (j % a.page_size) * a.row_stride;
  });
#else
  const int row0 = static_cast<int>(threadIdx.x) / Layout::kChunks;
  const elem_t* first = a.base + (key0 + row0) * a.row_stride;
  const long long step_stride = Loader::kRowsPerStep * a.row_stride;
  Loader::load(smem, seqlen_kv - key0, a.base, [&](int, int step) { return first + step * step_stride; });
#endif
}

// This thread's query rows in the score fragments (thread row r = 2*mt + half is query row rows[r]);
// with the key of its column 0 they make the fragment's coordinates (common/fragment.cuh).
struct FragRows {
  int rows[2 * kMTiles];
};

// Dropout on the unnormalised probabilities (the row sums already hold the undropped values);
// key0: the tile's first key.
__device__ __forceinline__ void drop_scores(float (&s)[kMTiles][kNTiles][4], const DropoutKeys& d, int b, int h,
                                            const FragRows& fr, int key0, int lane) {
  unsigned bits[kMTiles][kNTiles];
  dropout_bits(bits, d, static_cast<unsigned>(b), static_cast<unsigned>(h), fr.rows, key0, lane);
  apply_dropout(s, QueryRowsC<kMTiles>{fr.rows, key0 + 2 * (lane & 3), 0}, bits);
}

// ---------------------------------------------------------------------------------------------
// Epilogue: scale O, stage it through shared memory (region 0) and write 16-byte rows; write LSE.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void store_output(const FwdParams& p, const float (&o)[kMTiles][kOTiles][4],
                                             const float (&out_scale)[2 * kMTiles], const float (&lse)[2 * kMTiles],
                                             elem_t* smem_o, const FragRows& fr, int warp_row0, int lane,
                                             int b, int h, const Sequence& seq, int m0) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = warp_row0 + mt * 16 + half * 8 + g;
      const float f = out_scale[2 * mt + half];
#pragma unroll
      for (int ot = 0; ot < kOTiles; ++ot) {  // one n8 tile = one 16-byte chunk
        *reinterpret_cast<unsigned*>(smem_o + LayoutV::offset(row, ot) + 2 * t) =
            pack2_out(o[mt][ot][2 * half] * f, o[mt][ot][2 * half + 1] * f);
      }
    }
  __syncthreads();

  constexpr int kRealChunks = kHeadDimV / kElemsPerChunk;
  constexpr int kTotal = kBlockM * kRealChunks;
  elem_t* out = static_cast<elem_t*>(p.out) + h * p.o_head_stride;
#if IS_VARLEN
  out += static_cast<long long>(seq.q_start) * p.o_row_stride;
#else
  out += b * p.o_batch_stride;
#endif
  const int valid_rows = seq.seqlen_q - m0;
#pragma unroll
  for (int step = 0; step < ceil_div(kTotal, kThreads); ++step) {
    const int idx = step * kThreads + static_cast<int>(threadIdx.x);
    const int row = idx / kRealChunks, chunk = idx % kRealChunks;
    if ((kTotal % kThreads == 0 || idx < kTotal) && row < valid_rows) {
      *reinterpret_cast<uint4*>(out + (m0 + row) * p.o_row_stride + chunk * kElemsPerChunk) =
          *reinterpret_cast<const uint4*>(smem_o + LayoutV::offset(row, chunk));
    }
  }

  if (p.lse != nullptr && t == 0) {
    float* lse_out = static_cast<float*>(p.lse) + h * p.lse_head_stride;
#if IS_VARLEN
    lse_out += static_cast<long long>(seq.q_start) * p.lse_row_stride;
#else
    lse_out += b * p.lse_batch_stride;
#endif
#pragma unroll
    for (int r = 0; r < 2 * kMTiles; ++r) {
      if (fr.rows[r] < seq.seqlen_q) lse_out[fr.rows[r] * p.lse_row_stride] = lse[r];
    }
  }
}

}  // namespace sm80
}  // namespace attn

// ---------------------------------------------------------------------------------------------
// The kernel.  grid = (ceil(max seqlen_q / BLOCK_M), heads_q, batch), block = NUM_WARPS * 32,
// dynamic shared memory = kSmemBytes (= sm80_tiles.shared_memory_bytes).
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(NUM_WARPS * 32) attn_fwd_kernel(const FwdParams p) {
  using namespace attn;
  using namespace attn::sm80;

  // Heaviest query tiles first (with causal masking the last tiles see the most keys), so the
  // long CTAs start early and the short ones fill the tail of the wave.
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
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
