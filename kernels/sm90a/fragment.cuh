// The wgmma accumulator seen through the fragment-coordinate interface of common/fragment.cuh, so
// that the shared mask (mask.cuh: apply_mask), score modifiers (common/problem.cuh:
// apply_score_mods) and online softmax (softmax.cuh) apply to it unchanged.
//
// An m64nN f32 accumulator is N/2 registers per thread (layouts.cuh: accumulator_coord).  Viewed
// as float[1][N/8][4], register 4*nt + e is element [0][nt][e], and per warp that is exactly the
// mma.m16n8 C layout with one m-tile: element e sits in the warp's row g + 8*(e >> 1) and column
// 8*nt + 2t + (e & 1) (g = lane / 4, t = lane % 4).  So a row's elements live in the four threads
// of a quad (the softmax's quad reductions hold) and rows r = 0, 1 of OnlineSoftmax<1> are rows g
// and g + 8.  Host-compilable (host_device.cuh); tests/sm90a_host/dump_fwd.cpp checks all of it.
#pragma once

#include "sm90a/layouts.cuh"

namespace attn {
namespace sm90a {

// m-tiles of the [MT][NT][4] view of one warpgroup's accumulator (its 64 rows are one m16 tile per warp).
constexpr int kAccumulatorMTiles = 1;

// The register of the flat accumulator that element [0][nt][e] of the [1][N/8][4] view is.
__host__ __device__ constexpr int accumulator_register(int nt, int e) { return 4 * nt + e; }

// accumulator_coord is separable: coord(thread, reg) = coord(thread, 0) + coord(0, reg), so a thread
// computes its own part once and every element adds a compile-time constant.
__host__ __device__ constexpr RowCol accumulator_offset(int nt, int e) {
  return accumulator_coord(0, accumulator_register(nt, e));
}

// (query, key) of every accumulator element of S = Q K^T for one warpgroup: the interface
// for_each_element expects (query(mt, nt, e), key(mt, nt, e)).
struct WgmmaRowsC {
  int row0;  // query of register 0: the warpgroup's first query row + accumulator_coord(thread, 0).row
  int col0;  // key of register 0: the key tile's first key + accumulator_coord(thread, 0).col

  // `thread` within the warpgroup (0..127); query0 / key0: the warpgroup's first row, the tile's first key.
  __host__ __device__ static constexpr WgmmaRowsC at(int thread, int query0, int key0) {
    return WgmmaRowsC{query0 + accumulator_coord(thread, 0).row, key0 + accumulator_coord(thread, 0).col};
  }
  __host__ __device__ constexpr int query(int, int nt, int e) const { return row0 + accumulator_offset(nt, e).row; }
  __host__ __device__ constexpr int key(int, int nt, int e) const { return col0 + accumulator_offset(nt, e).col; }
};

// The query rows of this thread's two softmax rows (r = 0, 1 of OnlineSoftmax<1>): element e holds row e >> 1.
__host__ __device__ constexpr int softmax_row_query(const WgmmaRowsC& at, int r) {
  return at.row0 + accumulator_offset(0, 2 * r).row;
}

// The flat accumulator of a wgmma (float[N/2], what Wgmma<N>::ss / rs take) as the [1][N/8][4]
// fragment the shared mask, score modifiers and softmax take: the same registers, no copy.
template <int R>
__device__ __forceinline__ float (&as_fragment(float (&acc)[R]))[kAccumulatorMTiles][R / 4][4] {
  static_assert(R % 4 == 0, "an accumulator is whole 8-column blocks of 4 registers");
  return *reinterpret_cast<float(*)[kAccumulatorMTiles][R / 4][4]>(&acc);
}

}  // namespace sm90a
}  // namespace attn
