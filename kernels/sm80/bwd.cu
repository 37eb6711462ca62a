// FlashAttention-2 style backward pass for sm_80 .. sm_90 (warp-level mma.sync m16n8k16, fp32
// accumulation).  Four kernels, launched in this order on one stream (backends/nvrtc/sm80/runners.py):
//
//   attn_bwd_preprocess_kernel   delta_i = rowsum(dO_i * O_i) into the fp32 workspace; zeroes the fp32
//                                dQ accumulator (when there is one)
//   attn_bwd_kernel              one CTA per (key tile, kv head, sequence): dK and dV of its keys,
//                                summed over the query heads of the GQA group, in registers; with
//                                IS_DETERMINISTIC=0 it also adds dS K into the dQ accumulator (atomics)
//   attn_bwd_dq_kernel           (IS_DETERMINISTIC=1 only) one CTA per (query tile, head, sequence):
//                                dQ in registers over the visible key tiles, written once: no atomics,
//                                the same bits on every run
//   attn_bwd_dq_convert_kernel   (IS_DETERMINISTIC=0 only) dQ = scale * accumulator, in the input dtype
//
// attn_bwd_kernel works on transposed scores, with warps in pairs: each pair owns a slab of
// BLOCK_N / (NUM_WARPS / 2) keys (16 or 32: one or two m16 rows of S^T = K Q^T and dP^T = V dO^T);
// one warp of a pair computes them for the first BLOCK_M / 2 query columns, the other for the rest,
// and each keeps half of the dK / dV columns.  P^T and dS^T go through shared memory between the
// two.  P is recomputed from the forward's LSE; a row whose LSE is -inf (no visible key) gets P = 0
// and so zero gradients.
//
// Launch contract: backends/nvrtc/sm80/tiles.py (grids, shared memory) and backends/nvrtc/sm80/runners.py
// (workspace layout).  Semantics: docs/semantics.md.  The runtime prepends `struct BwdParams`.

#include "common/types.cuh"
#include "sm80/mma.cuh"
#include "common/philox.cuh"
#include "sm80/smem.cuh"
#include "common/problem.cuh"
#include "common/scheduler.cuh"

#include "common/features.cuh"
#ifndef IS_DETERMINISTIC
#define IS_DETERMINISTIC 0
#endif
#ifndef KV_STAGES
#define KV_STAGES 1
#endif
#if IS_PAGED
#error "the backward pass has no paged-KV variant"
#endif
#if IS_DETERMINISTIC && (!defined(DQ_BLOCK_M) || !defined(DQ_BLOCK_N) || !defined(DQ_NUM_WARPS))
#error "IS_DETERMINISTIC needs DQ_BLOCK_M, DQ_BLOCK_N and DQ_NUM_WARPS"
#endif

namespace attn {
namespace sm80 {
namespace bwd {

constexpr int kHeadDim = HEAD_DIM;
constexpr int kHeadDimV = HEAD_DIM_V;
static_assert(kHeadDim % 8 == 0 && kHeadDim >= 8 && kHeadDim <= 256, "HEAD_DIM: multiple of 8, <= 256");
static_assert(kHeadDimV % 8 == 0 && kHeadDimV >= 8 && kHeadDimV <= 256, "HEAD_DIM_V: multiple of 8, <= 256");

// log2-unit LSE of a row: +inf for a row that has no visible key (lse = -inf) or does not exist,
// so exp2(score - lse) = 0 there.
__device__ __forceinline__ float lse_log2(const float* lse, long long row_stride, int row, int seqlen_q) {
  if (row >= seqlen_q) return __int_as_float(0x7f800000);
  const float l = lse[row * row_stride];
  return l == neg_inf() ? __int_as_float(0x7f800000) : l * kLog2e;
}

// The same from a raw LSE value (rows past the sequence hold 0: their Q and dO rows are zero, so
// whatever P they get contributes nothing).
__device__ __forceinline__ float lse_log2(float l) {
  return l == neg_inf() ? __int_as_float(0x7f800000) : l * kLog2e;
}

// P and dS of one score element.  x: score (log2 units, or raw when !kScoresInLog2), dp: dO . v,
// keep: the dropout decision.  Returns dS (times the softcap factor); `pz` gets P * Z.
__device__ __forceinline__ float grad_score(float x, float dp, float lse_l2, float delta, float dsoft, bool keep,
                                            float dropout_scale, float scale_l2, float& pz) {
  const float prob = fast_exp2(kScoresInLog2 ? x - lse_l2 : fmaf(x, scale_l2, -lse_l2));
  float dpz = dp;
  pz = prob;
#if HAS_DROPOUT
  pz = keep ? prob * dropout_scale : 0.f;
  dpz = keep ? dp * dropout_scale : 0.f;
#endif
  (void)keep; (void)dropout_scale; (void)dsoft;
  float ds = prob * (dpz - delta);
#if HAS_SOFTCAP
  ds *= dsoft;
#endif
  return ds;
}

// ---------------------------------------------------------------------------------------------
// dK / dV kernel configuration.
// ---------------------------------------------------------------------------------------------
namespace kv {

constexpr int kBlockM = BLOCK_M;  // query rows per step
constexpr int kBlockN = BLOCK_N;  // keys per CTA
constexpr int kNumWarps = NUM_WARPS;
constexpr int kThreads = kNumWarps * 32;
constexpr int kDSplit = 2;                         // warps sharing a key slab
constexpr int kKeyGroups = kNumWarps / kDSplit;    // key slabs
constexpr int kKeyRows = kBlockN / kKeyGroups;     // keys per slab
constexpr int kKeyMT = kKeyRows / 16;              // m16 tiles of S^T per warp
static_assert(kNumWarps % kDSplit == 0 && kBlockN % kKeyGroups == 0 && (kKeyRows == 16 || kKeyRows == 32),
              "BLOCK_N / (NUM_WARPS / 2): 16 or 32 keys per pair of warps");
constexpr int kDimQK = round_up(kHeadDim, 16 * kDSplit);  // padding columns hold zeros
constexpr int kDimV = round_up(kHeadDimV, 16 * kDSplit);
constexpr int kQCols = kBlockM / kDSplit;    // query columns of S^T per warp
static_assert(kQCols % 16 == 0, "BLOCK_M / 2: a multiple of 16");
constexpr int kNT = kQCols / 8;              // n8 tiles of S^T per warp
constexpr int kKS = kQCols / 16;             // k16 steps of the packed P^T / dS^T fragments
constexpr int kKTiles = kDimQK / 8 / kDSplit;  // n8 tiles of dK per warp
constexpr int kVTiles = kDimV / 8 / kDSplit;   // n8 tiles of dV per warp
constexpr int kStages = KV_STAGES;  // buffers of the query-side tiles (2: the next step loads during this one)
static_assert(kStages == 1 || kStages == 2, "KV_STAGES: 1 or 2");

using LayoutQK = RowLayout<kDimQK>;
using LayoutV = RowLayout<kDimV>;
using LayoutS = RowLayout<kBlockM>;  // P^T, dS^T: [key][query]

constexpr int kSmemK = kBlockN * LayoutQK::kStride;
constexpr int kSmemV = kBlockN * LayoutV::kStride;
constexpr int kSmemQ = kBlockM * LayoutQK::kStride;
constexpr int kSmemDO = kBlockM * LayoutV::kStride;
constexpr int kSmemS = kBlockN * LayoutS::kStride;
constexpr int kSmemElems = kSmemK + kSmemV + kStages * (kSmemQ + kSmemDO) + 2 * kSmemS;
constexpr int kSmemBytes = kSmemElems * kElemBytes + kStages * 2 * kBlockM * 4;  // + lse and delta rows (fp32)
// Cross-check of the Python formula (backends/nvrtc/sm80/tiles.py:backward_shared_memory_bytes), on every compile.
#ifndef ATTN_EXPECTED_BWD_SMEM_BYTES
#error "ATTN_EXPECTED_BWD_SMEM_BYTES: the launcher's shared-memory size must be passed (backends/nvrtc/generation.py)"
#endif
static_assert(kSmemBytes == ATTN_EXPECTED_BWD_SMEM_BYTES, "sm80 tiles.backward_shared_memory_bytes disagrees");

// dQ from this CTA's dS: units of kDqMT m16 tiles of query rows x kDGroup n16 pairs of head dims,
// spread over the warps; 2 x 2 units load 4 fragments per 8 mma (1 x 4 units: 5).
constexpr int kMq = kBlockM / 16;
constexpr int kDPairs = round_up(kHeadDim, 16) / 16;
constexpr int kDqMT = kMq % 2 == 0 ? 2 : 1;
constexpr int kDGroupWant = kDPairs * kMq / (kNumWarps * kDqMT);
constexpr int kDGroup = kDGroupWant < 1 ? 1 : (kDGroupWant > 2 ? 2 : (kDGroupWant > kDPairs ? kDPairs : kDGroupWant));
constexpr int kDGroups = ceil_div(kDPairs, kDGroup);
constexpr int kDqUnits = kMq / kDqMT * kDGroups;

// Keep bits of the 4 elements of each S^T tile (rows = keys g, g+8; columns = queries 2t, 2t+1).
// The four threads with the same (g / 4, t) hold keys of the same two 4-key Philox groups at the
// same two queries: thread r = g % 4 draws call r (key group g/4 + 2 (r / 2), query 2t + r % 2) and
// the quad of threads all-gathers the four nibbles; element e then reads call e at word r.
__device__ __forceinline__ void dropout_bits_t(unsigned (&bits)[kNT], const DropoutKeys& d, unsigned b, unsigned h,
                                               int key_base, int query_base, int lane) {
  const int g = lane >> 2, t = lane & 3, r = g & 3, c = g >> 2;
  const unsigned key_group = static_cast<unsigned>(key_base / 4 + c + 2 * (r >> 1));
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const unsigned query = static_cast<unsigned>(query_base + nt * 8 + 2 * t + (r & 1));
    unsigned x = keep_nibble(dropout_random4(d.seed, b, h, query, key_group), d.threshold) << (4 * r);
    x |= __shfl_xor_sync(0xffffffffu, x, 4);
    x |= __shfl_xor_sync(0xffffffffu, x, 8);
    unsigned mine = 0;
#pragma unroll
    for (int e = 0; e < 4; ++e) mine |= ((x >> (4 * e + r)) & 1u) << e;
    bits[nt] = mine;
  }
}

}  // namespace kv

}  // namespace bwd
}  // namespace sm80
}  // namespace attn

// ---------------------------------------------------------------------------------------------
// Preprocess: delta = rowsum(dO * O) (fp32), and zero the dQ accumulator.
// grid = (ceil(max seqlen_q / 64), heads_q, batch), block = 128.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(128) attn_bwd_preprocess_kernel(const BwdParams p) {
  using namespace attn;
  using namespace attn::sm80::bwd;
  constexpr int kRows = 64, kThreads = 128;
  const int m0 = blockIdx.x * kRows, h = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  if (m0 >= seq.seqlen_q) return;
  const int tid = threadIdx.x, lane8 = tid & 7;
  const elem_t* o = seq_base<const elem_t>(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, b, h, seq.q_start);
  const elem_t* dout = seq_base<const elem_t>(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, b, h,
                                              seq.q_start);
  float* delta = seq_base<float>(p.delta, p.delta_batch_stride, 1, p.delta_head_stride, b, h, seq.q_start);
  constexpr int kChunks = kHeadDimV / kElemsPerChunk;
  for (int r = tid >> 3; r < kRows; r += kThreads / 8) {
    const int row = m0 + r;
    float acc = 0.f;
    if (row < seq.seqlen_q) {
      for (int c = lane8; c < kChunks; c += 8) {
        const uint4 x = *reinterpret_cast<const uint4*>(o + row * p.o_row_stride + c * kElemsPerChunk);
        const uint4 y = *reinterpret_cast<const uint4*>(dout + row * p.do_row_stride + c * kElemsPerChunk);
        const unsigned xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float_pair a = unpack2(xs[i]), d = unpack2(ys[i]);
          acc = fmaf(a.lo, d.lo, acc);
          acc = fmaf(a.hi, d.hi, acc);
        }
      }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    acc += __shfl_xor_sync(0xffffffffu, acc, 4);
    if (lane8 == 0 && row < seq.seqlen_q) delta[row] = acc;
  }
  if (p.dq_accum != nullptr) {
    float* dqa =
        seq_base<float>(p.dq_accum, p.dqa_batch_stride, p.dqa_row_stride, p.dqa_head_stride, b, h, seq.q_start);
    constexpr int kVecs = kHeadDim / 4;
    for (int idx = tid; idx < kRows * kVecs; idx += kThreads) {
      const int row = m0 + idx / kVecs, v = idx % kVecs;
      if (row < seq.seqlen_q) {
        *reinterpret_cast<float4*>(dqa + row * p.dqa_row_stride + v * 4) = float4{0.f, 0.f, 0.f, 0.f};
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dK, dV (and, unless deterministic, dQ through fp32 atomics).
// grid = (ceil(max seqlen_kv / BLOCK_N), heads_kv, batch), block = NUM_WARPS * 32,
// dynamic shared memory = kv::kSmemBytes.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(NUM_WARPS * 32) attn_bwd_kernel(const BwdParams p) {
  using namespace attn;
  using namespace attn::sm80;
  using namespace attn::sm80::bwd;
  using namespace attn::sm80::bwd::kv;

  const TileCoord work = in_order_tile();
  const int n_block = work.block, hkv = work.head, b = work.batch;
  const Sequence seq = sequence_of(p, b);
  const int n0 = n_block * kBlockN;
  if (n0 >= seq.seqlen_kv) return;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int key_group = warp % kKeyGroups, half = warp / kKeyGroups;
  const int key_row0 = key_group * kKeyRows;  // this warp's first key within the tile
  const int q_col0 = half * kQCols;        // this warp's first query column within a query tile
  const int g = lane >> 2, t = lane & 3;
  const int group = static_cast<int>(p.heads_q / p.heads_kv);

  const MaskInfo mask = mask_of(p, seq);
  const int key_last = imin(n0 + kBlockN, seq.seqlen_kv) - 1;
  const QueryTileRange qtiles = query_tile_range(n0, key_last, seq.seqlen_q, kBlockM, mask);
  const int num_q_tiles = qtiles.count() > 0 ? qtiles.count() : 0;
  const int num_steps = num_q_tiles * group;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  // K | V | Q x stages | dO x stages | dS^T | P^T | (lse, delta) x stages
  elem_t* smem_k = reinterpret_cast<elem_t*>(smem_raw);
  elem_t* smem_v = smem_k + kSmemK;
  elem_t* smem_q = smem_v + kSmemV;
  elem_t* smem_do = smem_q + kStages * kSmemQ;
  elem_t* smem_ds = smem_do + kStages * kSmemDO;
  elem_t* smem_p = smem_ds + kSmemS;
  float* smem_rows = reinterpret_cast<float*>(smem_p + kSmemS);  // [stage][lse | delta][kBlockM]
  const unsigned k_u32 = smem_u32(smem_k), v_u32 = smem_u32(smem_v);
  const unsigned ds_u32 = smem_u32(smem_ds), p_u32 = smem_u32(smem_p);

  // K and V of this tile, once.
  const elem_t* k =
      seq_base<const elem_t>(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, hkv, seq.kv_start);
  const elem_t* v =
      seq_base<const elem_t>(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, hkv, seq.kv_start);
  RowLoader<kThreads, kBlockN, kHeadDim, LayoutQK>::load_strided(smem_k, k + n0 * p.k_row_stride, p.k_row_stride,
                                                                 seq.seqlen_kv - n0);
  RowLoader<kThreads, kBlockN, kHeadDimV, LayoutV>::load_strided(smem_v, v + n0 * p.v_row_stride, p.v_row_stride,
                                                                 seq.seqlen_kv - n0);

  // Starts loading the query-side tiles of step `step` into buffer `buf`: Q, dO, raw LSE and delta
  // (rows past the sequence are zero-filled).
  auto load_step = [&](int step, int buf) {
    const int h = hkv * group + step / num_q_tiles;
    const int m0 = (qtiles.begin + step % num_q_tiles) * kBlockM;
    const elem_t* q = seq_base<const elem_t>(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, b, h, seq.q_start);
    const elem_t* dout = seq_base<const elem_t>(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, b, h,
                                                seq.q_start);
    RowLoader<kThreads, kBlockM, kHeadDim, LayoutQK>::load_strided(smem_q + buf * kSmemQ, q + m0 * p.q_row_stride,
                                                                   p.q_row_stride, seq.seqlen_q - m0);
    RowLoader<kThreads, kBlockM, kHeadDimV, LayoutV>::load_strided(smem_do + buf * kSmemDO, dout + m0 * p.do_row_stride,
                                                                   p.do_row_stride, seq.seqlen_q - m0);
    const int tid = threadIdx.x;
    if (tid < kBlockM) {
      const float* lse = seq_base<const float>(p.lse, p.lse_batch_stride, p.lse_row_stride, p.lse_head_stride, b, h,
                                               seq.q_start);
      const float* delta = seq_base<const float>(p.delta, p.delta_batch_stride, 1, p.delta_head_stride, b, h,
                                                 seq.q_start);
      const int row = m0 + tid;
      const bool valid = row < seq.seqlen_q;
      const unsigned dst = smem_u32(smem_rows + buf * 2 * kBlockM + tid);
      cp_async_4(dst, valid ? lse + row * p.lse_row_stride : lse, valid ? 4 : 0);
      cp_async_4(dst + kBlockM * 4, valid ? delta + row : delta, valid ? 4 : 0);
    }
  };
  if (num_steps > 0) load_step(0, 0);
  cp_async_commit();

  float acc_dk[kKeyMT][kKTiles][4], acc_dv[kKeyMT][kVTiles][4];
  zero(acc_dk);
  zero(acc_dv);
  const float scale_l2 = static_cast<float>(p.scale) * kLog2e;
#if HAS_DROPOUT
  const DropoutKeys drop = dropout_keys(p);
#endif

  for (int step = 0; step < num_steps; ++step) {
    const int h = hkv * group + step / num_q_tiles;
    const int m0 = (qtiles.begin + step % num_q_tiles) * kBlockM;
    const int row_last = imin(m0 + kBlockM, seq.seqlen_q) - 1;
    const bool needs_mask = tile_needs_mask(n_block, kBlockN, m0, row_last, mask);
    const ScoreMods mods = score_mods(p, b, h);

    const int buf = kStages == 2 ? (step & 1) : 0;
    const unsigned q_u32 = smem_u32(smem_q + buf * kSmemQ), do_u32 = smem_u32(smem_do + buf * kSmemDO);
    const float* smem_lse = smem_rows + buf * 2 * kBlockM;
    const float* smem_delta = smem_lse + kBlockM;

    cp_async_wait<0>();  // Q, dO, LSE, delta (and K, V) landed ...
    __syncthreads();     // ... for every thread, and every warp is done with the step before
    if constexpr (kStages == 2) {
      if (step + 1 < num_steps) load_step(step + 1, buf ^ 1);
      cp_async_commit();
    }

    // dP^T = V dO^T and S^T = K Q^T for this warp's keys x kQCols queries.
    float dpt[kKeyMT][kNT][4], st[kKeyMT][kNT][4];
    zero(dpt);
    gemm_ss<kKeyMT, kNT, kDimV / 16>(dpt, AFromRows<LayoutV>(v_u32, key_row0, lane),
                                     BFromRows<LayoutV>(do_u32, q_col0, lane));
    zero(st);
    gemm_ss<kKeyMT, kNT, kDimQK / 16>(st, AFromRows<LayoutQK>(k_u32, key_row0, lane),
                                      BFromRows<LayoutQK>(q_u32, q_col0, lane));

#if HAS_DROPOUT
    unsigned keep_bits[kKeyMT][kNT];
#pragma unroll
    for (int mt = 0; mt < kKeyMT; ++mt)
      dropout_bits_t(keep_bits[mt], drop, static_cast<unsigned>(b), static_cast<unsigned>(h),
                     n0 + key_row0 + 16 * mt, m0 + q_col0, lane);
#endif
    // Elementwise: S^T -> P^T * Z (into st), dS^T (into dpt); n-tiles outermost, so each query's LSE
    // and delta are read once for both key m-tiles.
    const KeyRowsC at{n0 + key_row0, m0, q_col0, g, t};
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const int qc = q_col0 + nt * 8 + 2 * t;  // query column within the tile (and its +1)
      const float lse_pair[2] = {lse_log2(smem_lse[qc]), lse_log2(smem_lse[qc + 1])};
      const float delta_pair[2] = {smem_delta[qc], smem_delta[qc + 1]};
#pragma unroll
      for (int mt = 0; mt < kKeyMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int query = at.query(mt, nt, e), key = at.key(mt, nt, e);
          float dsoft = 1.f;
          float x = st[mt][nt][e];
          modify_score(x, query, key, needs_mask, mods, mask, dsoft);
          bool keep = true;
#if HAS_DROPOUT
          keep = (keep_bits[mt][nt] >> e) & 1u;
          const float dscale = drop.scale;
#else
          const float dscale = 1.f;
#endif
          float pz;
          dpt[mt][nt][e] = grad_score(x, dpt[mt][nt][e], lse_pair[e & 1], delta_pair[e & 1], dsoft, keep, dscale,
                                      scale_l2, pz);
          st[mt][nt][e] = pz;
        }
    }
    {
      // The two warps of a slab hold halves of its query columns: both go through shared memory.
      unsigned pf[kKeyMT][kKS][4], dsf[kKeyMT][kKS][4];
      pack_a(st, pf);
      pack_a(dpt, dsf);
#pragma unroll
      for (int mt = 0; mt < kKeyMT; ++mt) {
        store_a_frags<LayoutS, kKS>(smem_p, pf[mt], key_row0 + 16 * mt, q_col0, lane);
        store_a_frags<LayoutS, kKS>(smem_ds, dsf[mt], key_row0 + 16 * mt, q_col0, lane);
      }
    }
    __syncthreads();  // P^T and dS^T are complete
    gemm_ss<kKeyMT, kVTiles, kBlockM / 16>(acc_dv, AFromRows<LayoutS>(p_u32, key_row0, lane),
                                           BFromCols<LayoutV>(do_u32, 0, lane, half * kVTiles / 2));
    gemm_ss<kKeyMT, kKTiles, kBlockM / 16>(acc_dk, AFromRows<LayoutS>(ds_u32, key_row0, lane),
                                           BFromCols<LayoutQK>(q_u32, 0, lane, half * kKTiles / 2));
    if constexpr (kStages == 1) {
      __syncthreads();  // every warp is done with Q, dO, LSE, delta
      if (step + 1 < num_steps) load_step(step + 1, 0);
      cp_async_commit();
    }

#if !IS_DETERMINISTIC
    // dQ += dS K for this tile's keys: fp32 atomics into the accumulator (scaled in the convert kernel).
    {
      float* dqa = seq_base<float>(p.dq_accum, p.dqa_batch_stride, p.dqa_row_stride, p.dqa_head_stride, b, h,
                                   seq.q_start);
      const AFromCols<LayoutS> a_src(ds_u32, 0, lane);
      const BFromCols<LayoutQK> b_src(k_u32, 0, lane);
      for (int u = warp; u < kDqUnits; u += kNumWarps) {
        const int mq0 = u / kDGroups * kDqMT, dg = u % kDGroups;
        float acc[kDqMT][kDGroup * 2][4];
        zero(acc);
#pragma unroll
        for (int ks = 0; ks < kBlockN / 16; ++ks) {
          unsigned a[kDqMT][4];
#pragma unroll
          for (int mt = 0; mt < kDqMT; ++mt) a_src.load(a[mt], ks, (mq0 + mt) * 16);
#pragma unroll
          for (int j = 0; j < kDGroup; ++j) {
            const int np = dg * kDGroup + j;
            if (kDPairs % kDGroup == 0 || np < kDPairs) {
              unsigned bb[4];
              b_src.load(bb, ks, np);
#pragma unroll
              for (int mt = 0; mt < kDqMT; ++mt) {
                mma_16816(acc[mt][2 * j], a[mt], bb[0], bb[1]);
                mma_16816(acc[mt][2 * j + 1], a[mt], bb[2], bb[3]);
              }
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < kDqMT; ++mt) {
          const int row = m0 + (mq0 + mt) * 16 + g;
          float* row_g = dqa + row * p.dqa_row_stride;
          float* row_g8 = row_g + 8 * p.dqa_row_stride;
#pragma unroll
          for (int i = 0; i < kDGroup * 2; ++i) {
            const int col = (dg * kDGroup) * 16 + i * 8 + 2 * t;
            if (kHeadDim % 16 == 0 || col < kHeadDim) {
              atomic_add2_if(row < seq.seqlen_q, row_g + col, acc[mt][i][0], acc[mt][i][1]);
              atomic_add2_if(row + 8 < seq.seqlen_q, row_g8 + col, acc[mt][i][2], acc[mt][i][3]);
            }
          }
        }
      }
    }
#endif
  }

  // Epilogue: dK (times scale) and dV through shared memory (the K and V tiles), 16-byte stores.
  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < kKeyMT; ++mt) {
    store_c_frags<LayoutQK, kKTiles>(smem_k, acc_dk[mt], static_cast<float>(p.scale), key_row0 + 16 * mt,
                                     half * kKTiles, lane);
    store_c_frags<LayoutV, kVTiles>(smem_v, acc_dv[mt], 1.f, key_row0 + 16 * mt, half * kVTiles, lane);
  }
  __syncthreads();
  elem_t* dk = seq_base<elem_t>(p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, b, hkv, seq.kv_start);
  elem_t* dv = seq_base<elem_t>(p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, b, hkv, seq.kv_start);
  store_rows<kThreads, kBlockN, kHeadDim, LayoutQK>(dk + n0 * p.dk_row_stride, p.dk_row_stride, seq.seqlen_kv - n0,
                                                    smem_k);
  store_rows<kThreads, kBlockN, kHeadDimV, LayoutV>(dv + n0 * p.dv_row_stride, p.dv_row_stride, seq.seqlen_kv - n0,
                                                    smem_v);
}

#if IS_DETERMINISTIC
// ---------------------------------------------------------------------------------------------
// Deterministic dQ: one CTA per (query tile, head, sequence), warps own query rows (as in the
// forward kernel), dQ accumulates in registers over the visible key tiles.
// grid = (ceil(max seqlen_q / DQ_BLOCK_M), heads_q, batch), block = DQ_NUM_WARPS * 32,
// dynamic shared memory = dq::kSmemBytes.
// ---------------------------------------------------------------------------------------------
namespace attn {
namespace sm80 {
namespace bwd {
namespace dq {

constexpr int kBlockM = DQ_BLOCK_M;
constexpr int kBlockN = DQ_BLOCK_N;
constexpr int kNumWarps = DQ_NUM_WARPS;
constexpr int kThreads = kNumWarps * 32;
constexpr int kWarpRows = kBlockM / kNumWarps;
constexpr int kMT = kWarpRows / 16;
constexpr int kNT = kBlockN / 8;
constexpr int kKS = kBlockN / 16;
constexpr int kDimQK = round_up(kHeadDim, 16);
constexpr int kDimV = round_up(kHeadDimV, 16);
constexpr int kQTiles = kDimQK / 8;
static_assert(kBlockM % kNumWarps == 0 && kWarpRows % 16 == 0 && kBlockN % 16 == 0, "dQ tile shape");

using LayoutQK = RowLayout<kDimQK>;
using LayoutV = RowLayout<kDimV>;
constexpr int kSmemQ = kBlockM * LayoutQK::kStride;
constexpr int kSmemDO = kBlockM * LayoutV::kStride;
constexpr int kSmemK = kBlockN * LayoutQK::kStride;
constexpr int kSmemV = kBlockN * LayoutV::kStride;
constexpr int kSmemBytes = (kSmemQ + kSmemDO + kSmemK + kSmemV) * kElemBytes;
// Cross-check of the Python formula (backends/nvrtc/sm80/tiles.py:dq_shared_memory_bytes), on every compile.
#ifndef ATTN_EXPECTED_DQ_SMEM_BYTES
#error "ATTN_EXPECTED_DQ_SMEM_BYTES: the launcher's shared-memory size must be passed (backends/nvrtc/generation.py)"
#endif
static_assert(kSmemBytes == ATTN_EXPECTED_DQ_SMEM_BYTES, "sm80 tiles.dq_shared_memory_bytes disagrees");

}  // namespace dq
}  // namespace bwd
}  // namespace sm80
}  // namespace attn

extern "C" __global__ void __launch_bounds__(DQ_NUM_WARPS * 32) attn_bwd_dq_kernel(const BwdParams p) {
  using namespace attn;
  using namespace attn::sm80;
  using namespace attn::sm80::bwd;
  using namespace attn::sm80::bwd::dq;

  const TileCoord work = in_order_tile();
  const int m_block = work.block, h = work.head, b = work.batch;
  const Sequence seq = sequence_of(p, b);
  const int m0 = m_block * kBlockM;
  if (m0 >= seq.seqlen_q) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warp_row0 = warp * kWarpRows;
  const int g = lane >> 2, t = lane & 3;
  const int hkv = h / static_cast<int>(p.heads_q / p.heads_kv);

  const MaskInfo mask = mask_of(p, seq);
  const int row_last = imin(m0 + kBlockM, seq.seqlen_q) - 1;
  const KeyTileRange tiles = key_tile_range(m0, row_last, kBlockN, mask);
  const int num_tiles = tiles.count();

  extern __shared__ __align__(128) unsigned char smem_raw[];
  elem_t* smem_q = reinterpret_cast<elem_t*>(smem_raw);
  elem_t* smem_do = smem_q + kSmemQ;
  elem_t* smem_k = smem_do + kSmemDO;
  elem_t* smem_v = smem_k + kSmemK;
  const unsigned q_u32 = smem_u32(smem_q), do_u32 = smem_u32(smem_do), k_u32 = smem_u32(smem_k);
  const unsigned v_u32 = smem_u32(smem_v);

  const elem_t* q = seq_base<const elem_t>(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, b, h, seq.q_start);
  const elem_t* dout = seq_base<const elem_t>(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, b, h,
                                              seq.q_start);
  const elem_t* k =
      seq_base<const elem_t>(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, hkv, seq.kv_start);
  const elem_t* v =
      seq_base<const elem_t>(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, hkv, seq.kv_start);
  RowLoader<kThreads, kBlockM, kHeadDim, LayoutQK>::load_strided(smem_q, q + m0 * p.q_row_stride, p.q_row_stride,
                                                                 seq.seqlen_q - m0);
  RowLoader<kThreads, kBlockM, kHeadDimV, LayoutV>::load_strided(smem_do, dout + m0 * p.do_row_stride, p.do_row_stride,
                                                                 seq.seqlen_q - m0);
  auto load_k = [&](int tile) {
    const int key0 = tile * kBlockN;
    RowLoader<kThreads, kBlockN, kHeadDim, LayoutQK>::load_strided(smem_k, k + key0 * p.k_row_stride, p.k_row_stride,
                                                                   seq.seqlen_kv - key0);
  };
  auto load_v = [&](int tile) {
    const int key0 = tile * kBlockN;
    RowLoader<kThreads, kBlockN, kHeadDimV, LayoutV>::load_strided(smem_v, v + key0 * p.v_row_stride, p.v_row_stride,
                                                                   seq.seqlen_kv - key0);
  };
  if (num_tiles > 0) {
    load_k(tiles.tile(0));
    load_v(tiles.tile(0));
  }
  cp_async_commit();

  int rows[2 * kMT];
  float lse_l2[2 * kMT], delta[2 * kMT];
  {
    const float* lse = seq_base<const float>(p.lse, p.lse_batch_stride, p.lse_row_stride, p.lse_head_stride, b, h,
                                             seq.q_start);
    const float* dl = seq_base<const float>(p.delta, p.delta_batch_stride, 1, p.delta_head_stride, b, h, seq.q_start);
#pragma unroll
    for (int r = 0; r < 2 * kMT; ++r) {
      rows[r] = m0 + warp_row0 + (r / 2) * 16 + (r % 2) * 8 + g;
      lse_l2[r] = lse_log2(lse, p.lse_row_stride, rows[r], seq.seqlen_q);
      delta[r] = rows[r] < seq.seqlen_q ? dl[rows[r]] : 0.f;
    }
  }
  const ScoreMods mods = score_mods(p, b, h);
  const float scale_l2 = mods.scale_l2;
#if HAS_DROPOUT
  const DropoutKeys drop = dropout_keys(p);
#endif

  float acc_dq[kMT][kQTiles][4];
  zero(acc_dq);
  for (int it = 0; it < num_tiles; ++it) {
    const int tile = tiles.tile(it);
    const int key0 = tile * kBlockN;
    cp_async_wait<0>();
    __syncthreads();

    float s[kMT][kNT][4], dp[kMT][kNT][4];
    zero(s);
    gemm_ss<kMT, kNT, kDimQK / 16>(s, AFromRows<LayoutQK>(q_u32, warp_row0, lane), BFromRows<LayoutQK>(k_u32, 0, lane));
    zero(dp);
    gemm_ss<kMT, kNT, kDimV / 16>(dp, AFromRows<LayoutV>(do_u32, warp_row0, lane), BFromRows<LayoutV>(v_u32, 0, lane));
    __syncthreads();  // every warp is done with V
    if (it + 1 < num_tiles) load_v(tiles.tile(it + 1));
    cp_async_commit();

    const bool needs_mask = tile_needs_mask(tile, kBlockN, m0, row_last, mask);
#if HAS_DROPOUT
    unsigned keep_bits[kMT][kNT];
    dropout_bits(keep_bits, drop, static_cast<unsigned>(b), static_cast<unsigned>(h), rows, key0, lane);
#endif
    const QueryRowsC<kMT> at{rows, key0 + 2 * t, 0};
    for_each_element(s, at, [&](float& score, int query, int key, int mt, int nt, int e) {
      const int r = 2 * mt + (e >> 1);
      float dsoft = 1.f;
      float x = score;
      modify_score(x, query, key, needs_mask, mods, mask, dsoft);
      bool keep = true;
#if HAS_DROPOUT
      keep = (keep_bits[mt][nt] >> e) & 1u;
      const float dscale = drop.scale;
#else
      const float dscale = 1.f;
#endif
      float pz;
      score = grad_score(x, dp[mt][nt][e], lse_l2[r], delta[r], dsoft, keep, dscale, scale_l2, pz);
    });
    unsigned dsf[kMT][kKS][4];
    pack_a(s, dsf);
    gemm_rs<kMT, kQTiles, kKS>(acc_dq, dsf, BFromCols<LayoutQK>(k_u32, 0, lane));
    __syncthreads();  // every warp is done with K
    if (it + 1 < num_tiles) load_k(tiles.tile(it + 1));
    cp_async_commit();
  }

  cp_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
    store_c_frags<LayoutQK, kQTiles>(smem_q, acc_dq[mt], static_cast<float>(p.scale), warp_row0 + mt * 16, 0, lane);
  __syncthreads();
  elem_t* dq_out = seq_base<elem_t>(p.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, b, h, seq.q_start);
  store_rows<kThreads, kBlockM, kHeadDim, LayoutQK>(dq_out + m0 * p.dq_row_stride, p.dq_row_stride,
                                                    seq.seqlen_q - m0, smem_q);
}
#endif  // IS_DETERMINISTIC

#if !IS_DETERMINISTIC
// ---------------------------------------------------------------------------------------------
// dQ = scale * accumulator, rounded to the input dtype.
// grid = (ceil(max seqlen_q / 64), heads_q, batch), block = 128.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_convert_kernel(const BwdParams p) {
  using namespace attn;
  using namespace attn::sm80::bwd;
  constexpr int kRows = 64, kThreads = 128;
  const int m0 = blockIdx.x * kRows, h = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  if (m0 >= seq.seqlen_q) return;
  const float* dqa = seq_base<const float>(p.dq_accum, p.dqa_batch_stride, p.dqa_row_stride, p.dqa_head_stride, b, h,
                                           seq.q_start);
  elem_t* dq = seq_base<elem_t>(p.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, b, h, seq.q_start);
  const float scale = static_cast<float>(p.scale);
  constexpr int kChunks = kHeadDim / kElemsPerChunk;
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += kThreads) {
    const int row = m0 + idx / kChunks, c = idx % kChunks;
    if (row >= seq.seqlen_q) continue;
    const float4* src = reinterpret_cast<const float4*>(dqa + row * p.dqa_row_stride + c * kElemsPerChunk);
    const float4 x = src[0], y = src[1];
    uint4 out;
    out.x = pack2_out(x.x * scale, x.y * scale);
    out.y = pack2_out(x.z * scale, x.w * scale);
    out.z = pack2_out(y.x * scale, y.y * scale);
    out.w = pack2_out(y.z * scale, y.w * scale);
    *reinterpret_cast<uint4*>(dq + row * p.dq_row_stride + c * kElemsPerChunk) = out;
  }
}
#endif  // !IS_DETERMINISTIC
