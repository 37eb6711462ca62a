// The device-side check of the index arguments (cu_seqlens_q, cu_seqlens_kv, seqlens_kv, block_table),
// launched by attnplan/index_guard.py before a plan's kernels on the caller's stream, so that `run`
// neither copies them to the host nor synchronizes, and a CUDA graph can hold it.
//
// It reads each argument, ORs a fault bit (common/index_rules.cuh IndexFault) into the status word for
// each one that breaks its rules, and writes a safe copy that the plan's kernels read instead:
//   - a cu_seqlens array that breaks a rule becomes all zeros: every sequence empty, nothing read;
//   - a paged sequence length outside [0, seqlen_kv] is clamped into it; a page id its sequence uses
//     that lies outside [0, num_pages) becomes page 0 and the sequence's length 0 (nothing is read).
// So bad values never reach memory; the host reports the status word by the next `run` or by
// `plan.check()` (InvalidArguments naming the argument).
//
// Launch: grid (max(batch, 2)), 256 threads.  CTAs 0 and 1 check cu_seqlens_q and cu_seqlens_kv (one
// array each, every boundary, then the copy); every CTA takes paged sequences blockIdx.x, blockIdx.x +
// gridDim.x, ...  A null pointer is an argument the descriptor does not use.
// The runtime prepends `struct IndexCheckParams` (attnplan/index_guard.py PARAMS).

#include "common/index_rules.cuh"

namespace attn {

__device__ __forceinline__ void check_cu_seqlens(const int* cu, int* safe, int batch, long long total, int max_len,
                                                 unsigned fault, unsigned* status) {
  bool bad = false;
  for (int i = static_cast<int>(threadIdx.x); i <= batch; i += static_cast<int>(blockDim.x))
    bad |= !cu_boundary_ok(cu, i, batch, total, max_len);
  bad = __syncthreads_or(bad);
  for (int i = static_cast<int>(threadIdx.x); i <= batch; i += static_cast<int>(blockDim.x)) safe[i] = bad ? 0 : cu[i];
  if (bad && threadIdx.x == 0) atomicOr(status, fault);
}

__device__ __forceinline__ void check_paged_sequence(const IndexCheckParams& p, int s, unsigned* status) {
  const int* lengths = static_cast<const int*>(p.seqlens_kv);
  const int* table = static_cast<const int*>(p.block_table);
  int* safe_table = static_cast<int*>(p.block_table_safe);
  const int seqlen_kv = static_cast<int>(p.seqlen_kv), pages_per_seq = static_cast<int>(p.pages_per_seq);
  const int num_pages = static_cast<int>(p.num_pages);
  const int length = lengths[s];
  const int safe_length = safe_seqlen_kv(length, seqlen_kv);
  const int used = pages_used(safe_length, static_cast<int>(p.page_size));
  bool bad_page = false;
  for (int j = static_cast<int>(threadIdx.x); j < pages_per_seq; j += static_cast<int>(blockDim.x)) {
    const long long at = static_cast<long long>(s) * p.table_row_stride + j;  // the copy keeps the caller's strides
    const int page = table[at];
    safe_table[at] = safe_page(page, j, used, num_pages);
    bad_page |= !page_entry_ok(page, j, used, num_pages);
  }
  bad_page = __syncthreads_or(bad_page);
  if (threadIdx.x == 0) {
    static_cast<int*>(p.seqlens_kv_safe)[s] = safe_paged_length(length, seqlen_kv, bad_page);
    if (!seqlen_kv_ok(length, seqlen_kv)) atomicOr(status, kFaultSeqlensKv);
    if (bad_page) atomicOr(status, kFaultBlockTable);
  }
}

}  // namespace attn

extern "C" __global__ void __launch_bounds__(256) attn_index_check(const IndexCheckParams p) {
  using namespace attn;
  unsigned* status = static_cast<unsigned*>(p.status);
  const int batch = static_cast<int>(p.batch);
  if (blockIdx.x == 0 && p.cu_seqlens_q != nullptr)
    check_cu_seqlens(static_cast<const int*>(p.cu_seqlens_q), static_cast<int*>(p.cu_seqlens_q_safe), batch,
                     p.total_q, static_cast<int>(p.max_seqlen_q), kFaultCuSeqlensQ, status);
  if (blockIdx.x == 1 && p.cu_seqlens_kv != nullptr)
    check_cu_seqlens(static_cast<const int*>(p.cu_seqlens_kv), static_cast<int*>(p.cu_seqlens_kv_safe), batch,
                     p.total_kv, static_cast<int>(p.max_seqlen_kv), kFaultCuSeqlensKv, status);
  if (p.block_table != nullptr)
    for (int s = static_cast<int>(blockIdx.x); s < batch; s += static_cast<int>(gridDim.x))
      check_paged_sequence(p, s, status);
}
