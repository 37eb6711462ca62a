// Inline-PTX wrappers for the sm_80 warp-level tensor-core path (also valid on sm_86/89/90):
// mma.sync m16n8k16 with fp32 accumulation, ldmatrix x4 (plain and transposed); the 16-byte cp.async
// (common/cp_async.cuh, shared with the sm90a generation's wgmma rung).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4, t = lane % 4:
//   A 16x16 row-major, 4 regs of 2 elements: a0 (row g,   cols 2t..2t+1)   a1 (row g+8, cols 2t..2t+1)
//                                            a2 (row g,   cols 2t+8..+9)   a3 (row g+8, cols 2t+8..+9)
//   B 16x8  (k x n),   2 regs:               b0 (k 2t..2t+1, col g)        b1 (k 2t+8..2t+9, col g)
//   C 16x8  fp32,      4 floats:             c0,c1 (row g, cols 2t, 2t+1)  c2,c3 (row g+8, cols 2t, 2t+1)
// ldmatrix .x4: lanes 8i..8i+7 give the row addresses of matrix i; result reg i holds matrix i's
// (row g, cols 2t..2t+1); with .trans it holds (rows 2t..2t+1, col g) instead.
//
// Every statement is `asm volatile`: ldmatrix reads shared memory that other threads rewrite between
// barriers, so it must never be hoisted or merged; ptxas still schedules the resulting SASS freely.
#pragma once

#include "common/types.cuh"
#include "common/cp_async.cuh"

namespace attn {
namespace sm80 {

__device__ __forceinline__ unsigned smem_u32(const void* ptr) {
  return static_cast<unsigned>(__cvta_generic_to_shared(ptr));
}

// d += a * b for one 16x8x16 tile.
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32." ATTN_PTX_ELEM "." ATTN_PTX_ELEM ".f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}

}  // namespace sm80
}  // namespace attn
