// The sm_90a forward epilogue, per consumer warpgroup: O times the softmax's per-row factors,
// staged in the warpgroup's own rows of the Q tile (fwd_layout.cuh: staging), then TMA stores of
// (64 columns x 64 rows) boxes, which clip the rows past seqlen_q; or (fwd_config.cuh kDirectOutput:
// the persistent grid, varlen) stored from the registers, two elements per store, rows past the
// sequence skipped.  The LSE by the shared epilogue's store_lse.
#pragma once

#include "common/epilogue.cuh"
#include "sm90a/fwd_mainloop.cuh"

namespace attn {
namespace sm90a {

// Consumer `consumer`'s 64 x kHeadDimV output, rows row_first.. of head h of sequence b.  Called once
// the consumer's last S = Q K^T has completed (its Q rows are free) and after the Q load completed.
__device__ __forceinline__ void store_output_staged(const FwdParams& p, const SharedTiles& smem, const TileWork& w,
                                                    int consumer, int thread, int row_first, int seqlen_q,
                                                    const float (&o)[kHeadDimV / 2], const float (&out_scale)[2]) {
#pragma unroll
  for (int nt = 0; nt < kOTiles; ++nt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int reg = accumulator_register(nt, 2 * half);
      const RowCol at = accumulator_coord(thread, reg);
      const float f = out_scale[half];
      *reinterpret_cast<unsigned*>(smem.bytes(Layout::staging(consumer, at.row, at.col))) =
          pack2_out(o[reg] * f, o[reg + 1] * f);
    }
  fence_proxy_async_shared_cta();  // the staged bytes, visible to the TMA store (async proxy) ...
  named_barrier_sync(kFirstConsumerBarrier + consumer, kWarpgroupThreads);  // ... from every thread
  if (thread == 0 && row_first < seqlen_q) {
    const TmaDescriptor* o_map = tensor_map(p.o_map);
#pragma unroll
    for (int panel = 0; panel < Layout::kVPanels; ++panel)
      tma_store_4d(o_map, smem.bytes(Layout::store_source(consumer, panel)), Layout::panel_column(panel), row_first,
                   w.h, w.b);
    bulk_commit_group();
    bulk_wait_group_read<0>();  // the staging rows (and the CTA's shared memory) must outlive the store's reads
  }
  // Every consumer thread releases Q's buffer and the work slot it read (thread 0 once its store has
  // read the staging rows): each thread's arrive orders its own reads before the next tile's writes.
  if constexpr (kHasProducer) mbarrier_arrive(smem.barrier(Layout::q_empty()));  // (rung wgmma has no barriers)
}

// The same rows stored from the accumulator registers: each thread's two rows (accumulator_coord),
// each n8 column block's two elements as one 4-byte store (a quad of threads covers 16 bytes).  Q's
// buffer was released after the last S = Q K^T (fwd_mainloop.cuh release_q_after_last_qk).
__device__ __forceinline__ void store_output_direct(const FwdParams& p, const TileWork& w, const Sequence& seq,
                                                    int thread, int row_first, const float (&o)[kHeadDimV / 2],
                                                    const float (&out_scale)[2]) {
  out_t* out = seq_base<out_t>(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, w.b, w.h, seq.q_start);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row_first + accumulator_coord(thread, accumulator_register(0, 2 * half)).row;
    if (row >= seq.seqlen_q) continue;
    out_t* dst = out + static_cast<long long>(row) * p.o_row_stride;
    const float f = out_scale[half];
#pragma unroll
    for (int nt = 0; nt < kHeadDimVData / 8; ++nt) {  // the padded columns (head dim 96) are not stored
      const int reg = accumulator_register(nt, 2 * half);
      *reinterpret_cast<unsigned*>(dst + accumulator_coord(thread, reg).col) = pack2_out(o[reg] * f, o[reg + 1] * f);
    }
  }
}

__device__ __forceinline__ void store_output(const FwdParams& p, const SharedTiles& smem, const TileWork& w,
                                             const Sequence& seq, int consumer, int thread, int row_first,
                                             const float (&o)[kHeadDimV / 2], const float (&out_scale)[2]) {
  if constexpr (kDirectOutput)
    store_output_direct(p, w, seq, thread, row_first, o, out_scale);
  else
    store_output_staged(p, smem, w, consumer, thread, row_first, seq.seqlen_q, o, out_scale);
}

// This thread's two rows' LSE (one thread of each quad writes; rows past seqlen_q are skipped).
__device__ __forceinline__ void store_row_lse(const FwdParams& p, const TileWork& w, const WgmmaRowsC& rows_at,
                                              int thread, const Sequence& seq, const float (&lse)[2]) {
  if (p.lse == nullptr || thread % 4 != 0) return;
#if IS_VARLEN
  float* lse_seq = static_cast<float*>(p.lse) + seq.q_start * p.lse_row_stride + w.h * p.lse_head_stride;
#else
  float* lse_seq = static_cast<float*>(p.lse) + w.b * p.lse_batch_stride + w.h * p.lse_head_stride;
#endif
  const int seqlen_q = seq.seqlen_q;
  const int rows[2] = {softmax_row_query(rows_at, 0), softmax_row_query(rows_at, 1)};
  store_lse(lse_seq, p.lse_row_stride, rows, lse, seqlen_q);
}

}  // namespace sm90a
}  // namespace attn
