// The device-side index check (kernels/common/index_check.cu) emulated on the host with the same rule
// functions (common/index_rules.cuh), one CTA's loops run in order.  Reads cases from stdin, one per
// line, and prints one result line each:
//   cu <batch> <total> <max_len> <batch + 1 values>        ->  <fault 0|1> <batch + 1 safe values>
//   paged <batch> <seqlen_kv> <page_size> <pages_per_seq> <row_stride> <num_pages> <batch lengths>
//         <batch * row_stride table entries>               ->  <status bits> <batch safe lengths> <safe table>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/index_rules.cuh"

using namespace attn;

int main() {
  char kind[16];
  while (std::scanf("%15s", kind) == 1) {
    if (std::strcmp(kind, "cu") == 0) {
      int batch, max_len;
      long long total;
      std::scanf("%d %lld %d", &batch, &total, &max_len);
      std::vector<int> cu(batch + 1);
      for (int& x : cu) std::scanf("%d", &x);
      bool bad = false;
      for (int i = 0; i <= batch; ++i) bad |= !cu_boundary_ok(cu.data(), i, batch, total, max_len);
      std::printf("%d", bad ? 1 : 0);
      for (int i = 0; i <= batch; ++i) std::printf(" %d", bad ? 0 : cu[i]);
      std::printf("\n");
    } else {
      int batch, seqlen_kv, page_size, pages_per_seq, stride, num_pages;
      std::scanf("%d %d %d %d %d %d", &batch, &seqlen_kv, &page_size, &pages_per_seq, &stride, &num_pages);
      std::vector<int> lengths(batch), table(static_cast<size_t>(batch) * stride), safe_table(table.size());
      for (int& x : lengths) std::scanf("%d", &x);
      for (int& x : table) std::scanf("%d", &x);
      unsigned status = 0;
      std::vector<int> safe_lengths(batch);
      for (int s = 0; s < batch; ++s) {
        const int used = pages_used(safe_seqlen_kv(lengths[s], seqlen_kv), page_size);
        bool bad_page = false;
        for (int j = 0; j < pages_per_seq; ++j) {
          const size_t at = static_cast<size_t>(s) * stride + j;
          safe_table[at] = safe_page(table[at], j, used, num_pages);
          bad_page |= !page_entry_ok(table[at], j, used, num_pages);
        }
        safe_lengths[s] = safe_paged_length(lengths[s], seqlen_kv, bad_page);
        if (!seqlen_kv_ok(lengths[s], seqlen_kv)) status |= kFaultSeqlensKv;
        if (bad_page) status |= kFaultBlockTable;
      }
      std::printf("%u", status);
      for (int x : safe_lengths) std::printf(" %d", x);
      for (int s = 0; s < batch; ++s)
        for (int j = 0; j < pages_per_seq; ++j) std::printf(" %d", safe_table[static_cast<size_t>(s) * stride + j]);
      std::printf("\n");
    }
  }
  return 0;
}
