// Index math of the sm_90a generation, as constexpr __host__ __device__ functions that g++ compiles
// too (host_device.cuh): which thread holds which element of a wgmma fragment, how a shared-memory
// tile is swizzled, how a wgmma matrix descriptor describes it, and (tile_scheduler.cuh, included at
// the end) the order a persistent kernel takes its tiles in.  The kernels and the host test driver
// (tests/sm90a_host/dump_layouts.cpp) use these same functions; the tests check them against the
// PTX ISA's tables restated in Python.
//
// References are to the PTX ISA 8.x, section "Asynchronous Warpgroup Level Matrix Multiply-Accumulate
// Instructions" (wgmma), by section and figure name (figure numbers change between ISA versions).
// All shapes are for 16-bit operands (f16, bf16) with f32 accumulation: m64nNk16.
#pragma once

#include "common/host_device.cuh"

namespace attn {
namespace sm90a {

constexpr int kWarpgroupThreads = 128;  // four consecutive warps, the first a multiple of 4
constexpr int kWgmmaM = 64;             // rows of one wgmma (warp w of the warpgroup owns 16w..16w+15)
constexpr int kWgmmaK = 16;             // k of one wgmma for 16-bit operands
constexpr int kKStepBytes = 32;         // one k-step of any operand type is 32 bytes of K

struct RowCol {
  int row;
  int col;
};

struct ThreadReg {
  int thread;  // 0..127 within the warpgroup
  int reg;     // register index within the thread's fragment
};

// -- Register fragments ("Register Fragments and Shared Memory Matrix Layouts", "Register Fragments",
//    "Matrix Fragments for wgmma.mma_async.m64nNk16") ---------------------------------------------

// Accumulator D of m64nNk16 with .f32: N/2 registers per thread ("A vector expression containing N/2
// number of .f32 registers"); figure "WGMMA .m64nNk16 register fragment layout for accumulator
// matrix D".  Warp w holds rows 16w..16w+15 as one mma.m16n8 C fragment per 8 columns: register i
// sits in column block i/4, row lane/4 (+8 for i%4 >= 2), column 2*(lane%4) + i%2.
__host__ __device__ constexpr int accumulator_registers(int n) { return n / 2; }

__host__ __device__ constexpr RowCol accumulator_coord(int thread, int reg) {
  return RowCol{16 * (thread / 32) + (thread % 32) / 4 + 8 * ((reg / 2) % 2),
                8 * (reg / 4) + 2 * (thread % 4) + reg % 2};
}

// The inverse: which thread and register hold element (row, col) of the 64 x N accumulator.
__host__ __device__ constexpr ThreadReg accumulator_owner(int row, int col) {
  return ThreadReg{32 * (row / 16) + 4 * (row % 8) + (col % 8) / 2, 4 * (col / 8) + 2 * ((row % 16) / 8) + col % 2};
}

// Multiplicand A from registers, m64k16 with .f16/.bf16: four .b32 registers of two elements each
// (a0..a7; register r holds a_{2r} in its low half and a_{2r+1} in its high half); figure "WGMMA
// .m64nNk16 register fragment layout for matrix A".  Per warp it is the mma.m16n8k16 A fragment:
// register r in row lane/4 (+8 for odd r), k 2*(lane%4) + half (+8 for r >= 2).
__host__ __device__ constexpr RowCol a_fragment_coord(int thread, int reg, int half) {
  return RowCol{16 * (thread / 32) + (thread % 32) / 4 + 8 * (reg % 2), 8 * (reg / 2) + 2 * (thread % 4) + half};
}

// P stays in registers between S = Q K^T and O += P V.  S (64 x kBlockN) is an accumulator; P's
// k-step kk (keys 16kk..16kk+15) is the A operand of one m64nNk16.  The two layouts place the same
// (row, column) in the same thread, so A register r of k-step kk packs S registers
// 8kk + 2r (low half) and 8kk + 2r + 1 (high half): no shuffle, only an f32x2 -> 16-bit x2 convert.
__host__ __device__ constexpr int p_source_register(int k_step, int reg, int half) {
  return 8 * k_step + 2 * reg + half;
}

// -- Shared-memory swizzles ("Shared Memory Matrix Layout", table "Various combinations of swizzling
//    mode, leading dimension and swizzle-atom layout"; the TMA swizzle modes of cuTensorMapEncodeTiled
//    are the same patterns) ----------------------------------------------------------------------
//
// A swizzle of span S bytes (32, 64 or 128) permutes the 16-byte chunks within each S-byte row of an
// atom of 8 such rows: byte-address bits [4, 4+b) ^= bits [7, 7+b), b = log2(S / 16).  The pattern
// repeats every 8*S bytes ("Matrix Descriptor Format": 1024, 512, 256 bytes), so tiles start on that
// boundary (then the descriptor's base offset is 0).  kNone has no XOR; its "row" is one 16-byte
// core-matrix row.  The enumerator values are b, and also CUtensorMapSwizzle's numbering.
enum class Swizzle : int { kNone = 0, k32B = 1, k64B = 2, k128B = 3 };

__host__ __device__ constexpr int swizzle_bits(Swizzle s) { return static_cast<int>(s); }
__host__ __device__ constexpr unsigned swizzle_span_bytes(Swizzle s) { return 16u << swizzle_bits(s); }
__host__ __device__ constexpr unsigned swizzle_atom_bytes(Swizzle s) { return 8u * swizzle_span_bytes(s); }

__host__ __device__ constexpr unsigned swizzle_address(Swizzle s, unsigned address) {
  return address ^ (((address >> 7) & ((1u << swizzle_bits(s)) - 1u)) << 4);
}

// How our tiles sit in shared memory, whichever operand they feed: `rows` rows (a multiple of 8),
// the columns cut into panels of one swizzle span, each panel rows x span bytes and stored after the
// previous one, then swizzled.  It is what one TMA box of (span / elem_bytes columns, rows) writes
// per panel; the descriptors below describe it for either major-ness.
__host__ __device__ constexpr unsigned tile_offset(Swizzle s, int rows, int row, int col, int elem_bytes) {
  const unsigned span = swizzle_span_bytes(s);
  const unsigned col_bytes = static_cast<unsigned>(col * elem_bytes);
  return swizzle_address(s, (col_bytes / span) * rows * span + static_cast<unsigned>(row) * span + col_bytes % span);
}

// The canonical layouts a descriptor stands for (before the swizzle is applied to the address), in
// bytes from the descriptor's start address.  T = 16 bytes of elements, "core matrix" = 8 rows x 16 B.
//   K-major (K contiguous): MN row mn at (mn/8)*SBO + (mn%8)*span; K bytes kb at (kb/span)*LBO + kb%span.
//     Swizzled modes never reach a second span (a k-step is 32 bytes), so LBO is unused ("assumed 1").
//   MN-major (MN contiguous), swizzled: MN bytes mb at (mb/span)*LBO + mb%span; K row k at
//     (k/8)*SBO + (k%8)*span.  Without swizzle the roles swap: MN bytes at (mb/16)*SBO + mb%16, K row
//     at (k/8)*LBO + (k%8)*16.
// ("Strides": leading / stride dimension byte offsets per major-ness; the same forms as CUTLASS's
// canonical GMMA layouts, ((8,m),(T,2k)) for K-major and ((T,8,m),(8,k)) for MN-major.)
__host__ __device__ constexpr unsigned canonical_k_major(Swizzle s, unsigned lbo, unsigned sbo, int mn, int k,
                                                         int elem_bytes) {
  const unsigned span = swizzle_span_bytes(s);
  const unsigned kb = static_cast<unsigned>(k * elem_bytes);
  return static_cast<unsigned>(mn / 8) * sbo + static_cast<unsigned>(mn % 8) * span + (kb / span) * lbo + kb % span;
}

__host__ __device__ constexpr unsigned canonical_mn_major(Swizzle s, unsigned lbo, unsigned sbo, int mn, int k,
                                                          int elem_bytes) {
  const unsigned span = swizzle_span_bytes(s);
  const unsigned mb = static_cast<unsigned>(mn * elem_bytes);
  const unsigned k_group = static_cast<unsigned>(k / 8), k_row = static_cast<unsigned>(k % 8);
  return s == Swizzle::kNone ? (mb / 16) * sbo + k_group * lbo + k_row * 16 + mb % 16
                             : (mb / span) * lbo + k_group * sbo + k_row * span + mb % span;
}

// -- Matrix descriptors ("Matrix Descriptor Format") -----------------------------------------------
// 64 bits: [0,14) start address, [16,30) leading dimension byte offset (LBO), [32,46) stride
// dimension byte offset (SBO), each matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4; [49,52) base
// offset; [62,64) swizzle mode (0 none, 1 128B, 2 64B, 3 32B).
struct DescriptorFields {
  unsigned start_address;  // shared-memory byte address (16-byte aligned)
  unsigned leading_byte_offset;
  unsigned stride_byte_offset;
  unsigned base_offset;  // 0 when the swizzle pattern starts on its 8*span boundary
  Swizzle swizzle;
};

constexpr int kDescStartBit = 0;
constexpr int kDescLeadingBit = 16;
constexpr int kDescStrideBit = 32;
constexpr int kDescBaseOffsetBit = 49;
constexpr int kDescSwizzleBit = 62;

// The descriptor's swizzle code: 128B is 1 and 32B is 3, the reverse of CUtensorMapSwizzle's order.
__host__ __device__ constexpr unsigned descriptor_swizzle_code(Swizzle s) {
  return s == Swizzle::kNone ? 0u : 4u - static_cast<unsigned>(swizzle_bits(s));
}

__host__ __device__ constexpr Swizzle swizzle_of_descriptor_code(unsigned code) {
  return code == 0 ? Swizzle::kNone : static_cast<Swizzle>(4 - static_cast<int>(code));
}

__host__ __device__ constexpr unsigned long long descriptor_encode(unsigned bytes) { return (bytes & 0x3FFFFu) >> 4; }

__host__ __device__ constexpr unsigned long long encode_descriptor(DescriptorFields f) {
  return descriptor_encode(f.start_address) << kDescStartBit |
         descriptor_encode(f.leading_byte_offset) << kDescLeadingBit |
         descriptor_encode(f.stride_byte_offset) << kDescStrideBit |
         static_cast<unsigned long long>(f.base_offset & 7u) << kDescBaseOffsetBit |
         static_cast<unsigned long long>(descriptor_swizzle_code(f.swizzle)) << kDescSwizzleBit;
}

__host__ __device__ constexpr DescriptorFields decode_descriptor(unsigned long long desc) {
  return DescriptorFields{static_cast<unsigned>((desc >> kDescStartBit) & 0x3FFFu) << 4,
                          static_cast<unsigned>((desc >> kDescLeadingBit) & 0x3FFFu) << 4,
                          static_cast<unsigned>((desc >> kDescStrideBit) & 0x3FFFu) << 4,
                          static_cast<unsigned>((desc >> kDescBaseOffsetBit) & 7u),
                          swizzle_of_descriptor_code(static_cast<unsigned>(desc >> kDescSwizzleBit) & 3u)};
}

// Base offset when a swizzled matrix's pattern does not start on its 8*span boundary ("Matrix
// Descriptor Format": (pattern start addr >> 0x7) & 0x7).  Our tiles are aligned, so it is 0 there.
__host__ __device__ constexpr unsigned descriptor_base_offset(Swizzle s, unsigned pattern_start_address) {
  return s == Swizzle::kNone ? 0u : (pattern_start_address >> 7) & 7u;
}

// Moves a descriptor's start address by `bytes` (a multiple of 16): the start field is the low 14
// bits and shared memory (< 256 KiB) never carries out of it.
__host__ __device__ constexpr unsigned long long descriptor_advance(unsigned long long desc, unsigned bytes) {
  return desc + (bytes >> 4);
}

// Descriptor fields of a tile laid out by tile_offset() at `tile_address`, feeding wgmma as a K-major
// operand (rows = M or N, columns = K: Q and K in S = Q K^T) or as an MN-major one (rows = K, columns
// = N: V in O += P V, which then takes TransB = 1).
__host__ __device__ constexpr DescriptorFields k_major_tile_fields(Swizzle s, unsigned tile_address, int rows) {
  return DescriptorFields{tile_address, s == Swizzle::kNone ? 16u * rows : 16u, 8u * swizzle_span_bytes(s), 0u, s};
}

__host__ __device__ constexpr DescriptorFields mn_major_tile_fields(Swizzle s, unsigned tile_address, int rows) {
  return s == Swizzle::kNone
             ? DescriptorFields{tile_address, 8u * 16u, 16u * rows, 0u, s}
             : DescriptorFields{tile_address, swizzle_span_bytes(s) * rows, 8u * swizzle_span_bytes(s), 0u, s};
}

// Start-address offset of k-step `k_step` (32 bytes of K) within such a tile.  K-major: K runs along
// the columns, so a k-step is 32 bytes into the span and every span/32 k-steps move to the next panel
// (128B swizzle, 16-bit: k-steps 0..3 at +0, +32, +64, +96, k-step 4 at the next panel, rows*128
// bytes on).  The swizzle applies to the address the hardware forms, so a start inside the atom works.
// MN-major: K runs along the rows, 16 rows of `span` bytes per k-step.
__host__ __device__ constexpr unsigned k_major_k_step_offset(Swizzle s, int rows, int k_step) {
  const unsigned span = swizzle_span_bytes(s);
  const unsigned kb = static_cast<unsigned>(k_step) * kKStepBytes;
  return (kb / span) * rows * span + kb % span;
}

__host__ __device__ constexpr unsigned mn_major_k_step_offset(Swizzle s, int k_step, int elem_bytes) {
  return static_cast<unsigned>(k_step) * (kKStepBytes / elem_bytes) * swizzle_span_bytes(s);
}

// The shared-memory byte the hardware reads for element (mn, k) of one wgmma operand described by
// `f` (k within the instruction's k16): the canonical layout from the start address, then the swizzle.
__host__ __device__ constexpr unsigned descriptor_element_address(DescriptorFields f, bool mn_major, int mn, int k,
                                                                  int elem_bytes) {
  return swizzle_address(f.swizzle, f.start_address + (mn_major ? canonical_mn_major(f.swizzle, f.leading_byte_offset,
                                                                                     f.stride_byte_offset, mn, k,
                                                                                     elem_bytes)
                                                                : canonical_k_major(f.swizzle, f.leading_byte_offset,
                                                                                    f.stride_byte_offset, mn, k,
                                                                                    elem_bytes)));
}

}  // namespace sm90a
}  // namespace attn

#include "sm90a/tile_scheduler.cuh"
