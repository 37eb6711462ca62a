// Runs the probe kernels of ptx_probe.cu on an sm_90 GPU and checks O = (scale Q K^T) V against the
// host, so the layouts of kernels/sm90a (TMA 128B swizzle = wgmma descriptors, V N-major, the P
// re-layout, the accumulator layout seen through stmatrix and a TMA store) are checked by the
// hardware itself.  Odd row counts leave part of every box out of bounds (zero-filled on load,
// clipped on store).  Not part of the CPU test run; on a GPU machine:
//   nvcc -std=c++17 -O2 -gencode arch=compute_90a,code=sm_90a -Ikernels -o probe
//        tests/sm90a_host/probe_main.cu -lcuda && ./probe
// (with nvcc 13.0 the -arch=sm_90a shorthand also runs a plain sm_90 pass, which rejects wgmma)
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "ptx_probe.cu"

namespace {

using attn::sm90a::TmaDescriptor;

#define CHECK_CUDA(call)                                                                    \
  do {                                                                                      \
    cudaError_t status_ = (call);                                                           \
    if (status_ != cudaSuccess) {                                                           \
      std::printf("%s failed: %s\n", #call, cudaGetErrorString(status_));                   \
      std::exit(2);                                                                         \
    }                                                                                       \
  } while (0)

// Host rounding to the kernel's element type, as bits.
unsigned short to_bits(attn::bfloat16_t, float x) {
  __nv_bfloat16 h = __float2bfloat16_rn(x);
  unsigned short b;
  std::memcpy(&b, &h, 2);
  return b;
}
unsigned short to_bits(attn::half_t, float x) {
  __half h = __float2half_rn(x);
  unsigned short b;
  std::memcpy(&b, &h, 2);
  return b;
}
float from_bits(attn::bfloat16_t, unsigned short b) {
  __nv_bfloat16 h;
  std::memcpy(&h, &b, 2);
  return __bfloat162float(h);
}
float from_bits(attn::half_t, unsigned short b) {
  __half h;
  std::memcpy(&h, &b, 2);
  return __half2float(h);
}

// A 2-byte-element tensor map, dims innermost first (what backends/nvrtc/sm90a/tma.py computes).
TmaDescriptor tensor_map(bool bf16, void* address, int rank, const cuuint64_t* dims, const cuuint64_t* strides,
                         const cuuint32_t* box, CUtensorMapSwizzle swizzle) {
  CUtensorMap map;
  const cuuint32_t element_strides[5] = {1, 1, 1, 1, 1};
  const CUtensorMapDataType type = bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  CUresult result = cuTensorMapEncodeTiled(&map, type, rank, address, dims, strides, box, element_strides,
                                           CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    std::printf("cuTensorMapEncodeTiled failed: %d\n", static_cast<int>(result));
    std::exit(2);
  }
  TmaDescriptor out;
  static_assert(sizeof(out) == sizeof(map), "a CUtensorMap is 128 bytes");
  std::memcpy(&out, &map, sizeof(map));
  return out;
}

using Kernel = void (*)(TmaDescriptor, TmaDescriptor, TmaDescriptor, TmaDescriptor, float);

// One probe: q_rows of the 64 query rows and kv_rows of the BlockN keys exist in memory.
template <class Elem, int BlockN, int HeadDim>
bool run(Kernel kernel, const char* name, int q_rows, int kv_rows) {
  constexpr bool kBf16 = std::is_same<Elem, attn::bfloat16_t>::value;
  std::mt19937 random(1234);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  auto fill = [&](int rows) {
    std::vector<unsigned short> bits(rows * HeadDim);
    for (auto& b : bits) b = to_bits(Elem{}, uniform(random));
    return bits;
  };
  const std::vector<unsigned short> q = fill(q_rows), k = fill(kv_rows), v = fill(kv_rows);
  const float scale = 0.125f;

  unsigned short *dq, *dk, *dv, *dout;
  CHECK_CUDA(cudaMalloc(&dq, q.size() * 2));
  CHECK_CUDA(cudaMalloc(&dk, k.size() * 2));
  CHECK_CUDA(cudaMalloc(&dv, v.size() * 2));
  CHECK_CUDA(cudaMalloc(&dout, q_rows * HeadDim * 2));
  CHECK_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dk, k.data(), k.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemset(dout, 0xFF, q_rows * HeadDim * 2));          // NaN until the store writes it

  const cuuint64_t row_bytes = HeadDim * 2, kv_bytes = row_bytes * kv_rows;
  const cuuint64_t q_dims[2] = {HeadDim, (cuuint64_t)q_rows}, q_strides[1] = {row_bytes};
  const cuuint64_t k_dims[3] = {HeadDim, (cuuint64_t)kv_rows, 1}, k_strides[2] = {row_bytes, kv_bytes};
  const cuuint64_t v_dims[4] = {HeadDim, (cuuint64_t)kv_rows, 1, 1}, v_strides[3] = {row_bytes, kv_bytes, kv_bytes};
  const cuuint32_t q_box[2] = {64, 64}, k_box[3] = {64, BlockN, 1}, v_box[4] = {64, BlockN, 1, 1};
  const cuuint32_t o_box[2] = {HeadDim, 64};
  const TmaDescriptor q_map = tensor_map(kBf16, dq, 2, q_dims, q_strides, q_box, CU_TENSOR_MAP_SWIZZLE_128B);
  const TmaDescriptor k_map = tensor_map(kBf16, dk, 3, k_dims, k_strides, k_box, CU_TENSOR_MAP_SWIZZLE_128B);
  const TmaDescriptor v_map = tensor_map(kBf16, dv, 4, v_dims, v_strides, v_box, CU_TENSOR_MAP_SWIZZLE_128B);
  const TmaDescriptor o_map = tensor_map(kBf16, dout, 2, q_dims, q_strides, o_box, CU_TENSOR_MAP_SWIZZLE_NONE);

  constexpr unsigned kSmem = probe::kProbeSmemBytes<HeadDim, BlockN>;
  CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  kernel<<<1, 256, kSmem>>>(q_map, k_map, v_map, o_map, scale);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<unsigned short> out(q_rows * HeadDim);
  CHECK_CUDA(cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost));

  // Host reference with the kernel's one rounding in the middle (P to the element type).
  double worst = 0, largest = 0;
  for (int i = 0; i < q_rows; ++i) {
    std::vector<float> p(kv_rows);
    for (int j = 0; j < kv_rows; ++j) {
      float s = 0;
      for (int d = 0; d < HeadDim; ++d)
        s += from_bits(Elem{}, q[i * HeadDim + d]) * from_bits(Elem{}, k[j * HeadDim + d]);
      p[j] = from_bits(Elem{}, to_bits(Elem{}, scale * s));
    }
    for (int d = 0; d < HeadDim; ++d) {
      float o = 0;
      for (int j = 0; j < kv_rows; ++j) o += p[j] * from_bits(Elem{}, v[j * HeadDim + d]);
      const float got = from_bits(Elem{}, out[i * HeadDim + d]);
      worst = std::fmax(worst, std::isnan(got) ? INFINITY : std::fabs(got - o));
      largest = std::fmax(largest, std::fabs(o));
    }
  }
  const double tolerance = (kBf16 ? 1.0 / 128 : 1.0 / 1024) * largest + 1e-3;
  const bool ok = worst <= tolerance;
  std::printf("%-22s q_rows=%2d kv_rows=%3d  max |O - O_ref| = %.3g (max |O_ref| %.3g, tolerance %.3g)  %s\n", name,
              q_rows, kv_rows, worst, largest, tolerance, ok ? "PASS" : "FAIL");
  cudaFree(dq);
  cudaFree(dk);
  cudaFree(dv);
  cudaFree(dout);
  return ok;
}

}  // namespace

int main() {
  bool ok = true;
  for (int trial = 0; trial < 2; ++trial) {
    // Full boxes, then rows missing from the tensors (out-of-bound rows are zero-filled / clipped).
    const int q_rows = trial ? 17 : 64, kv_64 = trial ? 57 : 64, kv_128 = trial ? 113 : 128;
    ok &= run<attn::bfloat16_t, 64, 192>(probe_bf16_n64_d192, "bf16 N=64  d=192", q_rows, kv_64);
    ok &= run<attn::half_t, 128, 96>(probe_f16_n128_d96, "f16  N=128 d=96", q_rows, kv_128);
    ok &= run<attn::bfloat16_t, 64, 256>(probe_bf16_n64_d256, "bf16 N=64  d=256", q_rows, kv_64);
    ok &= run<attn::half_t, 64, 64>(probe_f16_n64_d64, "f16  N=64  d=64", q_rows, kv_64);
  }
  std::printf(ok ? "ALL PASS\n" : "SOME FAILED\n");
  return ok ? 0 : 1;
}
