// The value rules of the index arguments (docs/semantics.md "Index arguments"), as the device-side
// check (common/index_check.cu) applies them.  attnplan/arguments.py check_index_values states the
// same rules on the host; tests/test_index_check.py compiles this header as plain C++ and checks the
// two against each other.
//
//   cu_seqlens_q / cu_seqlens_kv (batch + 1 entries): start at 0, never decrease, end at the tensor's
//     row total, no sequence longer than the descriptor's maximum;
//   seqlens_kv (paged, batch entries): each in [0, seqlen_kv];
//   block_table (paged, batch x max_pages_per_seq): the pages a sequence uses (ceil(seqlens_kv /
//     page_size) of its row; of its clamped length where that is out of range) lie in [0,
//     num_pages); the entries past them are never read.
#pragma once

#include "common/host_device.cuh"

namespace attn {

// The fault bits of the status word: which argument broke its rules (attnplan/index_guard.py FAULTS).
enum IndexFault : unsigned {
  kFaultCuSeqlensQ = 1u << 0,
  kFaultCuSeqlensKv = 1u << 1,
  kFaultSeqlensKv = 1u << 2,
  kFaultBlockTable = 1u << 3,
};

// Whether boundary i of a cu_seqlens array of batch + 1 entries keeps the rules: the first is 0, each
// later one is at least its predecessor and at most max_len past it, and the last is `total`.
__host__ __device__ inline bool cu_boundary_ok(const int* cu, int i, int batch, long long total, int max_len) {
  const long long here = cu[i];
  if (i == 0) return here == 0 && (batch > 0 || total == 0);
  const long long length = here - static_cast<long long>(cu[i - 1]);
  if (length < 0 || length > max_len) return false;
  return i < batch || here == total;
}

__host__ __device__ inline bool seqlen_kv_ok(int length, int seqlen_kv) { return 0 <= length && length <= seqlen_kv; }

// A paged sequence's length as the kernels may use it: within [0, seqlen_kv].
__host__ __device__ inline int safe_seqlen_kv(int length, int seqlen_kv) {
  return length < 0 ? 0 : (length > seqlen_kv ? seqlen_kv : length);
}

// The pages a sequence of `length` keys uses: the first ceil(length / page_size) of its row.
__host__ __device__ inline int pages_used(int length, int page_size) { return (length + page_size - 1) / page_size; }

__host__ __device__ inline bool page_ok(int page, int num_pages) { return 0 <= page && page < num_pages; }

// Whether entry j of a block table row keeps the rules: past the `used` pages (never read), or a page.
__host__ __device__ inline bool page_entry_ok(int page, int j, int used, int num_pages) {
  return j >= used || page_ok(page, num_pages);
}

// The safe copy of entry j: the caller's where it keeps the rules, else page 0.
__host__ __device__ inline int safe_page(int page, int j, int used, int num_pages) {
  return page_entry_ok(page, j, used, num_pages) ? page : 0;
}

// The safe copy of a paged sequence's length: clamped into [0, seqlen_kv], and 0 where its row names
// a bad page (so that nothing is read, even with no pages at all).
__host__ __device__ inline int safe_paged_length(int length, int seqlen_kv, bool bad_page) {
  return bad_page ? 0 : safe_seqlen_kv(length, seqlen_kv);
}

}  // namespace attn
