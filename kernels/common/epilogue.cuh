// The epilogue every generation shares: the output tile, once its rows sit in shared memory as
// 16-byte chunks (each generation stages its own accumulator layout there), goes to global memory
// in coalesced 16-byte row stores; the LSE of each query row follows.  Later: the fp8 output scale
// and amax.
//
// `Layout` is the staging tile's shared-memory layout: Layout::offset(row, chunk) in elements.
#pragma once

#include "common/types.cuh"

namespace attn {

// Rows [0, valid_rows) of a ROWS x REAL_COLS staging tile -> dst (tile row r at dst + (row0 + r) *
// row_stride), THREADS threads, one 16-byte chunk per thread and step.
template <int THREADS, int ROWS, int REAL_COLS, class Layout>
__device__ __forceinline__ void store_rows(out_t* dst, long long row_stride, int valid_rows, const out_t* smem,
                                           int row0 = 0) {
  constexpr int kRealChunks = REAL_COLS / kElemsPerChunk;
  constexpr int kTotal = ROWS * kRealChunks;
#pragma unroll
  for (int step = 0; step < ceil_div(kTotal, THREADS); ++step) {
    const int idx = step * THREADS + static_cast<int>(threadIdx.x);
    const int row = idx / kRealChunks, chunk = idx % kRealChunks;
    if ((kTotal % THREADS == 0 || idx < kTotal) && row < valid_rows) {
      *reinterpret_cast<uint4*>(dst + (row0 + row) * row_stride + chunk * kElemsPerChunk) =
          *reinterpret_cast<const uint4*>(smem + Layout::offset(row, chunk));
    }
  }
}

// The natural-log LSE of this thread's query rows (rows[r] within the sequence; rows past
// seqlen_q are not written).  lse_seq: the sequence's row 0 of this head.
template <int ROWS>
__device__ __forceinline__ void store_lse(float* lse_seq, long long row_stride, const int (&rows)[ROWS],
                                          const float (&lse)[ROWS], int seqlen_q) {
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    if (rows[r] < seqlen_q) lse_seq[rows[r] * row_stride] = lse[r];
  }
}

}  // namespace attn
