// cp.async (PTX ISA "Data Movement and Conversion Instructions: cp.async"): 16-byte global -> shared
// copies completing in commit groups.  Used by the sm80 kernels and the sm90a generation's "wgmma" rung.
#pragma once

namespace attn {

// 16-byte global -> shared copy that bypasses L1.  src_bytes < 16 zero-fills the rest; with
// src_bytes == 0 nothing is read (the source must still be a valid address expression).
__device__ __forceinline__ void cp_async_16(unsigned smem_addr, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(smem_addr), "l"(gmem), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Wait until at most `kPending` committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(kPending) : "memory");
}

}  // namespace attn
