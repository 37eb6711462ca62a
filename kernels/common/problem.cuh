// What the forward and backward kernels read from their parameter block alike: where a sequence
// starts and how long it is, the mask of that sequence, the score modifiers (softcap, ALiBi) and
// the dropout keep bits of a score fragment.  Templates over the parameter struct (FwdParams,
// BwdParams: backends/nvrtc/params.py), which share these field names.
//
// Compile-time switches: common/features.cuh.  Semantics: docs/semantics.md.
#pragma once

#include "common/types.cuh"
#include "common/features.cuh"
#include "common/philox.cuh"
#include "mask.cuh"

namespace attn {

constexpr bool kScoresInLog2 = HAS_SOFTCAP || HAS_ALIBI;  // score mods convert scores to log2 units

// ---------------------------------------------------------------------------------------------
// Sequence coordinates, for dense, varlen and paged inputs alike.
// ---------------------------------------------------------------------------------------------
struct Sequence {
  int q_start;    // first row of the sequence in varlen-packed q-like tensors (0 when dense)
  int seqlen_q;
  int kv_start;   // first row in varlen-packed k-like tensors (0 when dense or paged)
  int seqlen_kv;
};

template <class Params>
__device__ __forceinline__ Sequence sequence_of(const Params& p, int b) {
  Sequence s{0, static_cast<int>(p.seqlen_q), 0, static_cast<int>(p.seqlen_kv)};
#if IS_VARLEN
  const int* cu_q = static_cast<const int*>(p.cu_seqlens_q);
  s.q_start = cu_q[b];
  s.seqlen_q = cu_q[b + 1] - s.q_start;
#endif
#if IS_PAGED
  s.seqlen_kv = static_cast<const int*>(p.seqlens_kv)[b];
#elif IS_VARLEN
  const int* cu_kv = static_cast<const int*>(p.cu_seqlens_kv);
  s.kv_start = cu_kv[b];
  s.seqlen_kv = cu_kv[b + 1] - s.kv_start;
#endif
  (void)b;
  return s;
}

// Row 0 of head `head` of this sequence in a tensor with (batch, row, head) strides.
template <class T>
__device__ __forceinline__ T* seq_base(const void* ptr, long long batch_stride, long long row_stride,
                                       long long head_stride, int b, int head, int start) {
  T* t = const_cast<T*>(static_cast<const T*>(ptr)) + head * head_stride;
#if IS_VARLEN
  (void)batch_stride;
  return t + static_cast<long long>(start) * row_stride;
#else
  (void)row_stride; (void)start;
  return t + b * batch_stride;
#endif
}

// A window bound as int: -1 stays unbounded, anything larger than any sequence is clipped so the
// index arithmetic in mask.cuh cannot overflow.
__device__ __forceinline__ int window_bound(long long w) {
  return w < 0 ? -1 : static_cast<int>(w < (1ll << 30) ? w : (1ll << 30));
}

template <class Params>
__device__ __forceinline__ MaskInfo mask_of(const Params& p, const Sequence& seq) {
  MaskInfo mask;
  mask.seqlen_kv = seq.seqlen_kv;
  mask.off = p.top_left ? 0 : seq.seqlen_kv - seq.seqlen_q;
  mask.window_left = window_bound(p.window_left);
  mask.window_right = window_bound(p.window_right);
  mask.sink_tokens = static_cast<int>(p.sink_tokens);
  return mask;
}

// ---------------------------------------------------------------------------------------------
// Score modifiers: a raw dot product -> log2 units with softcap and ALiBi applied; `dsoft` gets
// the softcap derivative factor 1 - tanh^2 (the backward's).  Without either feature the score is
// returned unchanged (the caller folds scale * log2(e) into the exponent).
// ---------------------------------------------------------------------------------------------
struct ScoreMods {
  float scale_l2;        // scale * log2(e)
  float scale_over_cap;  // scale / softcap
  float cap_l2;          // softcap * log2(e)
  float slope_l2;        // ALiBi slope * log2(e)

  __device__ __forceinline__ float apply(float x, int query, int key, int off, float& dsoft) const {
#if HAS_SOFTCAP
    const float th = tanhf(x * scale_over_cap);
    dsoft = 1.f - th * th;
    x = cap_l2 * th;
#elif HAS_ALIBI
    x *= scale_l2;
#endif
#if HAS_ALIBI
    const int dist = key - (query + off);
    x -= slope_l2 * static_cast<float>(dist < 0 ? -dist : dist);
#endif
    (void)query; (void)key; (void)off; (void)dsoft;
    return x;
  }
};

// The modifiers applied to a fragment of any layout (the forward: no softcap derivative kept).
template <class Coords, int MT, int NT>
__device__ __forceinline__ void apply_score_mods(float (&s)[MT][NT][4], const Coords& at, const ScoreMods& mods,
                                                 int off) {
  for_each_element(s, at, [&](float& x, int query, int key, int, int, int) {
    float unused_dsoft;
    x = mods.apply(x, query, key, off, unused_dsoft);
  });
}

// One score as the backward sees it: the modifiers (dsoft gets the softcap factor), then the mask,
// each by the same rule the forward applies fragment-wise.
__device__ __forceinline__ void modify_score(float& x, int query, int key, bool needs_mask, const ScoreMods& mods,
                                             const MaskInfo& mask, float& dsoft) {
  if constexpr (kScoresInLog2) x = mods.apply(x, query, key, mask.off, dsoft);
  if (needs_mask && !visible(query, key, mask)) x = neg_inf();
}

template <class Params>
__device__ __forceinline__ ScoreMods score_mods(const Params& p, int b, int h) {
  ScoreMods mods{};
  mods.scale_l2 = static_cast<float>(p.scale) * kLog2e;
#if HAS_SOFTCAP
  mods.scale_over_cap = static_cast<float>(p.scale / p.softcap);
  mods.cap_l2 = static_cast<float>(p.softcap) * kLog2e;
#endif
#if HAS_ALIBI
  mods.slope_l2 = static_cast<const float*>(p.alibi_slopes)[b * p.alibi_batch_stride + h] * kLog2e;
#endif
  (void)b; (void)h;
  return mods;
}

// ---------------------------------------------------------------------------------------------
// Dropout keep bits (docs/semantics.md: one Philox call per (row, group of 4 keys)).
// ---------------------------------------------------------------------------------------------
struct DropoutKeys {
  unsigned long long seed;
  unsigned threshold;
  float scale;  // 1 / (1 - p)
};

template <class Params>
__device__ __forceinline__ DropoutKeys dropout_keys(const Params& p) {
  return DropoutKeys{static_cast<unsigned long long>(p.dropout_seed), static_cast<unsigned>(p.dropout_threshold),
                     static_cast<float>(p.dropout_scale)};
}

__device__ __forceinline__ unsigned keep_nibble(const Philox4& r, unsigned threshold) {
  return unsigned(keep_word(r.x, threshold)) | (unsigned(keep_word(r.y, threshold)) << 1) |
         (unsigned(keep_word(r.z, threshold)) << 2) | (unsigned(keep_word(r.w, threshold)) << 3);
}

// Keep bits of score tiles in the mma C layout (rows = queries g, g+8 of each m16 tile; element e
// of n8 tile nt is key key0 + nt*8 + 2t + (e & 1) of row 2*mt + (e >> 1)).  The pair of threads
// t = 2u, 2u+1 of a quad covers one group of 4 keys of rows g and g+8: the even thread draws row
// g, the odd one row g+8, and each hands its partner the two bits it needs -- one Philox call per
// 4 elements.  rows[2*mt + half]: this thread's query rows.
// Dropout applied to a fragment of unnormalised probabilities from its keep bits (bit e of
// bits[mt][nt] for element e of tile [mt][nt]).
template <class Coords, int MT, int NT>
__device__ __forceinline__ void apply_dropout(float (&s)[MT][NT][4], const Coords& at, const unsigned (&bits)[MT][NT]) {
  for_each_element(s, at, [&](float& x, int, int, int mt, int nt, int e) {
    if (!((bits[mt][nt] >> e) & 1u)) x = 0.f;
  });
}

template <int MT, int NT>
__device__ __forceinline__ void dropout_bits(unsigned (&bits)[MT][NT], const DropoutKeys& d, unsigned b, unsigned h,
                                             const int (&rows)[2 * MT], int key0, int lane) {
  const bool odd = lane & 1;
  const int t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const unsigned col4 = static_cast<unsigned>(key0 + nt * 8 + 2 * t) >> 2;
      const unsigned row = static_cast<unsigned>(rows[2 * mt + (odd ? 1 : 0)]);
      const unsigned nib = keep_nibble(dropout_random4(d.seed, b, h, row, col4), d.threshold);
      const unsigned low_pair = nib & 3u, high_pair = nib >> 2;
      const unsigned mine = odd ? high_pair : low_pair;
      const unsigned theirs = __shfl_xor_sync(0xffffffffu, odd ? low_pair : high_pair, 1);
      const unsigned bits_g = odd ? theirs : mine, bits_g8 = odd ? mine : theirs;
      bits[mt][nt] = bits_g | (bits_g8 << 2);
    }
}

}  // namespace attn
