// The forward entry of tests/test_generations.py's compile-only kernel generation "testgen".
// The runtime prepends `struct FwdParams` (the standard fields plus an opaque 128-byte tensor map)
// and passes the dispatch key's macros and ATTN_EXPECTED_SMEM_BYTES, its Python formula's size.

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "the testgen generation compiles for sm_90a only"
#endif

constexpr int kSmemBytes = BLOCK_M * HEAD_DIM * 2;  // one Q tile of 2-byte elements
static_assert(kSmemBytes == ATTN_EXPECTED_SMEM_BYTES, "testgen's shared-memory formula disagrees with the kernel");
static_assert(alignof(FwdParams) == 64, "the tensor map aligns the parameter struct to 64 bytes");

extern "C" __global__ void attn_fwd_kernel(const __grid_constant__ FwdParams p) {
  extern __shared__ unsigned char smem[];
  smem[threadIdx.x] = p.tensor_map[threadIdx.x % 128];
  __syncthreads();
  if (threadIdx.x == 0) static_cast<float*>(p.out)[blockIdx.x] = p.scale * smem[NUM_WARPS];
}
