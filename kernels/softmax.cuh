// Online softmax over key tiles, in the exp2 domain.
//
// Scores arrive as accumulator tiles float[M_TILES][N_TILES][4] in the mma.m16n8 C layout: element e
// of tile [mt][nt] belongs to this thread's row 2*mt + (e >> 1) (rows g and g+8 of m-tile mt); the
// four threads of a quad (same g) share a row.  The caller passes `exp_scale`, the factor that turns
// a score into log2 units (scale * log2(e) for raw dot products, 1 when the scores were already
// converted); masked scores are -inf.  Requires exp_scale > 0.
//
// State per row: row_max (in score units) and row_sum, this thread's partial sum of
// exp2(score * exp_scale - row_max * exp_scale); the quad reduction of row_sum happens once, at the end.
//
// Compile-time switches (0 when not defined): HAS_SINK_LOGITS.
#pragma once

#include "common/types.cuh"

#ifndef HAS_SINK_LOGITS
#define HAS_SINK_LOGITS 0
#endif

namespace attn {

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <int M_TILES>
struct OnlineSoftmax {
  static constexpr int kRows = 2 * M_TILES;
  float row_max[kRows];
  float row_sum[kRows];

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = neg_inf();
      row_sum[r] = 0.f;
    }
  }

  // Folding one tile of scores in takes three steps, apart so that a mainloop can put work between
  // them (FlashAttention-3 overlaps the next tile's GEMM with the exponentials, and the rescale of
  // the output with the P V GEMM).  Each step exists for one row (row_*) and for the whole fragment
  // (max_step, exp_step, rescale); update() runs the three row steps row by row, the order the
  // sm80 kernels were tuned with (three fragment-wide passes raise register pressure there: the
  // causal ALiBi d=128 forward spilled 80 bytes).
  //
  // Step 1: the tile's row maxima fold into the running maxima.  Per row: `max_scaled`, the new
  // maximum in log2 units (0 while the row has seen no visible key, so every exponent stays -inf
  // rather than NaN), and `correction`, the factor the old sums and outputs are rescaled by.
  template <int N_TILES>
  __device__ __forceinline__ void row_max_step(int r, const float (&s)[M_TILES][N_TILES][4], float exp_scale,
                                               float& max_scaled, float& correction) {
    const int mt = r / 2, half = r % 2;
    float tile_max = neg_inf();
#pragma unroll
    for (int nt = 0; nt < N_TILES; ++nt) {
      tile_max = fmaxf(tile_max, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
    }
    const float new_max = fmaxf(row_max[r], quad_max(tile_max));
    max_scaled = new_max == neg_inf() ? 0.f : new_max * exp_scale;
    correction = fast_exp2(row_max[r] * exp_scale - max_scaled);  // 0 on the first visit
    row_max[r] = new_max;
  }

  // Step 2: row r of `s` becomes the unnormalised probabilities exp2(s * exp_scale - max_scaled)
  // (0 where masked), and the rescaled running sum takes them in.
  template <int N_TILES>
  __device__ __forceinline__ void row_exp_step(int r, float (&s)[M_TILES][N_TILES][4], float exp_scale,
                                               float max_scaled, float correction) {
    const int mt = r / 2, half = r % 2;
    float sum = row_sum[r] * correction;
#pragma unroll
    for (int nt = 0; nt < N_TILES; ++nt) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float& x = s[mt][nt][2 * half + c];
        x = fast_exp2(fmaf(x, exp_scale, -max_scaled));
        sum += x;
      }
    }
    row_sum[r] = sum;
  }

  // Step 3: row r of the output accumulator follows the new maximum.
  template <int O_TILES>
  __device__ __forceinline__ static void row_rescale(int r, float (&acc_o)[M_TILES][O_TILES][4], float correction) {
    const int mt = r / 2, half = r % 2;
#pragma unroll
    for (int ot = 0; ot < O_TILES; ++ot) {
      acc_o[mt][ot][2 * half] *= correction;
      acc_o[mt][ot][2 * half + 1] *= correction;
    }
  }

  // The steps over the whole fragment.
  template <int N_TILES>
  __device__ __forceinline__ void max_step(const float (&s)[M_TILES][N_TILES][4], float exp_scale,
                                           float (&max_scaled)[kRows], float (&correction)[kRows]) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) row_max_step(r, s, exp_scale, max_scaled[r], correction[r]);
  }
  template <int N_TILES>
  __device__ __forceinline__ void exp_step(float (&s)[M_TILES][N_TILES][4], float exp_scale,
                                           const float (&max_scaled)[kRows], const float (&correction)[kRows]) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) row_exp_step(r, s, exp_scale, max_scaled[r], correction[r]);
  }
  template <int O_TILES>
  __device__ __forceinline__ static void rescale(float (&acc_o)[M_TILES][O_TILES][4], const float (&correction)[kRows]) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) row_rescale(r, acc_o, correction[r]);
  }

  // One tile, row by row.
  template <int N_TILES, int O_TILES>
  __device__ __forceinline__ void update(float (&s)[M_TILES][N_TILES][4], float (&acc_o)[M_TILES][O_TILES][4],
                                         float exp_scale) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float max_scaled, correction;
      row_max_step(r, s, exp_scale, max_scaled, correction);
      row_exp_step(r, s, exp_scale, max_scaled, correction);
      row_rescale(r, acc_o, correction);
    }
  }

  // Final per-row factors: out = acc_o * out_scale[r], and the natural-log LSE.
  // sink_logit (natural-log units) joins the denominator only; out_extra multiplies the output
  // (the dropout rescale).  A row with no visible key gets out_scale 0 and
  // lse = -inf (or the sink logit).
  __device__ __forceinline__ void finalize(float exp_scale, float sink_logit, float out_extra,
                                           float (&out_scale)[kRows], float (&lse)[kRows]) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_sum(row_sum[r]);
      const bool empty = sum == 0.f;  // a visible key contributes exp2(0) = 1 at the row maximum
      const float max_l2 = empty ? neg_inf() : row_max[r] * exp_scale;
#if HAS_SINK_LOGITS
      const float sink_l2 = sink_logit * kLog2e;
      const float top = fmaxf(max_l2, sink_l2);           // finite: the sink logit is
      const float keys_factor = fast_exp2(max_l2 - top);  // 0 for an empty row
      const float denom = sum * keys_factor + fast_exp2(sink_l2 - top);
      out_scale[r] = keys_factor / denom * out_extra;
      lse[r] = empty ? sink_logit : (top + fast_log2(denom)) * kLn2;
#else
      (void)sink_logit;
      out_scale[r] = empty ? 0.f : out_extra / sum;
      lse[r] = empty ? neg_inf() : (max_l2 + fast_log2(sum)) * kLn2;
#endif
    }
  }
};

}  // namespace attn
