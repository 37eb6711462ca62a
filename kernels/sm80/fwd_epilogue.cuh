// The sm_80 forward epilogue: O (mma.m16n8 C fragments) times the softmax's per-row factors,
// staged through shared memory, then the shared epilogue (common/epilogue.cuh): 16-byte row stores
// and the LSE.
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
                                             out_t* smem_o, const FragRows& fr, int warp_row0, int lane,
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

  out_t* out = seq_base<out_t>(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, b, h, seq.q_start);
  store_rows<kThreads, kBlockM, kHeadDimV, LayoutV>(out, p.o_row_stride, seq.seqlen_q - m0, smem_o, m0);
  if (p.lse != nullptr && t == 0) {
    float* lse_out = seq_base<float>(p.lse, p.lse_batch_stride, p.lse_row_stride, p.lse_head_stride, b, h, seq.q_start);
    store_lse(lse_out, p.lse_row_stride, fr.rows, lse, seq.seqlen_q);
  }
}

}  // namespace sm80
}  // namespace attn
