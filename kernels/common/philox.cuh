// Counter-based dropout: Philox4x32-10 exactly as docs/semantics.md specifies, so every backend
// draws the same keep mask bit for bit.  Host-callable too, for tests.
#pragma once

namespace attn {

struct Philox4 { unsigned x, y, z, w; };

#define ATTN_HD __host__ __device__ __forceinline__

ATTN_HD void mulhilo32(unsigned a, unsigned b, unsigned& hi, unsigned& lo) {
  const unsigned long long product = static_cast<unsigned long long>(a) * b;
  hi = static_cast<unsigned>(product >> 32);
  lo = static_cast<unsigned>(product);
}

// Philox4x32 with 10 rounds; the key is bumped after each of the first nine rounds.
ATTN_HD Philox4 philox4x32_10(Philox4 c, unsigned k0, unsigned k1) {
  constexpr unsigned kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr unsigned kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    unsigned hi0, lo0, hi1, lo1;
    mulhilo32(kMul0, c.x, hi0, lo0);
    mulhilo32(kMul1, c.z, hi1, lo1);
    c = Philox4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    if (round < 9) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
  }
  return c;
}

// The four random words for columns 4*col4 .. 4*col4+3 of row i (batch b, query head h).
ATTN_HD Philox4 dropout_random4(unsigned long long seed, unsigned b, unsigned h, unsigned i, unsigned col4) {
  return philox4x32_10(Philox4{col4, i, h, b}, static_cast<unsigned>(seed & 0xFFFFFFFFull),
                       static_cast<unsigned>(seed >> 32));
}

ATTN_HD bool keep_word(unsigned r, unsigned threshold) { return r >= threshold; }

// The reference per-element decision: keep element (b, h, i, j) when its word is >= threshold,
// threshold = floor(dropout_p * 2^32).
ATTN_HD bool dropout_keep(unsigned long long seed, unsigned b, unsigned h, unsigned i, unsigned j,
                          unsigned threshold) {
  const Philox4 r = dropout_random4(seed, b, h, i, j / 4);
  const unsigned words[4] = {r.x, r.y, r.z, r.w};
  return keep_word(words[j % 4], threshold);
}

#undef ATTN_HD

}  // namespace attn
