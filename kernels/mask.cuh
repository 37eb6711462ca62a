// The visibility rule of docs/semantics.md, in one place: which key j a query row i may see, and
// from it which key tiles a query tile has to visit and which of those need per-element masking.
//
// Compile-time switches (0 when not defined): IS_CAUSAL, HAS_WINDOW, HAS_SINK_TOKENS.
// Sink tokens only change anything together with a window (they are the keys that ignore it).
#pragma once

#include "common/types.cuh"
#include "common/fragment.cuh"

#ifndef IS_CAUSAL
#define IS_CAUSAL 0
#endif
#ifndef HAS_WINDOW
#define HAS_WINDOW 0
#endif
#ifndef HAS_SINK_TOKENS
#define HAS_SINK_TOKENS 0
#endif

namespace attn {

#define ATTN_HD __host__ __device__ __forceinline__

// What the rule needs for one sequence (all indices are within the sequence).
struct MaskInfo {
  int seqlen_kv;
  int off;           // row i is aligned with key i + off (bottom-right: seqlen_kv - seqlen_q; top-left: 0)
  int window_left;   // -1: unbounded
  int window_right;  // -1: unbounded
  int sink_tokens;   // keys j < sink_tokens ignore the window
};

// Is key j visible to query row i?
ATTN_HD bool visible(int i, int j, const MaskInfo& m) {
  if (j >= m.seqlen_kv) return false;
  const int dist = j - (i + m.off);  // > 0: key lies in the row's future
#if IS_CAUSAL
  if (dist > 0) return false;
#endif
#if HAS_WINDOW
#if HAS_SINK_TOKENS
  const bool in_window_rule = j >= m.sink_tokens;
#else
  const bool in_window_rule = true;
#endif
  if (in_window_rule) {
    if (m.window_left >= 0 && dist < -m.window_left) return false;
    if (m.window_right >= 0 && dist > m.window_right) return false;
  }
#endif
  (void)dist;
  return true;
}

// The key tiles a query tile visits: the window range [win_begin, win_end) and, with sink tokens,
// the sink tiles [0, sink_end) in addition (win_begin >= sink_end, so no tile is visited twice).
// Visiting order (tile(k) for k = 0 .. count()-1): window tiles from the last one down, then sink
// tiles from the last one down -- the diagonal tile comes first, as in FlashAttention-2.
struct KeyTileRange {
  int sink_end;
  int win_begin;
  int win_end;

  ATTN_HD int num_window() const { return win_end - win_begin; }
  ATTN_HD int count() const { return num_window() + sink_end; }
  ATTN_HD int tile(int k) const {
    return k < num_window() ? win_end - 1 - k : sink_end - 1 - (k - num_window());
  }
};

// Rows [row_first, row_last] of a query tile (row_last clipped to seqlen_q - 1).  Every key visible
// to one of these rows lies in a returned tile; tiles with no visible key are left out.
ATTN_HD KeyTileRange key_tile_range(int row_first, int row_last, int block_n, const MaskInfo& m) {
  int lo = 0, hi = m.seqlen_kv - 1;  // candidate keys [lo, hi]
#if IS_CAUSAL
  hi = imin(hi, row_last + m.off);
#endif
  const int causal_hi = hi;  // sink keys are bounded by causality and seqlen_kv only
#if HAS_WINDOW
  if (m.window_right >= 0) hi = imin(hi, row_last + m.off + m.window_right);
  if (m.window_left >= 0) lo = imax(lo, row_first + m.off - m.window_left);
#endif
  KeyTileRange r;
  r.sink_end = 0;
  r.win_begin = lo / block_n;  // lo >= 0
  r.win_end = hi < lo ? r.win_begin : hi / block_n + 1;
#if HAS_WINDOW && HAS_SINK_TOKENS
  const int sink_keys = imin(m.sink_tokens, causal_hi + 1);
  r.sink_end = sink_keys > 0 ? ceil_div(sink_keys, block_n) : 0;
  r.win_begin = imax(r.win_begin, r.sink_end);
  r.win_end = imax(r.win_end, r.win_begin);
#endif
  (void)causal_hi;
  return r;
}

// The query tiles [begin, end) that can see some key of [key_first, key_last] (key_last clipped to
// seqlen_kv - 1): the backward pass's view of the same rule.  The rows that see a key form one
// interval; a tile holding sink keys is seen by every causally allowed row (sinks ignore the window).
struct QueryTileRange {
  int begin;
  int end;
  ATTN_HD int count() const { return end - begin; }
};

ATTN_HD QueryTileRange query_tile_range(int key_first, int key_last, int seqlen_q, int block_m, const MaskInfo& m) {
  int lo = 0, hi = seqlen_q - 1;  // candidate rows [lo, hi]
#if IS_CAUSAL
  lo = imax(lo, key_first - m.off);  // j <= i + off
#endif
#if HAS_WINDOW
  int win_lo = lo, win_hi = hi;
  if (m.window_right >= 0) win_lo = imax(win_lo, key_first - m.off - m.window_right);  // j <= i + off + right
  if (m.window_left >= 0) win_hi = imin(win_hi, key_last - m.off + m.window_left);     // j >= i + off - left
#if HAS_SINK_TOKENS
  const bool has_sinks = key_first < m.sink_tokens;
#else
  const bool has_sinks = false;
#endif
  if (!has_sinks) {
    lo = win_lo;
    hi = win_hi;
  }
#endif
  (void)key_last;
  QueryTileRange r;
  r.begin = lo / block_m;  // lo >= 0
  r.end = hi < lo ? r.begin : hi / block_m + 1;
  return r;
}

// False only when every key of tile `tile` is visible to every row in [row_first, row_last]
// (then the per-element test can be skipped).  Checked against the window rule without the sink
// exception, which only makes more keys visible, so a `false` here is always safe.
ATTN_HD bool tile_needs_mask(int tile, int block_n, int row_first, int row_last, const MaskInfo& m) {
  const int key_first = tile * block_n, key_last = key_first + block_n - 1;
  if (key_last >= m.seqlen_kv) return true;
#if IS_CAUSAL
  if (key_last > row_first + m.off) return true;
#endif
#if HAS_WINDOW
  if (m.window_right >= 0 && key_last > row_first + m.off + m.window_right) return true;
  if (m.window_left >= 0 && key_first < row_last + m.off - m.window_left) return true;
#endif
  (void)row_last;
  return false;
}

#undef ATTN_HD

// The rule applied to an accumulator fragment of any layout (common/fragment.cuh): scores of keys a
// row may not see become -inf.
template <class Coords, int MT, int NT>
__device__ __forceinline__ void apply_mask(float (&s)[MT][NT][4], const Coords& at, const MaskInfo& m) {
  for_each_element(s, at, [&](float& x, int query, int key, int, int, int) {
    if (!visible(query, key, m)) x = neg_inf();
  });
}

}  // namespace attn
