// A probe of kernels/sm90a/ptx.cuh and layouts.cuh: one 64-row attention tile without softmax,
// O = (scale * Q K^T) V, in the warp-specialized shape the sm_90a kernels will have.
//   warpgroup 0 (producer): setmaxnreg.dec, prefetch.tensormap, TMA loads of Q (2D map), K (3D) and
//     V (4D) in 64-column panels with the 128-byte swizzle, all completing on one mbarrier;
//   warpgroup 1 (consumer): setmaxnreg.inc, waits on the mbarrier, S = Q K^T by SS wgmma (K-major A
//     and B), P = S in registers re-laid as A fragments (p_source_register), O += P V by RS wgmma with
//     V N-major (TransB = 1), O to shared memory by stmatrix, fence.proxy.async, a named barrier,
//     one TMA store (2D, no swizzle); then it arrives on a second mbarrier and on a second named
//     barrier (bar.arrive), which the producer waits on (bar.sync, try_wait) before mbarrier.inval.
// tests/test_sm90a_ptx.py compiles it with NVRTC and reads the SASS; on a GPU,
// tests/sm90a_host/run_probe.py runs it and checks O against NumPy.
//
// Launch: 256 threads, kProbeSmemBytes<HeadDim, BlockN> bytes of dynamic shared memory; maps:
//   q (HeadDim, 64) box (64, 64), k (HeadDim, BlockN, 1) box (64, BlockN, 1),
//   v (HeadDim, BlockN, 1, 1) box (64, BlockN, 1, 1), all 128B-swizzled;
//   o (HeadDim, 64) box (HeadDim, 64), no swizzle.
#include "sm90a/layouts.cuh"
#include "sm90a/ptx.cuh"

namespace probe {

using namespace attn;
using namespace attn::sm90a;

constexpr int kRows = kWgmmaM;                  // one consumer warpgroup's query rows
constexpr int kPanelColumns = 64;               // 128 bytes of 16-bit elements: one 128B swizzle span
constexpr unsigned kPanelRowBytes = 128;
constexpr Swizzle kSwizzle = Swizzle::k128B;
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
constexpr unsigned kConsumerDoneBarrier = 2;    // named barrier ids: 0 is __syncthreads'
constexpr unsigned kConsumerStoreBarrier = 1;

template <int HeadDim>
__host__ __device__ constexpr int panels() { return (HeadDim + kPanelColumns - 1) / kPanelColumns; }

template <int HeadDim, int Rows>
__host__ __device__ constexpr unsigned tile_bytes() { return panels<HeadDim>() * Rows * kPanelRowBytes; }

// Q, K, V tiles, then O staged row-major, each 1024-byte aligned; +1024 to align the base.
template <int HeadDim, int BlockN>
constexpr unsigned kProbeSmemBytes =
    tile_bytes<HeadDim, kRows>() + 2 * tile_bytes<HeadDim, BlockN>() + kRows * HeadDim * 2 + 1024;

template <class Elem, int BlockN, int HeadDim>
__device__ __forceinline__ void tile(const TmaDescriptor* q_map, const TmaDescriptor* k_map,
                                     const TmaDescriptor* v_map, const TmaDescriptor* o_map, float scale,
                                     unsigned char* smem_raw) {
  __shared__ unsigned long long loaded, consumed;
  const unsigned base_offset = (1024u - (smem_u32(smem_raw) & 1023u)) & 1023u;
  unsigned char* q_tile = smem_raw + base_offset;
  unsigned char* k_tile = q_tile + tile_bytes<HeadDim, kRows>();
  unsigned char* v_tile = k_tile + tile_bytes<HeadDim, BlockN>();
  unsigned char* o_tile = v_tile + tile_bytes<HeadDim, BlockN>();
  const int warpgroup = threadIdx.x / kWarpgroupThreads;
  const int thread = threadIdx.x % kWarpgroupThreads;

  if (threadIdx.x == 0) {
    mbarrier_init(&loaded, 1);
    mbarrier_init(&consumed, kWarpgroupThreads);
    fence_barrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    setmaxnreg_dec<kProducerRegisters>();
    if (thread == 0) {
      prefetch_tensormap(q_map);
      prefetch_tensormap(k_map);
      prefetch_tensormap(v_map);
      mbarrier_arrive_expect_tx(&loaded, tile_bytes<HeadDim, kRows>() + 2 * tile_bytes<HeadDim, BlockN>());
      for (int p = 0; p < panels<HeadDim>(); ++p) {
        tma_load_2d(q_tile + p * kRows * kPanelRowBytes, q_map, &loaded, p * kPanelColumns, 0);
        tma_load_3d(k_tile + p * BlockN * kPanelRowBytes, k_map, &loaded, p * kPanelColumns, 0, 0);
        tma_load_4d(v_tile + p * BlockN * kPanelRowBytes, v_map, &loaded, p * kPanelColumns, 0, 0, 0);
      }
    }
    named_barrier_sync(kConsumerDoneBarrier, 2 * kWarpgroupThreads);
    if (thread == 0) {
      mbarrier_wait_parity(&consumed, 0);
      mbarrier_inval(&loaded);
      mbarrier_inval(&consumed);
    }
    return;
  }

  setmaxnreg_inc<kConsumerRegisters>();
  mbarrier_wait_parity(&loaded, 0);

  // S = Q K^T: Q and K are K-major (head dim contiguous), one wgmma per 16 columns of the head dim.
  float s[BlockN / 2];
  const unsigned long long q_desc = encode_descriptor(k_major_tile_fields(kSwizzle, smem_u32(q_tile), kRows));
  const unsigned long long k_desc = encode_descriptor(k_major_tile_fields(kSwizzle, smem_u32(k_tile), BlockN));
  // Two wgmma-groups (the first half of the head dim, then the rest), waited for one by one.
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < HeadDim / kWgmmaK; ++kk) {
    wgmma_ss<BlockN, Elem>(s, descriptor_advance(q_desc, k_major_k_step_offset(kSwizzle, kRows, kk)),
                           descriptor_advance(k_desc, k_major_k_step_offset(kSwizzle, BlockN, kk)), kk > 0);
    if (kk == HeadDim / kWgmmaK / 2 - 1) wgmma_commit_group();
  }
  wgmma_commit_group();
  wgmma_wait_group<1>();
  wgmma_wait_group<0>();
  fence_accumulator(s);

  // O = P V with P = scale * S from registers; V is N-major (the head dim is contiguous).  All of P
  // is converted before the first wgmma, so the wgmmas issue back to back (converting inside the
  // loop makes ptxas wait for each one: its A registers are rewritten while it may still read them).
  unsigned p[BlockN / kWgmmaK][4];
#pragma unroll
  for (int kk = 0; kk < BlockN / kWgmmaK; ++kk)
#pragma unroll
    for (int r = 0; r < 4; ++r)
      p[kk][r] = pack2_as(Elem{}, scale * s[p_source_register(kk, r, 0)], scale * s[p_source_register(kk, r, 1)]);
  float o[HeadDim / 2];
  const unsigned long long v_desc = encode_descriptor(mn_major_tile_fields(kSwizzle, smem_u32(v_tile), BlockN));
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BlockN / kWgmmaK; ++kk)
    wgmma_rs<HeadDim, Elem, 1>(o, p[kk], descriptor_advance(v_desc, mn_major_k_step_offset(kSwizzle, kk, 2)), kk > 0);
  wgmma_commit_group();
  wgmma_wait_group<0>();
  fence_accumulator(o);

  // O to shared memory, row-major: one stmatrix.x4 per 16 columns of the warp's 16 rows.  Matrix q of
  // the four holds rows (q % 2) * 8.. and columns (q / 2) * 8.., i.e. accumulator pairs 2q, 2q+1.
  const int lane = thread % 32, warp = thread / 32;
  const int q_matrix = lane / 8;
  const int row = 16 * warp + (q_matrix % 2) * 8 + lane % 8;
#pragma unroll
  for (int j = 0; j < HeadDim / 16; ++j) {
    const int col = 16 * j + (q_matrix / 2) * 8;
    const float* pair = o + 8 * j;
    stmatrix_x4(smem_u32(o_tile + (row * HeadDim + col) * 2), pack2_as(Elem{}, pair[0], pair[1]),
                pack2_as(Elem{}, pair[2], pair[3]), pack2_as(Elem{}, pair[4], pair[5]),
                pack2_as(Elem{}, pair[6], pair[7]));
  }
  fence_proxy_async_shared_cta();
  named_barrier_sync(kConsumerStoreBarrier, kWarpgroupThreads);
  if (thread == 0) {
    tma_store_2d(o_map, o_tile, 0, 0);
    bulk_commit_group();
    bulk_wait_group_read<0>();
  }
  mbarrier_arrive(&consumed);
  named_barrier_arrive(kConsumerDoneBarrier, 2 * kWarpgroupThreads);
}

}  // namespace probe

// (element, key tile width = N of S = Q K^T, head dim = N of O += P V)
#define PROBE_KERNEL(NAME, ELEM, BLOCK_N, HEAD_DIM)                                                           \
  extern "C" __global__ void __launch_bounds__(256, 1)                                                         \
      NAME(const __grid_constant__ attn::sm90a::TmaDescriptor q, const __grid_constant__ attn::sm90a::TmaDescriptor k, \
           const __grid_constant__ attn::sm90a::TmaDescriptor v, const __grid_constant__ attn::sm90a::TmaDescriptor o, \
           float scale) {                                                                                     \
    extern __shared__ __align__(1024) unsigned char smem[];                                                    \
    probe::tile<ELEM, BLOCK_N, HEAD_DIM>(&q, &k, &v, &o, scale, smem);                                         \
  }

PROBE_KERNEL(probe_bf16_n64_d192, attn::bfloat16_t, 64, 192)
PROBE_KERNEL(probe_f16_n128_d96, attn::half_t, 128, 96)
PROBE_KERNEL(probe_bf16_n64_d256, attn::bfloat16_t, 64, 256)
PROBE_KERNEL(probe_f16_n64_d64, attn::half_t, 64, 64)
