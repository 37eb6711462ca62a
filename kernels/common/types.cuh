// Element types, chosen at compile time, and the few conversions the kernels need.  Three roles:
//   in_t   what q, k, v (and dO) hold, and the tensor-core operand type (P and dS are rounded to it);
//   acc_t  what the GEMMs accumulate and the softmax computes in (fp32);
//   out_t  what out (and dQ, dK, dV) hold.
// The 16-bit generations use one type for in_t and out_t; fp8 inputs will not (ATTN_OUT_BF16 names
// the output type apart from the input's).
//
// Self-contained on purpose: NVRTC 13.5 ships no built-in cuda_fp16.h / cuda_bf16.h, and the kernels
// only move 16-bit values between memories and round fp32 pairs to 16-bit pairs (one PTX instruction),
// so the storage types below are all they need.  No include path to a CUDA toolkit is required.
#pragma once

#ifndef ATTN_DTYPE_BF16
#define ATTN_DTYPE_BF16 0
#endif
#ifndef ATTN_OUT_BF16
#define ATTN_OUT_BF16 ATTN_DTYPE_BF16
#endif

namespace attn {

// 16-bit storage types; bit patterns are those of IEEE binary16 / bfloat16.
struct alignas(2) half_t { unsigned short bits; };
struct alignas(2) bfloat16_t { unsigned short bits; };

#if ATTN_DTYPE_BF16
using in_t = bfloat16_t;
#define ATTN_PTX_ELEM "bf16"  // in_t's name in mma PTX
#else
using in_t = half_t;
#define ATTN_PTX_ELEM "f16"
#endif
#if ATTN_OUT_BF16
using out_t = bfloat16_t;
#else
using out_t = half_t;
#endif
using acc_t = float;
using elem_t = in_t;  // the 16-bit generations' one storage type (in_t == out_t there)

constexpr int kElemBytes = 2;
constexpr int kElemsPerChunk = 16 / kElemBytes;  // one 16-byte cp.async / ldmatrix row / vector store

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int round_up(int a, int b) { return ceil_div(a, b) * b; }
__host__ __device__ inline int imin(int a, int b) { return a < b ? a : b; }
__host__ __device__ inline int imax(int a, int b) { return a > b ? a : b; }

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// Two fp32 values -> one 32-bit register with two elements of type T, `lo` in bits 0..15 (round to
// nearest even).  The pair order matches the mma operand layout: the lower half holds the lower column.
__device__ __forceinline__ unsigned pack2_as(half_t, float lo, float hi) {
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ unsigned pack2_as(bfloat16_t, float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
// An operand pair (in_t) and an output pair (out_t).
__device__ __forceinline__ unsigned pack2(float lo, float hi) { return pack2_as(in_t{}, lo, hi); }
__device__ __forceinline__ unsigned pack2_out(float lo, float hi) { return pack2_as(out_t{}, lo, hi); }

// One 32-bit register with two in_t elements -> two fp32 values (`lo` from bits 0..15); exact.
struct float_pair { float lo, hi; };
__device__ __forceinline__ float_pair unpack2(unsigned v) {
#if ATTN_DTYPE_BF16
  return float_pair{__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u)};
#else
  float lo, hi;
  asm("{ .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.f32.f16 %0, l;\n cvt.f32.f16 %1, h;\n }"
      : "=f"(lo), "=f"(hi) : "r"(v));
  return float_pair{lo, hi};
#endif
}

// exp2 / log2 on the special-function unit.  ex2.approx(-inf) = +0, which the online softmax relies on.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float fast_log2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace attn
