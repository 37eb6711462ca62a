// The sm_80 forward epilogue: O (mma.m16n8 C fragments) times the softmax's per-row factors,
// staged through shared memory, then 16-byte row stores and the LSE -- the shared epilogue's steps
// (common/epilogue.cuh: store_rows, store_lse, which the backward kernels call).  Written out here
// because called through those functions, the forward's heaviest variant (every feature, d=128,
// already at 255 registers with spills) allocates differently (UIMAD 34 -> 60, ULDC.64 59 -> 92);
// every other variant compiles identically either way.
#pragma once

#include "common/epilogue.cuh"
#include "common/problem.cuh"
#include "sm80/fwd_config.cuh"
#include "sm80/fwd_mainloop.cuh"

namespace attn {
namespace sm80 {

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
