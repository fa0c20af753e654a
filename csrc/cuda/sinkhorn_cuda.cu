// Small CUDA Sinkhorn kernels (materialised scores): the CUDA implementation of
// sigma_kernels_ext::sinkhorn_row_step / sinkhorn_col_lse. Log domain, fp32 accumulation.
// Not the fast GPU path (that is the Triton backend): a row step reads S twice (row LSE, then
// split-M column partials merged per column).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "sinkhorn_cuda.h"

namespace sigma_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSplitRows = 512;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float lse_shift(float m) { return isinf(m) ? 0.f : m; }

template <typename Op>
__device__ float block_reduce(float x, Op op, float* shared) {
  for (int o = 16; o > 0; o >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  x = shared[0];
  for (int w = 1; w < kThreads / 32; ++w) x = op(x, shared[w]);
  __syncthreads();
  return x;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <typename T>
__global__ void row_lse_kernel(const T* __restrict__ s, int64_t k, const float* __restrict__ v, float ie,
                               float neg_log_m, float* __restrict__ u) {
  __shared__ float shared[kThreads / 32];
  const T* row = s + (int64_t)blockIdx.x * k;
  float mx = -INFINITY;
  for (int64_t q = threadIdx.x; q < k; q += kThreads) mx = fmaxf(mx, __fadd_rn(__fmul_rn(to_float(row[q]), ie), v[q]));
  const float sh = lse_shift(block_reduce(mx, MaxOp(), shared));
  float sum = 0.f;
  for (int64_t q = threadIdx.x; q < k; q += kThreads) sum += expf(__fadd_rn(__fmul_rn(to_float(row[q]), ie), v[q]) - sh);
  sum = block_reduce(sum, SumOp(), shared);
  if (threadIdx.x == 0) u[blockIdx.x] = neg_log_m - (sh + logf(sum));
}

// Thread = column, block row = a split of kSplitRows rows: online (max, sum) over the split.
template <typename T>
__global__ void col_partial_kernel(const T* __restrict__ s, int64_t m, int64_t k, const float* __restrict__ u,
                                   float ie, float* __restrict__ pmax, float* __restrict__ psum) {
  const int64_t q = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  if (q >= k) return;
  const int64_t r0 = (int64_t)blockIdx.y * kSplitRows;
  const int64_t r1 = r0 + kSplitRows < m ? r0 + kSplitRows : m;
  float mx = -INFINITY, sum = 0.f;
  for (int64_t i = r0; i < r1; ++i) {
    const float x = __fadd_rn(__fmul_rn(to_float(s[i * k + q]), ie), u[i]);
    if (x == -INFINITY) continue;
    if (x > mx) {
      sum = sum * expf(mx - x) + 1.f;
      mx = x;
    } else {
      sum += expf(x - mx);
    }
  }
  pmax[blockIdx.y * k + q] = mx;
  psum[blockIdx.y * k + q] = sum;
}

__global__ void col_merge_kernel(int64_t splits, int64_t k, const float* __restrict__ pmax,
                                 const float* __restrict__ psum, float* __restrict__ out) {
  const int64_t q = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  if (q >= k) return;
  float g = -INFINITY;
  for (int64_t j = 0; j < splits; ++j) g = fmaxf(g, pmax[j * k + q]);
  const float gs = lse_shift(g);
  float total = 0.f;
  for (int64_t j = 0; j < splits; ++j) {
    const float sj = psum[j * k + q];
    if (sj != 0.f) total += sj * expf(pmax[j * k + q] - gs);
  }
  out[q] = gs + logf(total);
}

template <typename F>
void with_type(const void* s, ScoreType type, F&& f) {
  switch (type) {
    case ScoreType::kFloat: f(static_cast<const float*>(s)); break;
    case ScoreType::kHalf: f(static_cast<const __half*>(s)); break;
    case ScoreType::kBFloat16: f(static_cast<const __nv_bfloat16*>(s)); break;
  }
}

}  // namespace

int64_t col_splits(int64_t m) { return m > 0 ? (m + kSplitRows - 1) / kSplitRows : 1; }

void row_lse(const void* s, ScoreType type, int64_t m, int64_t k, const float* v, float ie, float neg_log_m,
             float* u, void* stream) {
  if (m == 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  with_type(s, type, [&](auto* p) { row_lse_kernel<<<(unsigned)m, kThreads, 0, st>>>(p, k, v, ie, neg_log_m, u); });
}

void col_lse(const void* s, ScoreType type, int64_t m, int64_t k, const float* u, float ie, float* pmax,
             float* psum, float* out, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  const int64_t splits = col_splits(m);
  const unsigned col_blocks = (unsigned)((k + kThreads - 1) / kThreads);
  if (m == 0) {
    // no rows: every column LSE is -inf (one split whose partials say so)
    with_type(s, type, [&](auto* p) {
      col_partial_kernel<<<dim3(col_blocks, 1), kThreads, 0, st>>>(p, 0, k, u, ie, pmax, psum);
    });
  } else {
    with_type(s, type, [&](auto* p) {
      col_partial_kernel<<<dim3(col_blocks, (unsigned)splits), kThreads, 0, st>>>(p, m, k, u, ie, pmax, psum);
    });
  }
  col_merge_kernel<<<col_blocks, kThreads, 0, st>>>(splits, k, pmax, psum, out);
}

}  // namespace sigma_cuda
