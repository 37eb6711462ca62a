// Prints the index math of the sm_90a forward kernel (kernels/sm90a/fwd_layout.cuh, fragment.cuh)
// as JSON, built with g++ like dump_layouts.cpp, for tests/test_sm90a_forward.py:
//   "fragment": per thread and register, the (query, key) offsets WgmmaRowsC gives and
//     accumulator_coord's (row, col); the two softmax rows;
//   "pipeline": stage, consumer and producer parities of iterations 0..15 for 1..4 stages;
//   "configs": per (block_m, block_n, head_dim, stages) the layout's sizes and offsets, the address
//     every wgmma operand element is read from (descriptor_element_address through the kernel's
//     descriptors and k-step offsets) and where the output is staged / stored from.
#include <cstdio>
#include <string>

#include "sm90a/fragment.cuh"
#include "sm90a/fwd_layout.cuh"

using namespace attn::sm90a;

namespace {

void list_begin(const char* name, bool& first) {
  std::printf("%s\"%s\": [", first ? "" : ", ", name);
  first = false;
}

void fragment() {
  std::printf("\"fragment\": {\"n\": 128, \"entries\": [");
  bool first = true;
  for (int thread = 0; thread < kWarpgroupThreads; ++thread) {
    const WgmmaRowsC at = WgmmaRowsC::at(thread, 1000, 5000);
    for (int nt = 0; nt < 128 / 8; ++nt)
      for (int e = 0; e < 4; ++e) {
        const RowCol rc = accumulator_coord(thread, accumulator_register(nt, e));
        std::printf("%s[%d, %d, %d, %d, %d, %d, %d]", first ? "" : ", ", thread, nt, e, at.query(0, nt, e) - 1000,
                    at.key(0, nt, e) - 5000, rc.row, rc.col);
        first = false;
      }
  }
  std::printf("], \"softmax_rows\": [");
  for (int thread = 0; thread < kWarpgroupThreads; ++thread) {
    const WgmmaRowsC at = WgmmaRowsC::at(thread, 0, 0);
    std::printf("%s[%d, %d]", thread ? ", " : "", softmax_row_query(at, 0), softmax_row_query(at, 1));
  }
  std::printf("]}");
}

void pipeline() {
  std::printf("\"pipeline\": [");
  bool first = true;
  for (int stages = 1; stages <= 4; ++stages)
    for (int i = 0; i < 16; ++i) {
      const PipelineState s = pipeline_state(i, stages);
      std::printf("%s[%d, %d, %d, %u, %u]", first ? "" : ", ", stages, i, s.stage, consumer_wait_parity(s),
                  producer_wait_parity(s));
      first = false;
    }
  std::printf("]");
}

// Hardware read address of element (mn, k) (k within the whole K extent) of an operand whose k-step
// kk starts at `step_offset(kk)` from `base` with descriptor fields `fields_of(start)`.
template <class Fields, class Offset>
void operand(const char* name, bool& first, bool mn_major, int mn_extent, int k_extent, Fields fields_of,
             Offset step_offset) {
  list_begin(name, first);
  bool first_element = true;
  for (int mn = 0; mn < mn_extent; ++mn)
    for (int k = 0; k < k_extent; ++k) {
      const int kk = k / kWgmmaK;
      const DescriptorFields f = fields_of(step_offset(kk));
      std::printf("%s%u", first_element ? "" : ", ",
                  descriptor_element_address(f, mn_major, mn, k % kWgmmaK, kTileElemBytes));
      first_element = false;
    }
  std::printf("]");
}

template <int BlockM, int BlockN, int HeadDim, int Stages, int HeadDimV = HeadDim>
void config(bool comma) {
  using L = FwdLayout<BlockM, BlockN, HeadDim, Stages, HeadDimV>;
  std::printf("%s{\"block_m\": %d, \"block_n\": %d, \"head_dim\": %d, \"stages\": %d, \"head_dim_v\": %d, ",
              comma ? ", " : "", BlockM, BlockN, HeadDim, Stages, HeadDimV);
  std::printf("\"bytes\": %u, \"q\": %u, \"k\": %u, \"v\": %u, \"barriers\": %u, \"num_barriers\": %d, "
              "\"q_bytes\": %u, \"k_tile_bytes\": %u, \"v_tile_bytes\": %u, \"panels\": %d, \"v_panels\": %d, "
              "\"work_slot\": %u, ",
              L::kBytes, L::kQ, L::kK, L::kV, L::kBarriers, L::kNumBarriers, L::kQBytes, L::kKTileBytes, L::kVTileBytes,
              L::kPanels, L::kVPanels, L::kWorkSlot);
  std::printf("\"k_tiles\": [");
  for (int s = 0; s < Stages; ++s) std::printf("%s%u", s ? ", " : "", L::k_tile(s));
  std::printf("], \"v_tiles\": [");
  for (int s = 0; s < Stages; ++s) std::printf("%s%u", s ? ", " : "", L::v_tile(s));
  std::printf("], \"barrier_index\": [%d, %d", L::q_full(), L::q_empty());
  for (int s = 0; s < Stages; ++s) std::printf(", %d, %d, %d, %d", L::k_full(s), L::k_empty(s), L::v_full(s), L::v_empty(s));
  std::printf("], \"q_panels\": [");
  for (int p = 0; p < L::kPanels; ++p) std::printf("%s[%u, %d]", p ? ", " : "", L::panel(BlockM, p), L::panel_column(p));
  std::printf("], \"kv_panels\": [");
  for (int p = 0; p < L::kPanels; ++p) std::printf("%s%u", p ? ", " : "", L::panel(BlockN, p));
  std::printf("], \"v_box_panels\": [");
  for (int p = 0; p < L::kVPanels; ++p) std::printf("%s%u", p ? ", " : "", L::panel(BlockN, p));
  std::printf("], ");
  bool first = true;
  // A of S = Q K^T for each consumer: (query row within the consumer, head-dim column).
  for (int consumer = 0; consumer < L::kConsumers; ++consumer) {
    const std::string name = "q_read_" + std::to_string(consumer);
    operand(name.c_str(), first, false, kConsumerRows, HeadDim,
            [](unsigned start) { return k_major_tile_fields(kTileSwizzle, start, BlockM); },
            [consumer](int kk) { return L::q_k_step(consumer, kk); });
  }
  // B of S = Q K^T: (key row, head-dim column), from the K tile's start.
  operand("k_read", first, false, BlockN, HeadDim,
          [](unsigned start) { return k_major_tile_fields(kTileSwizzle, start, BlockN); },
          [](int kk) { return L::k_k_step(kk); });
  // B of O += P V, MN-major: listed as (head-dim column n, key k), from the V tile's start.
  operand("v_read", first, true, HeadDimV, BlockN,
          [](unsigned start) { return mn_major_tile_fields(kTileSwizzle, start, BlockN); },
          [](int kk) { return L::v_k_step(kk); });
  for (int consumer = 0; consumer < L::kConsumers; ++consumer) {
    const std::string name = "staging_" + std::to_string(consumer);
    list_begin(name.c_str(), first);
    for (int row = 0; row < kConsumerRows; ++row)
      for (int col = 0; col < HeadDimV; ++col)
        std::printf("%s%u", row || col ? ", " : "", L::staging(consumer, row, col));
    std::printf("]");
    const std::string source = "store_source_" + std::to_string(consumer);
    list_begin(source.c_str(), first);
    for (int p = 0; p < L::kVPanels; ++p) std::printf("%s%u", p ? ", " : "", L::store_source(consumer, p));
    std::printf("]");
  }
  std::printf("}");
}

}  // namespace

int main() {
  std::printf("{");
  fragment();
  std::printf(", ");
  pipeline();
  std::printf(", \"configs\": [");
  config<128, 128, 64, 2>(false);
  config<128, 128, 128, 2>(true);
  config<128, 64, 256, 2>(true);
  config<128, 128, 128, 3>(true);
  config<128, 64, 64, 1>(true);
  config<192, 128, 64, 2>(true);
  config<128, 176, 128, 2>(true);
  config<128, 80, 256, 2>(true);
  config<128, 160, 64, 2>(true);
  config<128, 112, 192, 2>(true);
  config<128, 128, 192, 2, 128>(true);
  std::printf("]}\n");
  return 0;
}
