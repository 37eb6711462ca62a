// Configuration of the sm_80 forward kernel (kernels/sm80/fwd.cu): tile shape, fragment counts and
// the shared-memory layout, from the dispatch key's defines.
#pragma once

#include "common/types.cuh"
#include "common/features.cuh"
#include "sm80/smem.cuh"

#ifndef KV_STAGES
#define KV_STAGES 1
#endif

namespace attn {
namespace sm80 {

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------
constexpr int kBlockM = BLOCK_M;
constexpr int kBlockN = BLOCK_N;
constexpr int kNumWarps = NUM_WARPS;
constexpr int kThreads = kNumWarps * 32;
constexpr int kHeadDim = HEAD_DIM;
constexpr int kHeadDimV = HEAD_DIM_V;
constexpr int kDimQK = round_up(kHeadDim, 16);  // mma k-steps are 16 wide; padding columns hold zeros
constexpr int kDimV = round_up(kHeadDimV, 16);  // one ldmatrix.x4.trans covers 16 output columns
constexpr int kWarpRows = kBlockM / kNumWarps;
constexpr int kMTiles = kWarpRows / 16;          // m16 tiles per warp
constexpr int kNTiles = kBlockN / 8;             // n8 score tiles per key tile
constexpr int kKSteps = kBlockN / 16;            // k16 steps of P V
constexpr int kOTiles = kDimV / 8;               // n8 output tiles

static_assert(kHeadDim % 8 == 0 && kHeadDim >= 8 && kHeadDim <= 256, "HEAD_DIM: multiple of 8, <= 256");
static_assert(kHeadDimV % 8 == 0 && kHeadDimV >= 8 && kHeadDimV <= 256, "HEAD_DIM_V: multiple of 8, <= 256");
static_assert(kBlockM % kNumWarps == 0 && kWarpRows % 16 == 0, "each warp owns whole m16 tiles");
static_assert(kBlockN % 16 == 0, "BLOCK_N: multiple of 16");

// ---------------------------------------------------------------------------------------------
// Shared-memory layout and tile loads: sm80/smem.cuh (shared with the backward kernels).
// ---------------------------------------------------------------------------------------------
using LayoutQK = RowLayout<kDimQK>;
using LayoutV = RowLayout<kDimV>;  // also the output staging tile

// Region 0 holds Q during the main loop and the output tile in the epilogue.
constexpr int kSmemRegion0 = kBlockM * (LayoutQK::kStride > LayoutV::kStride ? LayoutQK::kStride : LayoutV::kStride);
constexpr int kSmemK = kBlockN * LayoutQK::kStride;
constexpr int kSmemV = kBlockN * LayoutV::kStride;
constexpr int kKStages = KV_STAGES;  // K tile buffers (2: the next K loads during this tile's whole iteration)
static_assert(kKStages == 1 || kKStages == 2, "KV_STAGES: 1 or 2");
constexpr int kSmemBytes = (kSmemRegion0 + kKStages * kSmemK + kSmemV) * kElemBytes;
// Cross-check of the Python formula (backends/nvrtc/sm80/tiles.py:shared_memory_bytes), on every compile.
#ifndef ATTN_EXPECTED_SMEM_BYTES
#error "ATTN_EXPECTED_SMEM_BYTES: the launcher's shared-memory size must be passed (backends/nvrtc/generation.py)"
#endif
static_assert(kSmemBytes == ATTN_EXPECTED_SMEM_BYTES, "sm80 tiles.shared_memory_bytes disagrees with the kernel");

}  // namespace sm80
}  // namespace attn
