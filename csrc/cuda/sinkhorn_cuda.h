// Plain C++ interface of the CUDA Sinkhorn kernels (sinkhorn_cuda.cu), so that the .cu file
// needs no torch headers (short nvcc builds) and the op registration stays in C++.
#pragma once

#include <cstdint>

namespace sigma_cuda {

enum class ScoreType { kFloat, kHalf, kBFloat16 };

// Row-split count used by col_lse for m rows (size of the pmax/psum scratch: splits × k).
int64_t col_splits(int64_t m);

// u_i = neg_log_m - LSE_k(S_ik·ie + v_k). All pointers on the current device; stream is a cudaStream_t.
void row_lse(const void* s, ScoreType type, int64_t m, int64_t k, const float* v, float ie, float neg_log_m,
             float* u, void* stream);

// out_k = LSE_i(S_ik·ie + u_i), through per-split partial (max, sum) in pmax/psum (col_splits(m) × k).
void col_lse(const void* s, ScoreType type, int64_t m, int64_t k, const float* u, float ie, float* pmax,
             float* psum, float* out, void* stream);

}  // namespace sigma_cuda
