// Shared-memory tiles for the sm_80 warp-MMA kernels: a bank-conflict-free row layout, a cp.async
// tile loader, ldmatrix operand loaders for mma.m16n8k16 (A and B, plain or transposed storage),
// and the scatter of packed 16-bit accumulator fragments into a tile.
//
// Layout: rows of COLS elements split into 16-byte chunks.  Rows that are a multiple of 64 elements
// use an XOR swizzle (chunk ^= row % 8 inside each group of 8 chunks); other rows are padded by one
// chunk (an odd row pitch in 16-byte units).  Either way the 8 rows an ldmatrix phase reads, and 8
// rows written at the same chunk, fall into 8 different 16-byte bank groups.
//
// Used by the forward and backward kernels (kernels/sm80/fwd.cu, bwd.cu).
#pragma once

#include "common/types.cuh"
#include "sm80/mma.cuh"
#include "common/epilogue.cuh"

namespace attn {
namespace sm80 {

// 4-byte global -> shared copy (through L1); src_bytes == 0 writes a zero.
__device__ __forceinline__ void cp_async_4(unsigned smem_addr, const void* gmem, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
               :: "r"(smem_addr), "l"(gmem), "r"(src_bytes) : "memory");
}

// Two fp32 atomic adds to consecutive, 8-byte aligned addresses when `pred` holds (one predicated
// vector reduction on sm_90, no branch).
__device__ __forceinline__ void atomic_add2_if(bool pred, float* addr, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n @p red.global.add.v2.f32 [%0], {%1, %2};\n}\n"
               :: "l"(addr), "f"(a), "f"(b), "r"(static_cast<int>(pred)) : "memory");
#else
  if (pred) {
    atomicAdd(addr, a);
    atomicAdd(addr + 1, b);
  }
#endif
}

struct RowFrag {
  int row_elems;   // row * stride
  int chunk_bits;  // swizzled: (row % 8) ^ odd; padded: odd
};

template <int COLS>
struct RowLayout {
  static_assert(COLS % 16 == 0, "rows hold an even number of chunks");
  static constexpr int kCols = COLS;
  static constexpr int kChunks = COLS / kElemsPerChunk;
  static constexpr bool kSwizzle = COLS % 64 == 0;
  static constexpr int kStride = kSwizzle ? COLS : COLS + kElemsPerChunk;  // elements per row

  __device__ __forceinline__ static int offset(int row, int chunk) {
    if constexpr (kSwizzle) {
      return row * kStride + ((chunk & ~7) | ((chunk ^ row) & 7)) * kElemsPerChunk;
    } else {
      return row * kStride + chunk * kElemsPerChunk;
    }
  }
  // A lane reads chunk (even + odd) of `row`: `even` is a compile-time even number in unrolled
  // loops, `odd` in {0, 1} per lane.
  __device__ __forceinline__ static RowFrag frag(int row, int odd) {
    return RowFrag{row * kStride, kSwizzle ? ((row & 7) ^ odd) : odd};
  }
  __device__ __forceinline__ static int frag_offset(RowFrag f, int even) {
    if constexpr (kSwizzle) {
      return f.row_elems + ((even & ~7) + ((even & 7) ^ f.chunk_bits)) * kElemsPerChunk;
    } else {
      return f.row_elems + (even + f.chunk_bits) * kElemsPerChunk;
    }
  }
};

// Global -> shared, 16 bytes per thread and step (cp.async).  Rows >= valid_rows and chunks beyond
// REAL_COLS are zero-filled.  Each thread keeps one chunk column and walks down the rows; the row
// pointer of row `row` (only asked for rows < valid_rows) comes from row_ptr(row, step).
template <int THREADS, int ROWS, int REAL_COLS, class Layout>
struct RowLoader {
  static constexpr int kRowsPerStep = THREADS / Layout::kChunks;
  static constexpr int kSteps = ceil_div(ROWS, kRowsPerStep);
  static constexpr int kRealChunks = REAL_COLS / kElemsPerChunk;
  static_assert(kRowsPerStep >= 1, "a CTA covers at least one row per step");

  template <class RowPtr>
  __device__ __forceinline__ static void load(elem_t* smem, int valid_rows, const void* any_valid_ptr, RowPtr row_ptr) {
    const int tid = static_cast<int>(threadIdx.x);
    const int chunk = tid % Layout::kChunks, row0 = tid / Layout::kChunks;
    const bool active = (THREADS % Layout::kChunks == 0 || row0 < kRowsPerStep) && chunk < kRealChunks;
    const unsigned base = smem_u32(smem);
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
      const int row = row0 + step * kRowsPerStep;
      if ((ROWS % kRowsPerStep == 0 || row < ROWS) && row0 < kRowsPerStep) {
        const bool in_range = active && row < valid_rows;
        const void* src = in_range ? static_cast<const void*>(row_ptr(row, step) + chunk * kElemsPerChunk)
                                   : any_valid_ptr;
        cp_async_16(base + Layout::offset(row, chunk) * kElemBytes, src, in_range ? 16 : 0);
      }
    }
  }

  // Rows [0, valid_rows) of a tensor whose row r starts at base + r * row_stride.
  __device__ __forceinline__ static void load_strided(elem_t* smem, const elem_t* base, long long row_stride,
                                                      int valid_rows) {
    const int row0 = static_cast<int>(threadIdx.x) / Layout::kChunks;
    const elem_t* first = base + row0 * row_stride;
    const long long step_stride = kRowsPerStep * row_stride;
    load(smem, valid_rows, base, [&](int, int step) { return first + step * step_stride; });
  }
};

// ---------------------------------------------------------------------------------------------
// ldmatrix operand loaders.  g = lane / 4, t = lane % 4; see sm80/mma.cuh for the fragments.
// ---------------------------------------------------------------------------------------------

// A lane's ldmatrix row address: lanes 8i..8i+7 address matrix i, whose 8 rows start 8 rows lower
// when bit ROW_BIT of the lane is set and one 16-byte chunk to the right when bit CHUNK_BIT is set.
template <class Layout, int ROW_BIT, int CHUNK_BIT>
struct LaneRows {
  unsigned base;
  RowFrag f;
  __device__ __forceinline__ LaneRows(unsigned smem, int row0, int lane)
      : base(smem), f(Layout::frag(row0 + (lane & 7) + ((lane >> ROW_BIT) & 1) * 8, chunk_parity(lane))) {}
  // lane < 32: bit 4 is the top bit and needs no mask (keeping the mask changes ptxas's allocation).
  __device__ __forceinline__ static int chunk_parity(int lane) {
    return CHUNK_BIT == 4 ? lane >> 4 : (lane >> CHUNK_BIT) & 1;
  }
  // Shared address of this lane's row `rows_down` rows below, at chunk `even_chunk` (+ its parity).
  __device__ __forceinline__ unsigned at(int even_chunk, int rows_down) const {
    return base + (Layout::frag_offset(f, even_chunk) + rows_down * Layout::kStride) * kElemBytes;
  }
};

// A[m][k] stored row-major (rows = m).  Matrices: rows m0..7 / 8..15 x chunks k0 / k0+1 -> a0..a3.
template <class Layout>
struct AFromRows : LaneRows<Layout, 3, 4> {
  __device__ __forceinline__ AFromRows(unsigned smem, int m0, int lane) : LaneRows<Layout, 3, 4>(smem, m0, lane) {}
  // k-step ks (16 columns), m-tile mt (16 rows below m0).
  __device__ __forceinline__ void load(unsigned (&a)[4], int ks, int mt = 0) const {
    ldmatrix_x4(a, this->at(2 * ks, mt * 16));
  }
};

// A[m][k] stored transposed, as T[k][m] (rows = k).  a0 = T[k0..7][m0..7]^T, a1 = T[k0..7][m8..15]^T,
// a2 = T[k8..15][m0..7]^T, a3 = T[k8..15][m8..15]^T.
template <class Layout>
struct AFromCols : LaneRows<Layout, 4, 3> {
  __device__ __forceinline__ AFromCols(unsigned smem, int k0, int lane) : LaneRows<Layout, 4, 3>(smem, k0, lane) {}
  // k-step ks (16 rows of T below k0), m-tile starting at column m0 (a multiple of 16).
  __device__ __forceinline__ void load(unsigned (&a)[4], int ks, int m0) const {
    ldmatrix_x4_trans(a, this->at(m0 / kElemsPerChunk, ks * 16));
  }
};

// B[k][n] stored as M[n][k] (rows = n, e.g. K for Q K^T).  One x4 gives b0, b1 of two n8 tiles.
template <class Layout>
struct BFromRows : LaneRows<Layout, 4, 3> {
  __device__ __forceinline__ BFromRows(unsigned smem, int n0, int lane) : LaneRows<Layout, 4, 3>(smem, n0, lane) {}
  // k-step ks, n-tile pair np (n tiles 2np, 2np+1 below n0): b[0], b[1] and b[2], b[3].
  __device__ __forceinline__ void load(unsigned (&b)[4], int ks, int np) const {
    ldmatrix_x4(b, this->at(2 * ks, np * 16));
  }
};

// B[k][n] stored row-major (rows = k, e.g. V for P V).  One x4.trans gives two n8 tiles.
// np0: the first n-tile pair (column 16 np0) this loader addresses; a compile-time constant
// (or warp-uniform value) added to np.
template <class Layout>
struct BFromCols : LaneRows<Layout, 3, 4> {
  int np0;
  __device__ __forceinline__ BFromCols(unsigned smem, int k0, int lane, int first_pair = 0)
      : LaneRows<Layout, 3, 4>(smem, k0, lane), np0(first_pair) {}
  // k-step ks (16 rows below k0), n-tile pair np (columns 16 (np0 + np) ..).
  __device__ __forceinline__ void load(unsigned (&b)[4], int ks, int np) const {
    ldmatrix_x4_trans(b, this->at(2 * (np0 + np), ks * 16));
  }
};

// ---------------------------------------------------------------------------------------------
// Warp GEMMs on one or more m16 tiles.
// ---------------------------------------------------------------------------------------------

template <int MT, int NT>
__device__ __forceinline__ void zero(float (&c)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) c[mt][nt][e] = 0.f;
}

// C[MT m16][NT n8] += A B over KSTEPS k16 steps, A and B both loaded from shared memory.
template <int MT, int NT, int KSTEPS, class ALoad, class BLoad>
__device__ __forceinline__ void gemm_ss(float (&c)[MT][NT][4], const ALoad& a_src, const BLoad& b_src) {
  static_assert(NT % 2 == 0, "n tiles come in pairs");
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) {
    unsigned a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) a_src.load(a[mt], ks, mt);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      unsigned b[4];
      b_src.load(b, ks, np);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816(c[mt][2 * np], a[mt], b[0], b[1]);
        mma_16816(c[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// C[MT m16][NT n8] += A B over KSTEPS k16 steps with A in registers (a[mt][ks]); B from shared memory.
template <int MT, int NT, int KSTEPS, class BLoad>
__device__ __forceinline__ void gemm_rs(float (&c)[MT][NT][4], const unsigned (&a)[MT][KSTEPS][4], const BLoad& b_src) {
  static_assert(NT % 2 == 0, "n tiles come in pairs");
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      unsigned b[4];
      b_src.load(b, ks, np);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816(c[mt][2 * np], a[mt][ks], b[0], b[1]);
        mma_16816(c[mt][2 * np + 1], a[mt][ks], b[2], b[3]);
      }
    }
  }
}

// fp32 accumulator tiles -> 16-bit A fragments (two n8 tiles = one k16 step).
template <int MT, int NT>
__device__ __forceinline__ void pack_a(const float (&c)[MT][NT][4], unsigned (&a)[MT][NT / 2][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
      a[mt][kk][0] = pack2(c[mt][2 * kk][0], c[mt][2 * kk][1]);          // row g,   cols 2t..
      a[mt][kk][1] = pack2(c[mt][2 * kk][2], c[mt][2 * kk][3]);          // row g+8, cols 2t..
      a[mt][kk][2] = pack2(c[mt][2 * kk + 1][0], c[mt][2 * kk + 1][1]);  // row g,   cols 8+2t..
      a[mt][kk][3] = pack2(c[mt][2 * kk + 1][2], c[mt][2 * kk + 1][3]);  // row g+8, cols 8+2t..
    }
}

// Packed A fragments a[ks] of one m16 tile (rows row0.., columns col0 + 16 ks ..) -> a shared tile.
template <class Layout, int KSTEPS>
__device__ __forceinline__ void store_a_frags(elem_t* smem, const unsigned (&a)[KSTEPS][4], int row0, int col0,
                                              int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) {
    const int chunk = col0 / kElemsPerChunk + 2 * ks;
    *reinterpret_cast<unsigned*>(smem + Layout::offset(row0 + g, chunk) + 2 * t) = a[ks][0];
    *reinterpret_cast<unsigned*>(smem + Layout::offset(row0 + g + 8, chunk) + 2 * t) = a[ks][1];
    *reinterpret_cast<unsigned*>(smem + Layout::offset(row0 + g, chunk + 1) + 2 * t) = a[ks][2];
    *reinterpret_cast<unsigned*>(smem + Layout::offset(row0 + g + 8, chunk + 1) + 2 * t) = a[ks][3];
  }
}

// fp32 accumulator tiles c[nt] of one m16 tile (rows row0.., n8 tiles from column chunk chunk0)
// times `factor` -> 16-bit elements of a shared tile.
template <class Layout, int NT>
__device__ __forceinline__ void store_c_frags(out_t* smem, const float (&c)[NT][4], float factor, int row0,
                                              int chunk0, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    *reinterpret_cast<unsigned*>(smem + Layout::offset(row0 + g, chunk0 + nt) + 2 * t) =
        pack2_out(c[nt][0] * factor, c[nt][1] * factor);
    *reinterpret_cast<unsigned*>(smem + Layout::offset(row0 + g + 8, chunk0 + nt) + 2 * t) =
        pack2_out(c[nt][2] * factor, c[nt][3] * factor);
  }
}

}  // namespace sm80
}  // namespace attn
