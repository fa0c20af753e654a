// CUDA implementations of sigma_kernels_ext::sinkhorn_col_lse / sinkhorn_row_step (kernels in
// cuda/sinkhorn_cuda.cu). Compiled to nothing unless setup.py builds the CUDA part.
#ifdef SIGMA_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/sinkhorn_cuda.h"

namespace {

using at::Tensor;

sigma_cuda::ScoreType score_type(const Tensor& s) {
  switch (s.scalar_type()) {
    case at::kFloat: return sigma_cuda::ScoreType::kFloat;
    case at::kHalf: return sigma_cuda::ScoreType::kHalf;
    case at::kBFloat16: return sigma_cuda::ScoreType::kBFloat16;
    default: TORCH_CHECK(false, "scores must be float32, float16 or bfloat16, got ", s.scalar_type());
  }
}

Tensor checked(const Tensor& scores) {
  TORCH_CHECK(scores.is_cuda(), "scores must be a CUDA tensor here, got ", scores.device());
  TORCH_CHECK(scores.dim() == 2 && scores.size(1) > 0, "scores must be (M, K) with K > 0, got ", scores.sizes());
  return scores.contiguous();
}

Tensor vec(const Tensor& t, int64_t n, const Tensor& like, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must have shape (", n, ",), got ", t.sizes());
  return t.to(like.device(), at::kFloat).contiguous();
}

Tensor col_lse_cuda(const Tensor& s, const Tensor& uf, double inv_eps) {
  const int64_t m = s.size(0), k = s.size(1);
  auto opts = s.options().dtype(at::kFloat);
  Tensor pmax = at::empty({sigma_cuda::col_splits(m), k}, opts), psum = at::empty({sigma_cuda::col_splits(m), k}, opts);
  Tensor out = at::empty({k}, opts);
  sigma_cuda::col_lse(s.data_ptr(), score_type(s), m, k, uf.data_ptr<float>(), (float)inv_eps,
                      pmax.data_ptr<float>(), psum.data_ptr<float>(), out.data_ptr<float>(),
                      c10::cuda::getCurrentCUDAStream(s.device().index()).stream());
  return out;
}

Tensor sinkhorn_col_lse(const Tensor& scores, const Tensor& u, double inv_eps) {
  Tensor s = checked(scores);
  c10::cuda::CUDAGuard guard(s.device());
  return col_lse_cuda(s, vec(u, s.size(0), s, "u"), inv_eps);
}

std::tuple<Tensor, Tensor> sinkhorn_row_step(const Tensor& scores, const Tensor& v, double inv_eps, double log_m) {
  Tensor s = checked(scores);
  c10::cuda::CUDAGuard guard(s.device());
  const int64_t m = s.size(0), k = s.size(1);
  Tensor vf = vec(v, k, s, "v");
  Tensor u = at::empty({m}, s.options().dtype(at::kFloat));
  sigma_cuda::row_lse(s.data_ptr(), score_type(s), m, k, vf.data_ptr<float>(), (float)inv_eps, (float)(-log_m),
                      u.data_ptr<float>(), c10::cuda::getCurrentCUDAStream(s.device().index()).stream());
  return {u, col_lse_cuda(s, u, inv_eps)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sigma_kernels_ext, CUDA, m) {
  m.impl("sinkhorn_col_lse", &sinkhorn_col_lse);
  m.impl("sinkhorn_row_step", &sinkhorn_row_step);
}

#endif  // SIGMA_WITH_CUDA
