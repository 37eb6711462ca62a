// Inline-PTX wrappers for the sm_90a generation: warpgroup MMA (wgmma), the tensor memory
// accelerator (TMA, cp.async.bulk.tensor), mbarriers, register reallocation (setmaxnreg), named
// barriers and stmatrix.  One device function per instruction; the layouts they expect (fragments,
// shared-memory swizzles, matrix descriptors) are computed in sm90a/layouts.cuh.
//
// Needs --gpu-architecture=sm_90a: wgmma and setmaxnreg exist only in the arch-specific target.
// Every statement is `asm volatile`: these instructions order memory or synchronise threads, and the
// compiler must neither drop nor merge them.  References are to the PTX ISA (8.x), by section name.
#pragma once

#include "common/types.cuh"

namespace attn {
namespace sm90a {

// A CUtensorMap as the driver encodes it (cuTensorMapEncodeTiled): 128 opaque bytes, 64-byte aligned.
// Kernels take it by value as a `const __grid_constant__ TmaDescriptor` parameter, so the map stays in
// the kernel's parameter space and its generic address is valid for cp.async.bulk.tensor.
struct alignas(64) TmaDescriptor {
  unsigned char bytes[128];
};

__device__ __forceinline__ unsigned smem_u32(const void* ptr) {
  return static_cast<unsigned>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ unsigned long long generic_u64(const void* ptr) {
  return reinterpret_cast<unsigned long long>(ptr);
}

// -- wgmma: "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions" -----------------

// wgmma.fence: orders this warpgroup's register and shared-memory accesses before the next
// wgmma.mma_async (needed before the first one and whenever the accumulators were touched).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

// wgmma.commit_group: the wgmma.mma_async issued since the last commit become one wgmma-group.
__device__ __forceinline__ void wgmma_commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// wgmma.wait_group N: wait until at most N wgmma-groups of this warpgroup are still pending.
template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
  static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes an immediate 0..7");
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving reads or writes of accumulator registers across an in-flight
// wgmma (the registers are read and written asynchronously between mma_async and wait_group).
template <int R>
__device__ __forceinline__ void fence_accumulator(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Operand-list generation.  Inline asm names operands by number only (NVRTC rejects named
// operands), and an m64nNk16 f32 accumulator is N/2 registers (PTX ISA, "Register Fragments": N/2
// .f32 registers per thread), so the list "%0, %1, ..., %(N/2-1)" and the matching "+f"(d[i]) are
// generated from the register count written as two digits (tens, units).  M(t, u) stands for the
// number 10t + u; every list starts with 0, which is written by hand, and continues from 1.
#define ATTN_SM90A_UNITS_0(M, t)
#define ATTN_SM90A_UNITS_1(M, t) M(t, 0)
#define ATTN_SM90A_UNITS_2(M, t) ATTN_SM90A_UNITS_1(M, t) M(t, 1)
#define ATTN_SM90A_UNITS_3(M, t) ATTN_SM90A_UNITS_2(M, t) M(t, 2)
#define ATTN_SM90A_UNITS_4(M, t) ATTN_SM90A_UNITS_3(M, t) M(t, 3)
#define ATTN_SM90A_UNITS_5(M, t) ATTN_SM90A_UNITS_4(M, t) M(t, 4)
#define ATTN_SM90A_UNITS_6(M, t) ATTN_SM90A_UNITS_5(M, t) M(t, 5)
#define ATTN_SM90A_UNITS_7(M, t) ATTN_SM90A_UNITS_6(M, t) M(t, 6)
#define ATTN_SM90A_UNITS_8(M, t) ATTN_SM90A_UNITS_7(M, t) M(t, 7)
#define ATTN_SM90A_UNITS_9(M, t) ATTN_SM90A_UNITS_8(M, t) M(t, 8)
#define ATTN_SM90A_ROW(M, t) ATTN_SM90A_UNITS_9(M, t) M(t, 9)
// Rows 0 .. tens-1 (row 0 without its 0).
#define ATTN_SM90A_ROWS_1(M) M(0, 1) M(0, 2) M(0, 3) M(0, 4) M(0, 5) M(0, 6) M(0, 7) M(0, 8) M(0, 9)
#define ATTN_SM90A_ROWS_2(M) ATTN_SM90A_ROWS_1(M) ATTN_SM90A_ROW(M, 1)
#define ATTN_SM90A_ROWS_3(M) ATTN_SM90A_ROWS_2(M) ATTN_SM90A_ROW(M, 2)
#define ATTN_SM90A_ROWS_4(M) ATTN_SM90A_ROWS_3(M) ATTN_SM90A_ROW(M, 3)
#define ATTN_SM90A_ROWS_5(M) ATTN_SM90A_ROWS_4(M) ATTN_SM90A_ROW(M, 4)
#define ATTN_SM90A_ROWS_6(M) ATTN_SM90A_ROWS_5(M) ATTN_SM90A_ROW(M, 5)
#define ATTN_SM90A_ROWS_7(M) ATTN_SM90A_ROWS_6(M) ATTN_SM90A_ROW(M, 6)
#define ATTN_SM90A_ROWS_8(M) ATTN_SM90A_ROWS_7(M) ATTN_SM90A_ROW(M, 7)
#define ATTN_SM90A_ROWS_9(M) ATTN_SM90A_ROWS_8(M) ATTN_SM90A_ROW(M, 8)
#define ATTN_SM90A_ROWS_10(M) ATTN_SM90A_ROWS_9(M) ATTN_SM90A_ROW(M, 9)
#define ATTN_SM90A_ROWS_11(M) ATTN_SM90A_ROWS_10(M) ATTN_SM90A_ROW(M, 10)
#define ATTN_SM90A_ROWS_12(M) ATTN_SM90A_ROWS_11(M) ATTN_SM90A_ROW(M, 11)
// The numbers 1 .. 10*tens + units - 1, each through M.
#define ATTN_SM90A_COUNT(M, tens, units) ATTN_SM90A_ROWS_##tens(M) ATTN_SM90A_UNITS_##units(M, tens)
// One list element: the asm operand "%n" (row 0 has no tens digit) or the accumulator operand.
#define ATTN_SM90A_TENS_0
#define ATTN_SM90A_TENS_1 "1"
#define ATTN_SM90A_TENS_2 "2"
#define ATTN_SM90A_TENS_3 "3"
#define ATTN_SM90A_TENS_4 "4"
#define ATTN_SM90A_TENS_5 "5"
#define ATTN_SM90A_TENS_6 "6"
#define ATTN_SM90A_TENS_7 "7"
#define ATTN_SM90A_TENS_8 "8"
#define ATTN_SM90A_TENS_9 "9"
#define ATTN_SM90A_TENS_10 "10"
#define ATTN_SM90A_TENS_11 "11"
#define ATTN_SM90A_TENS_12 "12"
#define ATTN_SM90A_ASM_OPERAND(t, u) ", %" ATTN_SM90A_TENS_##t #u
#define ATTN_SM90A_ACC_OPERAND(t, u) , "+f"(d[10 * t + u])
#define ATTN_SM90A_ACC_LIST(tens, units) "{%0" ATTN_SM90A_COUNT(ATTN_SM90A_ASM_OPERAND, tens, units) "}"
#define ATTN_SM90A_ACC_OPERANDS(tens, units) "+f"(d[0]) ATTN_SM90A_COUNT(ATTN_SM90A_ACC_OPERAND, tens, units)

// Wgmma<N, Elem>: D(64 x N, f32) (+)= A(64 x 16) * B(16 x N), issued by one warpgroup (128 threads,
// the first warp's index a multiple of 4).  `d` is this thread's N/2 accumulators in the layout of
// layouts.cuh (accumulator_coord).  `accumulate` is scale-d: 0 makes D = A*B (the registers' old
// values are ignored), anything else D += A*B; it is a runtime predicate, so the first k-step of a
// tile needs no separate zeroing.  Trans flags (imm-trans-a / imm-trans-b): 0 = K-major, 1 =
// MN-major ("Shared Memory Matrix Layout": 1 selects M-major A / N-major B).  V in O += P V is
// N-major (head_dim contiguous), so P V passes TransB = 1.  The scale of A and B is fixed at +1.
//   ss: A and B from shared-memory matrix descriptors (layouts.cuh, encode_descriptor);
//   rs: A from four 32-bit registers per thread (layouts.cuh, a_fragment_coord), B from a descriptor.
template <int N, class Elem>
struct Wgmma;

// The operand numbers that follow the accumulators are spelled out per shape (inline asm takes
// literal numbers): ss has desc_a, desc_b, scale_d, trans_a, trans_b; rs has a0..a3, desc_b,
// scale_d, trans_b.
#define ATTN_SM90A_WGMMA(N, ELEM, PTX_ELEM, TENS, UNITS, O0, O1, O2, O3, O4, O5, O6)                                \
  template <>                                                                                                    \
  struct Wgmma<N, ELEM> {                                                                                        \
    static constexpr int kAccumulators = N / 2;                                                                  \
    template <int TransA, int TransB>                                                                            \
    static __device__ __forceinline__ void ss(float (&d)[N / 2], unsigned long long desc_a,                     \
                                              unsigned long long desc_b, int accumulate) {                      \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #O2 ", 0;\n"                                             \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_ELEM "." PTX_ELEM " "                   \
                   ATTN_SM90A_ACC_LIST(TENS, UNITS) ", %" #O0 ", %" #O1 ", p, 1, 1, %" #O3 ", %" #O4 ";\n}\n"   \
                   : ATTN_SM90A_ACC_OPERANDS(TENS, UNITS)                                                        \
                   : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TransA), "n"(TransB));                       \
    }                                                                                                            \
    template <int TransB>                                                                                        \
    static __device__ __forceinline__ void rs(float (&d)[N / 2], const unsigned (&a)[4],                        \
                                              unsigned long long desc_b, int accumulate) {                      \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #O5 ", 0;\n"                                             \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_ELEM "." PTX_ELEM " "                   \
                   ATTN_SM90A_ACC_LIST(TENS, UNITS) ", {%" #O0 ", %" #O1 ", %" #O2 ", %" #O3 "}, %" #O4          \
                   ", p, 1, 1, %" #O6 ";\n}\n"                                                                   \
                   : ATTN_SM90A_ACC_OPERANDS(TENS, UNITS)                                                        \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(TransB));     \
    }                                                                                                            \
  };

// N, then N/2 as (tens, units), then the seven operand numbers after the N/2 accumulators.
#define ATTN_SM90A_WGMMA_SHAPES(X)                 \
  X(64, 3, 2, 32, 33, 34, 35, 36, 37, 38)          \
  X(80, 4, 0, 40, 41, 42, 43, 44, 45, 46)          \
  X(96, 4, 8, 48, 49, 50, 51, 52, 53, 54)          \
  X(112, 5, 6, 56, 57, 58, 59, 60, 61, 62)         \
  X(128, 6, 4, 64, 65, 66, 67, 68, 69, 70)         \
  X(144, 7, 2, 72, 73, 74, 75, 76, 77, 78)         \
  X(160, 8, 0, 80, 81, 82, 83, 84, 85, 86)         \
  X(176, 8, 8, 88, 89, 90, 91, 92, 93, 94)         \
  X(192, 9, 6, 96, 97, 98, 99, 100, 101, 102)      \
  X(208, 10, 4, 104, 105, 106, 107, 108, 109, 110) \
  X(224, 11, 2, 112, 113, 114, 115, 116, 117, 118) \
  X(256, 12, 8, 128, 129, 130, 131, 132, 133, 134)

#define ATTN_SM90A_WGMMA_BOTH_TYPES(N, TENS, UNITS, O0, O1, O2, O3, O4, O5, O6)     \
  ATTN_SM90A_WGMMA(N, half_t, "f16", TENS, UNITS, O0, O1, O2, O3, O4, O5, O6)        \
  ATTN_SM90A_WGMMA(N, bfloat16_t, "bf16", TENS, UNITS, O0, O1, O2, O3, O4, O5, O6)

ATTN_SM90A_WGMMA_SHAPES(ATTN_SM90A_WGMMA_BOTH_TYPES)

// The shapes the kernels use: key tiles of 64 .. 256 keys in steps of 16 (S = Q K^T; the P V k-steps
// need whole 16-key steps) and head dims 64 .. 256 (O += P V).
template <int N>
constexpr bool kWgmmaShapeSupported = N >= 64 && N <= 256 && N % 16 == 0;

// wgmma_ss<N, Elem, TransA, TransB>(d, desc_a, desc_b, accumulate), Elem = half_t or bfloat16_t.
template <int N, class Elem, int TransA = 0, int TransB = 0>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], unsigned long long desc_a, unsigned long long desc_b,
                                         int accumulate) {
  static_assert(kWgmmaShapeSupported<N>, "wgmma m64nNk16: N must be a multiple of 16 in 64..256 here");
  Wgmma<N, Elem>::template ss<TransA, TransB>(d, desc_a, desc_b, accumulate);
}

// wgmma_rs<N, Elem, TransB>(d, a, desc_b, accumulate): A from registers (K-major by definition).
template <int N, class Elem, int TransB = 0>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const unsigned (&a)[4], unsigned long long desc_b,
                                         int accumulate) {
  static_assert(kWgmmaShapeSupported<N>, "wgmma m64nNk16: N must be a multiple of 16 in 64..256 here");
  Wgmma<N, Elem>::template rs<TransB>(d, a, desc_b, accumulate);
}

// -- mbarrier: "Parallel Synchronization and Communication Instructions: mbarrier" ----------------
// A 64-bit barrier object in shared memory that counts arrivals and, for TMA, transaction bytes.

__device__ __forceinline__ void mbarrier_init(unsigned long long* bar, unsigned arrive_count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrive_count) : "memory");
}

// Makes initialised barriers visible to the async proxy (TMA) and to the other threads of the cluster.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive(unsigned long long* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// Arrives once and adds `bytes` to the transaction count the current phase waits for (the bytes the
// TMA loads that signal this barrier will deliver).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}

// True once the phase with parity `phase_parity` has completed (try_wait may suspend for a while).
__device__ __forceinline__ bool mbarrier_try_wait_parity(unsigned long long* bar, unsigned phase_parity) {
  unsigned done;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(phase_parity)
      : "memory");
  return done != 0;
}

__device__ __forceinline__ void mbarrier_wait_parity(unsigned long long* bar, unsigned phase_parity) {
  while (!mbarrier_try_wait_parity(bar, phase_parity)) {
  }
}

__device__ __forceinline__ void mbarrier_inval(unsigned long long* bar) {
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// -- TMA: "Data Movement and Conversion Instructions: cp.async.bulk.tensor" ------------------------
// Coordinates are in elements, innermost dimension first (the order of the map's dims); a box may
// reach past the tensor's end (loads fill zeros there, stores skip it).
//   tma_load_<R>d(smem_dst, map, bar, c0, ..): global -> shared; completes on `bar` by
//   complete_tx::bytes: the phase ends once the bytes announced by arrive.expect_tx have arrived (a
//   whole box counts, the filled part too);
//   tma_store_<R>d(map, smem_src, c0, ..): shared -> global, tracked by bulk async-groups (commit,
//   wait) rather than an mbarrier; threads' shared-memory writes must be fenced to the async proxy
//   first (fence_proxy_async_shared_cta).
// Per rank: the coordinate parameters, their operand numbers in the load and in the store, the operands.
#define ATTN_SM90A_TMA_RANKS(X)                                                                          \
  X(2, (int c0, int c1), "{%3, %4}", "{%2, %3}", "r"(c0), "r"(c1))                                       \
  X(3, (int c0, int c1, int c2), "{%3, %4, %5}", "{%2, %3, %4}", "r"(c0), "r"(c1), "r"(c2))              \
  X(4, (int c0, int c1, int c2, int c3), "{%3, %4, %5, %6}", "{%2, %3, %4, %5}", "r"(c0), "r"(c1), "r"(c2), \
    "r"(c3))
#define ATTN_SM90A_UNPAREN(...) __VA_ARGS__
#define ATTN_SM90A_TMA(RANK, PARAMS, LOAD_COORDS, STORE_COORDS, ...)                                           \
  __device__ __forceinline__ void tma_load_##RANK##d(void* smem_dst, const TmaDescriptor* map,                  \
                                                     unsigned long long* bar, ATTN_SM90A_UNPAREN PARAMS) {     \
    asm volatile("cp.async.bulk.tensor." #RANK "d.shared::cluster.global.mbarrier::complete_tx::bytes"          \
                 " [%0], [%1, " LOAD_COORDS "], [%2];\n" ::"r"(smem_u32(smem_dst)),                           \
                 "l"(generic_u64(map)), "r"(smem_u32(bar)), __VA_ARGS__                                         \
                 : "memory");                                                                                   \
  }                                                                                                             \
  __device__ __forceinline__ void tma_store_##RANK##d(const TmaDescriptor* map, const void* smem_src,           \
                                                      ATTN_SM90A_UNPAREN PARAMS) {                              \
    asm volatile("cp.async.bulk.tensor." #RANK "d.global.shared::cta.bulk_group [%0, " STORE_COORDS "], [%1];\n" \
                 ::"l"(generic_u64(map)), "r"(smem_u32(smem_src)), __VA_ARGS__                                  \
                 : "memory");                                                                                   \
  }

ATTN_SM90A_TMA_RANKS(ATTN_SM90A_TMA)

__device__ __forceinline__ void bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// Wait until at most N bulk groups still read their shared-memory source (the buffer may be reused).
template <int N>
__device__ __forceinline__ void bulk_wait_group_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}

// Pulls the tensor map into the cache ahead of its first use ("prefetch, prefetchu": .tensormap).
__device__ __forceinline__ void prefetch_tensormap(const TmaDescriptor* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(generic_u64(map)) : "memory");
}

// Orders this thread's generic-proxy shared-memory accesses before later async-proxy ones (TMA
// stores, wgmma operand reads) of the CTA: "Parallel Synchronization ...: membar/fence", proxy fences.
__device__ __forceinline__ void fence_proxy_async_shared_cta() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// -- setmaxnreg: "Miscellaneous Instructions: setmaxnreg" ------------------------------------------
// Warpgroup-wide: every warp of the warpgroup executes it with the same count, a multiple of 8 in
// 24..256.  Producers give registers back (dec), consumers take them (inc).
template <int Count>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(Count >= 24 && Count <= 256 && Count % 8 == 0, "setmaxnreg: a multiple of 8 in 24..256");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Count));
}

template <int Count>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(Count >= 24 && Count <= 256 && Count % 8 == 0, "setmaxnreg: a multiple of 8 in 24..256");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Count));
}

// -- named barriers: "Parallel Synchronization and Communication Instructions: bar, barrier" -------
// Barrier 0 is __syncthreads'; `threads` is a multiple of the warp size (all warps taking part).
__device__ __forceinline__ void named_barrier_sync(unsigned id, unsigned threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_barrier_arrive(unsigned id, unsigned threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// -- stmatrix: "Data Movement and Conversion Instructions: stmatrix" -------------------------------
// Four 8x8 b16 matrices from the warp's registers to shared memory: lanes 8i..8i+7 give the row
// addresses of matrix i; register i of each thread holds (row lane/4, cols 2(lane%4)..+1) of matrix i
// (the mma / wgmma accumulator pairing), so an epilogue stores a packed accumulator without shuffles.
__device__ __forceinline__ void stmatrix_x4(unsigned smem_row_addr, unsigned r0, unsigned r1, unsigned r2,
                                            unsigned r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_row_addr), "r"(r0),
               "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

}  // namespace sm90a
}  // namespace attn
