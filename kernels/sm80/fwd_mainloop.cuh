// The sm_80 forward mainloop's parts: K/V tile loads (dense, varlen, paged; cp.async), the score
// fragment's coordinates and dropout.  The loop that strings them together with the warp GEMMs
// (sm80/smem.cuh) and the online softmax is the kernel's body (kernels/sm80/fwd.cu): moved into a
// function, its register allocation changed (d=256: 249 -> 254), so it stays inline until the
// sm_90a generation fixes the mainloop interface.
#pragma once

#include "common/problem.cuh"
#include "sm80/fwd_config.cuh"

namespace attn {
namespace sm80 {

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

}  // namespace sm80
}  // namespace attn
