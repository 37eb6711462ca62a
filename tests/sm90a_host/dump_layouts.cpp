// Prints the index functions of kernels/sm90a/layouts.cuh as one JSON object, for
// tests/test_sm90a_layouts.py to check against its own statement of the PTX ISA's tables.
// Built with g++ -std=c++17 -I<kernels>; no CUDA needed.
#include <cstdio>
#include <initializer_list>

#include "sm90a/layouts.cuh"

using namespace attn::sm90a;

namespace {

constexpr Swizzle kModes[] = {Swizzle::kNone, Swizzle::k32B, Swizzle::k64B, Swizzle::k128B};
constexpr int kAccumulatorWidths[] = {64, 96, 128, 192, 256};
constexpr int kElemBytes = 2;
constexpr int kTileColumns = 128;  // a 128-element head dim: one to sixteen panels, by swizzle

// A comma before every element of a list but the first.
struct List {
  bool first = true;
  void next() {
    if (!first) std::printf(",");
    first = false;
  }
};

void key(List& object, const char* name) {
  object.next();
  std::printf("\"%s\":", name);
}

void key(List& object, int name) {
  object.next();
  std::printf("\"%d\":", name);
}

void accumulators(List& top) {
  key(top, "accumulator");
  List widths;
  std::printf("{");
  for (int n : kAccumulatorWidths) {
    key(widths, n);
    std::printf("{\"coord\":[");
    List coords;
    for (int thread = 0; thread < kWarpgroupThreads; ++thread)
      for (int reg = 0; reg < accumulator_registers(n); ++reg) {
        const RowCol at = accumulator_coord(thread, reg);
        coords.next();
        std::printf("[%d,%d]", at.row, at.col);
      }
    std::printf("],\"owner\":[");
    List owners;
    for (int row = 0; row < kWgmmaM; ++row)
      for (int col = 0; col < n; ++col) {
        const ThreadReg at = accumulator_owner(row, col);
        owners.next();
        std::printf("[%d,%d]", at.thread, at.reg);
      }
    std::printf("]}");
  }
  std::printf("}");
}

// fn(outer, reg, half) for every A-fragment element: four 32-bit registers of two halves each.
template <class Fn>
void each_fragment_element(int outer, Fn fn) {
  for (int i = 0; i < outer; ++i)
    for (int reg = 0; reg < 4; ++reg)
      for (int half = 0; half < 2; ++half) fn(i, reg, half);
}

void fragments(List& top) {
  key(top, "a_fragment");
  std::printf("[");
  List coords;
  each_fragment_element(kWarpgroupThreads, [&](int thread, int reg, int half) {
    const RowCol at = a_fragment_coord(thread, reg, half);
    coords.next();
    std::printf("[%d,%d]", at.row, at.col);
  });
  std::printf("]");
  key(top, "p_source");
  std::printf("{");
  List widths;
  for (int block_n : {64, 128, 176}) {
    key(widths, block_n);
    std::printf("[");
    List regs;
    each_fragment_element(block_n / kWgmmaK, [&](int k_step, int reg, int half) {
      regs.next();
      std::printf("%d", p_source_register(k_step, reg, half));
    });
    std::printf("]");
  }
  std::printf("}");
}

void swizzles(List& top) {
  key(top, "swizzle");
  std::printf("{");
  List modes;
  for (Swizzle s : kModes) {
    key(modes, swizzle_bits(s));
    std::printf("{\"span\":%u,\"atom\":%u,\"descriptor_code\":%u,\"address\":[", swizzle_span_bytes(s),
                swizzle_atom_bytes(s), descriptor_swizzle_code(s));
    List addresses;
    for (unsigned address = 0; address < 4096; address += 16) {
      addresses.next();
      std::printf("%u", swizzle_address(s, address));
    }
    std::printf("],\"tile\":{");
    List heights;
    for (int rows : {64, 128}) {
      key(heights, rows);
      std::printf("[");
      List offsets;
      for (int row = 0; row < rows; ++row)
        for (int col = 0; col < kTileColumns; ++col) {
          offsets.next();
          std::printf("%u", tile_offset(s, rows, row, col, kElemBytes));
        }
      std::printf("]");
    }
    std::printf("}}");
  }
  std::printf("}");
}

void fields(DescriptorFields f) {
  std::printf("{\"start\":%u,\"lbo\":%u,\"sbo\":%u,\"base\":%u,\"swizzle\":%d}", f.start_address,
              f.leading_byte_offset, f.stride_byte_offset, f.base_offset, swizzle_bits(f.swizzle));
}

// For each mode, major-ness, tile height and k-step: the tile descriptor, the k-step's descriptor,
// and the address the hardware reads for every (mn, k) of that instruction's operand.
void operands(List& top) {
  constexpr unsigned kTileAddress = 0x4000;  // any 1024-aligned shared-memory address
  key(top, "operands");
  std::printf("[");
  List cases;
  for (Swizzle s : kModes)
    for (bool mn_major : {false, true})
      for (int rows : {64, 128}) {
        const DescriptorFields tile = mn_major ? mn_major_tile_fields(s, kTileAddress, rows)
                                               : k_major_tile_fields(s, kTileAddress, rows);
        const int k_steps = mn_major ? rows / kWgmmaK : kTileColumns / kWgmmaK;
        const int mn_extent = mn_major ? kTileColumns : rows;
        for (int k_step = 0; k_step < k_steps; ++k_step) {
          const unsigned advance =
              mn_major ? mn_major_k_step_offset(s, k_step, kElemBytes) : k_major_k_step_offset(s, rows, k_step);
          const unsigned long long desc = descriptor_advance(encode_descriptor(tile), advance);
          cases.next();
          std::printf("{\"swizzle\":%d,\"mn_major\":%d,\"rows\":%d,\"k_step\":%d,\"tile_address\":%u,\"advance\":%u,"
                      "\"tile_fields\":",
                      swizzle_bits(s), mn_major ? 1 : 0, rows, k_step, kTileAddress, advance);
          fields(tile);
          std::printf(",\"descriptor\":%llu,\"address\":[", desc);
          List addresses;
          for (int mn = 0; mn < mn_extent; ++mn)
            for (int k = 0; k < kWgmmaK; ++k) {
              addresses.next();
              std::printf("%u", descriptor_element_address(decode_descriptor(desc), mn_major, mn, k, kElemBytes));
            }
          std::printf("]}");
        }
      }
  std::printf("]");
}

void descriptors(List& top) {
  key(top, "bits");
  std::printf("{\"start\":%d,\"lbo\":%d,\"sbo\":%d,\"base\":%d,\"swizzle\":%d}", kDescStartBit, kDescLeadingBit,
              kDescStrideBit, kDescBaseOffsetBit, kDescSwizzleBit);
  key(top, "encoded");
  std::printf("[");
  List cases;
  // Every field at zero, at one step, at its largest value, and mixed.
  const DescriptorFields samples[] = {
      {0, 0, 0, 0, Swizzle::kNone},          {16, 0, 0, 0, Swizzle::kNone},
      {0, 16, 0, 0, Swizzle::kNone},         {0, 0, 16, 0, Swizzle::kNone},
      {0, 0, 0, 1, Swizzle::k128B},          {0, 0, 0, 0, Swizzle::k32B},
      {0, 0, 0, 0, Swizzle::k64B},           {0, 0, 0, 0, Swizzle::k128B},
      {0x3FFF0, 0x3FFF0, 0x3FFF0, 7, Swizzle::k32B}, {0x1C400, 16, 1024, 0, Swizzle::k128B},
      {0x2A0, 0x800, 0x100, 5, Swizzle::k64B}};
  for (const DescriptorFields& f : samples) {
    const unsigned long long desc = encode_descriptor(f);
    cases.next();
    std::printf("{\"fields\":");
    fields(f);
    std::printf(",\"descriptor\":%llu,\"decoded\":", desc);
    fields(decode_descriptor(desc));
    std::printf("}");
  }
  std::printf("]");
  key(top, "base_offset");
  std::printf("[");
  List offsets;
  for (Swizzle s : kModes)
    for (unsigned address : {0u, 128u, 256u, 384u, 512u, 896u, 1024u, 1152u}) {
      offsets.next();
      std::printf("[%d,%u,%u]", swizzle_bits(s), address, descriptor_base_offset(s, address));
    }
  std::printf("]");
}

void schedules(List& top) {
  struct Case {
    int m_blocks, heads, batch, pairs_per_wave;
  };
  const Case cases[] = {{1, 1, 1, 1},  {8, 4, 2, 8},  {8, 4, 2, 3},   {5, 3, 7, 4},  {16, 2, 1, 1},
                        {9, 16, 4, 64}, {7, 5, 3, 100}, {12, 8, 3, 16}, {3, 1, 9, 2}};
  key(top, "schedule");
  std::printf("[");
  List list;
  for (const Case& c : cases) {
    list.next();
    std::printf("{\"m_blocks\":%d,\"heads\":%d,\"batch\":%d,\"pairs_per_wave\":%d,\"order\":[", c.m_blocks, c.heads,
                c.batch, c.pairs_per_wave);
    List items;
    for (int i = 0; i < num_work_tiles(c.m_blocks, c.heads, c.batch); ++i) {
      const WorkTile t = work_tile(i, c.m_blocks, c.heads, c.batch, c.pairs_per_wave);
      items.next();
      std::printf("[%d,%d,%d]", t.m_block, t.head, t.batch);
    }
    std::printf("]}");
  }
  std::printf("]");
  key(top, "l2_wave_pairs");
  std::printf("[");
  List sizes;
  const long long l2 = 50LL << 20;
  for (int seqlen : {1, 512, 8192, 65536, 1 << 20})
    for (int group : {1, 4}) {
      sizes.next();
      std::printf("[%lld,%d,%d,%d,%d,%d]", l2, seqlen, 128, kElemBytes, group,
                  l2_wave_pairs(l2, seqlen, 128, kElemBytes, group));
    }
  std::printf("]");
}

// Compile-time use: the functions are constexpr, which the device code relies on.
static_assert(accumulator_coord(127, 127).row == 63 && accumulator_coord(127, 127).col == 255, "last accumulator");
static_assert(encode_descriptor(k_major_tile_fields(Swizzle::k128B, 1024, 64)) ==
                  (64ull | 1ull << 16 | 64ull << 32 | 1ull << 62),
              "128B K-major descriptor");

}  // namespace

int main() {
  List top;
  std::printf("{");
  accumulators(top);
  fragments(top);
  swizzles(top);
  operands(top);
  descriptors(top);
  schedules(top);
  std::printf("}\n");
  return 0;
}
