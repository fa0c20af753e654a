// Shared helpers of the CPU kernels: vectorised row primitives on float rows, the fixed
// row chunking that makes results independent of the thread count, and input checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#ifdef __linux__
#include <sys/mman.h>
#endif
#include <limits>
#include <vector>

#include "rows_avx512.h"

namespace sigma_cpu {

using Vec = at::vec::Vectorized<float>;

// Rows per chunk. Chunks, not threads, own the partial column reductions and are merged in
// chunk order, so every result is bitwise the same for any number of threads. 128 rows of
// K = 3000 fp32 scores (1.5 MB) stay in a core's L2 while a chunk is processed twice; where the
// chunk comes from a GEMM, 256-row chunks run the GEMM about 15% faster (MKL, one thread).
constexpr int64_t kRowChunk = 128;
constexpr int64_t kGemmRowChunk = 256;

inline int64_t num_chunks(int64_t m, int64_t chunk) { return (m + chunk - 1) / chunk; }

// A fresh M×K buffer costs one page fault per 4 KiB page on its first write; on the machines we
// measured, that first touch took as long as two full passes over the matrix. Asking for
// transparent huge pages (a hint: ignored where THP is off, and never changing results) makes it
// one fault per 2 MiB. Call it on a buffer not yet written, before its first write.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + uintptr_t(t.nbytes());
  const uintptr_t a = (begin + kHuge - 1) & ~(kHuge - 1), b = end & ~(kHuge - 1);
  if (b > a) madvise(reinterpret_cast<void*>(a), b - a, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// torch.logsumexp shifts by the max unless it is infinite (then by 0); we do the same.
inline float lse_shift(float m) { return std::isinf(m) ? 0.f : m; }

inline float hmax(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }, v);
}

inline float hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return a + b; }, v);
}

// exp for arguments <= 88 (we only need x - max <= 0 and softmax-like uses): Cody-Waite
// reduction by ln 2 and a degree-6 polynomial, about 1 ulp, inlined (Sleef's exp is a call and
// was the bottleneck). Results below FLT_MIN (x < -87.33) are flushed to 0; NaN propagates.
inline Vec fast_exp(const Vec& xv) {
#if defined(CPU_CAPABILITY_AVX2)
  const __m256 x0 = xv;
  __m256 x = _mm256_min_ps(_mm256_set1_ps(88.0f), x0);
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654475f), _CMP_LT_OQ);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  // n in [-126, 127] here, so 2^n is a normal float built from its exponent bits
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  res = _mm256_andnot_ps(tiny, res);
  return Vec(_mm256_blendv_ps(res, x0, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q)));
#else
  return xv.exp();
#endif
}

// max without at::vec's NaN bookkeeping (inputs are NaN-free scores)
inline Vec fast_max(const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX2)
  return Vec(_mm256_max_ps(a, b));
#else
  return at::vec::maximum(a, b);
#endif
}

// First k with t_k NaN, n if none. Hard labels rank NaN above every number (as torch.argmax
// does), so every backend gives the same label to a row holding NaN (docs/numerics.md).
inline int64_t first_nan(const float* t, int64_t n) {
  const int64_t W = Vec::size();
  const int all_lanes = (1 << W) - 1;
  int64_t k = 0;
  for (; k + W <= n; k += W)
    if (Vec::loadu(t + k).isnan().zero_mask() != all_lanes) break;  // some lane is NaN
  for (; k < n; ++k)
    if (std::isnan(t[k])) return k;
  return n;
}

// The hard label of a row: `label` (chosen among its logits t that are not NaN), or its first
// NaN if it holds one.
inline int64_t label_nan_first(int64_t label, const float* t, int64_t n) {
  const int64_t qn = first_nan(t, n);
  return qn < n ? qn : label;
}

// Near-ties (docs/numerics.md): a hard label is the lowest k whose logit is within
// kTieWindow·(|max_k t_k| + max_k |v_k|) of the row max, 256 float32 ulps of the magnitudes the
// logits are computed from, so that rounding (which differs between backends and paths) never
// decides it. TIE_WINDOW in sigma_kernels/rules.py is the same number.
constexpr float kTieWindow = 1.0f / 65536.0f;

// max_k |v_k| over the finite v_k (0 if none): the potentials' part of the tie window.
inline float potential_scale(const float* v, int64_t n) {
  float m = 0.f;
  for (int64_t k = 0; k < n; ++k) {
    const float a = std::fabs(v[k]);
    if (a < std::numeric_limits<float>::infinity() && a > m) m = a;  // NaN and inf are skipped
  }
  return m;
}

// The lowest logit still tied with the row max mx (no window when mx is infinite).
inline float tie_threshold(float mx, float vmag) {
  return std::isfinite(mx) ? mx - kTieWindow * (std::fabs(mx) + vmag) : mx;
}

// LSE of a row from its shift (its max unless infinite) and Σ exp(t − shift): the sum is >= 1
// (the max term is exp(0)) unless no entry is finite, and then LSE = −inf, as torch.logsumexp.
inline float lse_from_shifted_sum(float shift, float sum) {
  return sum < 1.f ? -std::numeric_limits<float>::infinity() : shift + std::log(sum);
}

// out_k = s_k*a + add_k (two roundings, as the reference's `S*inv_eps + v`); returns max_k out_k.
inline float scale_add_max(const float* s, float a, const float* add, float* out, int64_t n) {
  const int64_t W = Vec::size();
  Vec va(a), vmax(-std::numeric_limits<float>::infinity());
  int64_t k = 0;
  for (; k + W <= n; k += W) {
    Vec t = Vec::loadu(s + k) * va + Vec::loadu(add + k);
    t.store(out + k);
    vmax = fast_max(vmax, t);
  }
  float m = hmax(vmax);
  for (; k < n; ++k) {
    float t = s[k] * a + add[k];
    out[k] = t;
    m = std::fmax(m, t);  // NaN-free inputs assumed, like the fused reference path
  }
  return m;
}

// buf_k <- exp(buf_k - shift) in place; returns the sum.
inline float exp_shift_sum_inplace(float* buf, float shift, int64_t n) {
  const int64_t W = Vec::size();
  Vec vs(shift), acc(0.f);
  int64_t k = 0;
  for (; k + W <= n; k += W) {
    Vec e = fast_exp(Vec::loadu(buf + k) - vs);
    e.store(buf + k);
    acc = acc + e;
  }
  float tail_sum = 0.f;
  if (k < n) {
    // same vector exp on the tail; lanes past n are not stored or summed
    float tail[Vec::size()];
    fast_exp(Vec::loadu(buf + k, n - k) - vs).store(tail);
    for (int64_t j = 0; j < n - k; ++j) {
      buf[k + j] = tail[j];
      tail_sum += tail[j];
    }
  }
  return hsum(acc) + tail_sum;
}

// sum_k exp(in_k - shift), nothing stored.
inline float exp_shift_sum(const float* in, float shift, int64_t n) {
  const int64_t W = Vec::size();
  Vec vs(shift), acc(0.f);
  int64_t k = 0;
  for (; k + W <= n; k += W) acc = acc + fast_exp(Vec::loadu(in + k) - vs);
  float tail_sum = 0.f;
  if (k < n) {
    float tail[Vec::size()];
    fast_exp(Vec::loadu(in + k, n - k) - vs).store(tail);
    for (int64_t j = 0; j < n - k; ++j) tail_sum += tail[j];
  }
  return hsum(acc) + tail_sum;
}


// Σ_k e_k·(t_k − shift) over the terms with t_k − shift ≥ log(FLT_MIN) (the others, and their
// 0·(−inf) products, count as 0): the weighted sum of an entropy H = log Σe − Σ e·(t − shift) / Σe.
inline float exp_weighted_shift_sum(const float* e, const float* t, float shift, int64_t n) {
  const int64_t W = Vec::size();
  const Vec vs(shift), lo(-87.33654475f), zero(0.f);
  Vec acc(0.f);
  int64_t k = 0;
  for (; k + W <= n; k += W) {
    const Vec x = Vec::loadu(t + k) - vs;
    acc = acc + Vec::blendv(zero, Vec::loadu(e + k) * x, x >= lo);
  }
  float tail = 0.f;
  for (; k < n; ++k) {
    const float x = t[k] - shift;
    if (x >= -87.33654475f) tail += e[k] * x;
  }
  return hsum(acc) + tail;
}

// out_k = e_k·a − q_k·b (out may alias e or q): the difference of two normalised softmax rows
// kept as unnormalised exps with their 1/Σ.
inline void scaled_difference(const float* e, float a, const float* q, float b, float* out, int64_t n) {
  at::vec::map2([a, b](Vec x, Vec y) { return x * Vec(a) - y * Vec(b); }, out, e, q, n);
}

// The AVX2 row kernels of the Sinkhorn loops as one type; Avx512Rows (rows_avx512.h) has the
// same interface. Algorithms are templates over `Rows` and are instantiated for both, chosen
// once per call (`with_rows`), so each reads as one algorithm and both paths are testable
// (SIGMA_CPU_NO_AVX512=1 forces this one).
struct Avx2Rows {
  static constexpr int64_t W = Vec::size();

  // e_k = exp(s_k·ie + v_k - shift), shift = lse_shift(max); returns Σ_k e_k.
  static float row_exp(const float* s, float ie, const float* v, float* e, int64_t n, const float*, float* shift) {
    *shift = lse_shift(scale_add_max(s, ie, v, e, n));
    return exp_shift_sum_inplace(e, *shift, n);
  }

  // col_k += Σ_j e[j]·alpha[j] over gn rows of e (row stride k); fma, in row order.
  static void fold_rows(float* col, const float* e, const float* alpha, int64_t gn, int64_t k) {
    int64_t q = 0;
    for (; q + W <= k; q += W) {
      Vec acc = Vec::loadu(col + q);
      for (int64_t j = 0; j < gn; ++j) acc = at::vec::fmadd(Vec::loadu(e + j * k + q), Vec(alpha[j]), acc);
      acc.store(col + q);
    }
    for (; q < k; ++q) {
      float acc = col[q];
      for (int64_t j = 0; j < gn; ++j) acc = std::fma(e[j * k + q], alpha[j], acc);
      col[q] = acc;
    }
  }

  // cm_k = max(cm_k, s_k·ie + ui)
  static void col_max_row(const float* s, float ie, float ui, float* cm, int64_t n) {
    const Vec vie(ie), vu(ui);
    int64_t q = 0;
    for (; q + W <= n; q += W) fast_max(Vec::loadu(cm + q), Vec::loadu(s + q) * vie + vu).store(cm + q);
    for (; q < n; ++q) cm[q] = std::fmax(cm[q], s[q] * ie + ui);
  }

  // cs_k += Σ_i exp(s_ik·ie + u_i - sh_k) over `rows` rows of stride `stride`
  static void col_expsum_rows(const float* s, int64_t rows, int64_t stride, float ie, const float* u,
                              const float* sh, float* cs, int64_t n) {
    const Vec vie(ie);
    for (int64_t i = 0; i < rows; ++i) {
      const float* row = s + i * stride;
      const Vec vu(u[i]);
      int64_t q = 0;
      for (; q + W <= n; q += W)
        (Vec::loadu(cs + q) + fast_exp(Vec::loadu(row + q) * vie + vu - Vec::loadu(sh + q))).store(cs + q);
      if (q < n) {
        float xs[W] = {0}, shv[W] = {0}, tail[W];
        for (int64_t j = 0; q + j < n; ++j) {
          xs[j] = row[q + j] * ie + u[i];
          shv[j] = sh[q + j];
        }
        fast_exp(Vec::loadu(xs) - Vec::loadu(shv)).store(tail);
        for (int64_t j = 0; q + j < n; ++j) cs[q + j] += tail[j];
      }
    }
  }

  // buf_k = s_k·ie + v_k; returns max_k buf_k
  static float scale_add_max(const float* s, float ie, const float* v, float* buf, int64_t n) {
    return sigma_cpu::scale_add_max(s, ie, v, buf, n);
  }

  // first k with t_k >= value (a NaN never is), n - 1 if none
  static int64_t first_at_least(const float* t, float value, int64_t n) {
    int64_t q = 0;
    while (q < n - 1 && !(t[q] >= value)) ++q;
    return q;
  }

  // entropy of softmax_k(t_k), given the logits t and their max mx
  static float logit_entropy(const float* t, float mx, int64_t n) {
    const float sh = lse_shift(mx);
    const Vec vs(sh);
    Vec z(0.f), w(0.f);
    int64_t q = 0;
    for (; q + W <= n; q += W) {
      const Vec x = Vec::loadu(t + q) - vs;
      const Vec ex = fast_exp(x);  // 0 below FLT_MIN
      z = z + ex;
      w = w + Vec::blendv(Vec(0.f), ex * x, ex > Vec(0.f));  // no 0·(-inf)
    }
    float zs = hsum(z), ws = hsum(w);
    for (; q < n; ++q) {
      const float x = t[q] - sh;
      const float ex = std::exp(x);
      zs += ex;
      if (ex > 0.f) ws += ex * x;
    }
    return std::log(zs) - ws / zs;
  }

  // out_k = exp(((s_k·ie + ui) + v_k) + log_m), rounded step by step as in the reference
  static void plan_row(const float* s, float ie, float ui, const float* v, float log_m, float* out, int64_t n) {
    const Vec vie(ie), vu(ui), vlm(log_m);
    int64_t q = 0;
    for (; q + W <= n; q += W) (((Vec::loadu(s + q) * vie + vu) + Vec::loadu(v + q)) + vlm).exp().store(out + q);
    if (q < n) {
      const int64_t r = n - q;
      (((Vec::loadu(s + q, r) * vie + vu) + Vec::loadu(v + q, r)) + vlm).exp().store(out + q, r);
    }
  }

  // e_k = exp(s_k·ie - max_j s_j·ie); *mx, *mn: max and min of s_k·ie
  static void exp_row(const float* s, float ie, float* e, int64_t n, float* mx, float* mn) {
    const Vec vie(ie);
    Vec vmax(-std::numeric_limits<float>::infinity()), vmin(std::numeric_limits<float>::infinity());
    int64_t q = 0;
    for (; q + W <= n; q += W) {
      const Vec t = Vec::loadu(s + q) * vie;
      vmax = fast_max(vmax, t);
      vmin = at::vec::minimum(vmin, t);
    }
    float hi = hmax(vmax);
    float lo = at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return at::vec::minimum(a, b); }, vmin);
    for (int64_t j = q; j < n; ++j) {
      hi = std::fmax(hi, s[j] * ie);
      lo = std::fmin(lo, s[j] * ie);
    }
    *mx = hi;
    *mn = lo;
    const Vec vs(hi);
    for (q = 0; q + W <= n; q += W) fast_exp(Vec::loadu(s + q) * vie - vs).store(e + q);
    for (; q < n; ++q) e[q] = std::exp(s[q] * ie - hi);
  }

  static float dot(const float* e, const float* b, int64_t n) {
    Vec a0(0.f), a1(0.f);
    int64_t q = 0;
    for (; q + 2 * W <= n; q += 2 * W) {
      a0 = at::vec::fmadd(Vec::loadu(e + q), Vec::loadu(b + q), a0);
      a1 = at::vec::fmadd(Vec::loadu(e + q + W), Vec::loadu(b + q + W), a1);
    }
    float acc = hsum(a0 + a1);
    for (; q < n; ++q) acc = std::fma(e[q], b[q], acc);
    return acc;
  }

  // out_k = (e_k·b_k)·a (out may alias e)
  static void scaled_row(const float* e, const float* b, float a, float* out, int64_t n) {
    const Vec va(a);
    int64_t q = 0;
    for (; q + W <= n; q += W) ((Vec::loadu(e + q) * Vec::loadu(b + q)) * va).store(out + q);
    for (; q < n; ++q) out[q] = (e[q] * b[q]) * a;
  }
};

// Fill dst (rows × n, contiguous) with float copies of src rows (any floating dtype).
// Per-thread fp32 accumulators (threads × rows × cols) fed by GEMMs inside at::parallel_for: a
// thread's first product overwrites its slot and later ones add to it, so no threads·rows·cols
// zero fill is needed (at small M that fill cost as much as the products); slots a thread never
// wrote stay out of the sum, taken in thread order (fixed for a given thread count).
class ThreadPartials {
 public:
  ThreadPartials(int64_t rows, int64_t cols, bool active)
      : rows_(rows), cols_(cols),
        parts_(active ? at::empty({at::get_num_threads(), rows, cols}, at::kFloat) : at::empty({0}, at::kFloat)),
        used_(active ? at::get_num_threads() : 0, 0) {}
  // slot[tid] (+)= a·b
  void add_product(int64_t tid, const at::Tensor& a, const at::Tensor& b) {
    at::Tensor slot = parts_[tid];
    if (used_[tid]) {
      slot.addmm_(a, b);
    } else {
      at::mm_out(slot, a, b);
      used_[tid] = 1;
    }
  }
  at::Tensor sum() const {
    at::Tensor out;
    for (size_t t = 0; t < used_.size(); ++t)
      if (used_[t]) out = out.defined() ? out.add_(parts_[(int64_t)t]) : parts_[(int64_t)t].clone();
    return out.defined() ? out : at::zeros({rows_, cols_}, at::kFloat);
  }

 private:
  int64_t rows_, cols_;
  at::Tensor parts_;
  std::vector<char> used_;
};

// The hard label of the row of logits t_k = s_k·ie + v_k (docs/numerics.md): its first NaN if it
// holds one, else the lowest k with t_k >= tie_threshold(max_k t_k, vmag), vmag = potential_scale(v).
// buf (n) receives t (buf may be s); with h, *h is the entropy of softmax_k(t_k).
template <class Rows>
int64_t hard_label(const float* s, float ie, const float* v, float vmag, float* buf, int64_t n, float* h = nullptr) {
  const float mx = Rows::scale_add_max(s, ie, v, buf, n);
  if (h != nullptr) *h = Rows::logit_entropy(buf, mx, n);
  return label_nan_first(Rows::first_at_least(buf, tie_threshold(mx, vmag), n), buf, n);
}

// Calls f(Rows{}) with the row kernels of this CPU: AVX-512 (rows_avx512.h) unless unsupported or
// disabled (SIGMA_CPU_NO_AVX512=1), else the AVX2 ones above.
template <typename F>
auto with_rows(F&& f) {
  if (avx512::supported()) return f(Avx512Rows{});
  return f(Avx2Rows{});
}

template <typename T>
inline void rows_to_float(const T* src, float* dst, int64_t count) {
  at::vec::convert(src, dst, count);
}

inline void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_matrix(const at::Tensor& t, const char* name) {
  check_cpu_float(t, name);
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D, got shape ", t.sizes());
}

// A (n,) fp32 contiguous copy (or view) of a potential / per-row vector.
inline at::Tensor as_float_vector(const at::Tensor& t, int64_t n, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must have shape (", n, ",), got ", t.sizes());
  TORCH_CHECK(t.is_floating_point(), name, " must be floating point, got ", t.scalar_type());
  return t.to(at::kFloat).contiguous();
}

}  // namespace sigma_cpu
