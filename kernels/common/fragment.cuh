// Fragment-coordinate adapters: which (query, key) of the problem each element of a thread's
// accumulator fragment holds.  Masks, score modifiers and dropout are written once against this
// view (`for_each_element`), so the same rule serves every generation's MMA layout and every
// direction (scores with queries as rows in the forward and dQ kernels, transposed scores with
// keys as rows in the dK/dV kernel).
//
// A fragment is float[MT][NT][4]: MT m-tiles, NT n-tiles, four elements each, as the mma.m16n8 C
// layout (and, later, the wgmma accumulator seen per 16x8 core matrix) arranges them.  An adapter
// provides query(mt, nt, e) and key(mt, nt, e).
#pragma once

namespace attn {

// mma.m16n8 C layout, queries as rows: element e of tile [mt][nt] is thread row 2*mt + (e >> 1)
// (rows g and g+8 of m-tile mt, given per thread in `rows`) and key key0 + nt*8 + lane_col + (e & 1)
// (key0: the tile's first key; lane_col = 2t, g = lane / 4, t = lane % 4).
template <int MT>
struct QueryRowsC {
  const int* rows;  // this thread's 2*MT query rows (within the sequence)
  int key0;
  int lane_col;

  __device__ __forceinline__ int query(int mt, int, int e) const { return rows[2 * mt + (e >> 1)]; }
  __device__ __forceinline__ int key(int, int nt, int e) const { return key0 + nt * 8 + lane_col + (e & 1); }
};

// mma.m16n8 C layout of transposed scores S^T, keys as rows: element e of tile [mt][nt] is key
// key0 + 16*mt + g + 8*(e >> 1) (key0 = the warp's first key) and query
// query0 + (col0 + nt*8 + 2t) + (e & 1) (query0 = the query tile's first row, col0 = the warp's
// first query column within it).  g = lane / 4, t = lane % 4.
struct KeyRowsC {
  int key0;
  int query0;
  int col0;
  int g;
  int t;

  __device__ __forceinline__ int query(int, int nt, int e) const { return query0 + (col0 + nt * 8 + 2 * t) + (e & 1); }
  __device__ __forceinline__ int key(int mt, int, int e) const { return key0 + 16 * mt + g + 8 * (e >> 1); }
};

// fn(element, query, key, mt, nt, e) for every element of the fragment, in [mt][nt][e] order.
template <class Coords, int MT, int NT, class Fn>
__device__ __forceinline__ void for_each_element(float (&frag)[MT][NT][4], const Coords& at, Fn fn) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) fn(frag[mt][nt][e], at.query(mt, nt, e), at.key(mt, nt, e), mt, nt, e);
}

}  // namespace attn
