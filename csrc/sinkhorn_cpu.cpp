// Log-domain Sinkhorn primitives on the CPU, on materialised scores S (M, K) or on factored
// scores S = x·cᵀ recomputed one row chunk at a time (never an M×K array).
//
// row_step reads each score once per iteration and computes one exp per score:
//   e_ik = exp(S_ik·ε⁻¹ + v_k − m_i)     (m_i the row max; Σ_k e_ik gives u_i exactly), then
//   exp(S_ik·ε⁻¹ + u_i) = e_ik · α_i · exp(−v_k),   α_i = exp(u_i + m_i) ∈ [1/(M_ref·K), 1/M_ref],
// so the column sums C_k = Σ_i e_ik·α_i give col_k = log C_k − v_k with no second exp and no
// running max. e_ik ≤ 1 and α_i ≤ 1 make overflow impossible; underflow can only drop terms
// below FLT_MIN, at most M of them per column, i.e. an absolute error < M·FLT_MIN on C_k. Where
// C_k < M·1e-30 that bound is no longer negligible (relative 1e-8), and those columns are
// recomputed by the exact two-level log-domain column LSE (`col_lse_impl`).
#include "rows_avx512.h"
#include "sigma_common.h"

#include <algorithm>
#include <tuple>
#include <type_traits>

namespace sigma_cpu {
namespace {

// Rows per group folded into the column sums together (one load/store of the partials per group).
constexpr int64_t kFoldRows = 4;

// A score source hands out fp32 row tiles: `rows(r0, n, buf)` returns a pointer to rows
// [r0, r0+n) (row stride K), either inside S or written into buf (chunk·K floats).
struct DenseFloatScores {
  const float* s;
  int64_t k;
  static constexpr int64_t chunk = kRowChunk;
  bool needs_buffer() const { return false; }
  const float* rows(int64_t r0, int64_t, float*) const { return s + r0 * k; }
};

template <typename T>
struct DenseLowScores {
  const T* s;
  int64_t k;
  static constexpr int64_t chunk = kRowChunk;
  bool needs_buffer() const { return true; }
  const float* rows(int64_t r0, int64_t n, float* buf) const {
    rows_to_float(s + r0 * k, buf, n * k);
    return buf;
  }
};

struct FactorScores {
  at::Tensor x;  // (M, D) fp32 contiguous
  at::Tensor c;  // (K, D) fp32 contiguous
  static constexpr int64_t chunk = kGemmRowChunk;
  bool needs_buffer() const { return true; }
  const float* rows(int64_t r0, int64_t n, float* buf) const {
    at::Tensor out = at::from_blob(buf, {n, c.size(0)}, x.options());
    at::mm_out(out, x.narrow(0, r0, n), c.t());
    return buf;
  }
};

struct Buffers {
  at::Tensor t;
  float* get(int64_t tid, int64_t per_thread) { return t.numel() ? t.data_ptr<float>() + tid * per_thread : nullptr; }
};

Buffers thread_buffers(int64_t per_thread, bool needed) {
  return Buffers{needed ? at::empty({at::get_num_threads() * per_thread}, at::kFloat) : at::empty({0}, at::kFloat)};
}

// col_k = sum_j e[j]·alpha[j] + col_k over gn rows of e (row stride k); fma, in row order.
inline void fold_rows(float* col, const float* e, const float* alpha, int64_t gn, int64_t k) {
  const int64_t W = Vec::size();
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

// Exact column LSE_i(S_ik·ie + u_i): per chunk a column max pass then a shifted exp-sum pass
// over the (cached) chunk, chunks merged in order with rescaling.
template <class Source>
at::Tensor col_lse_impl(const Source& src, int64_t m, int64_t k, const float* u, float ie) {
  const int64_t nch = num_chunks(m, Source::chunk);
  at::Tensor pmax = at::empty({nch, k}, at::kFloat), psum = at::empty({nch, k}, at::kFloat);
  float* pm = pmax.data_ptr<float>();
  float* ps = psum.data_ptr<float>();
  Buffers tiles = thread_buffers(Source::chunk * k, src.needs_buffer());
  at::Tensor shifts_t = at::empty({at::get_num_threads() * k}, at::kFloat);
  const bool wide = avx512::supported();
  const int64_t W = Vec::size();
  at::parallel_for(0, nch, 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    float* sh = shifts_t.data_ptr<float>() + tid * k;
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * Source::chunk, n = std::min(Source::chunk, m - r0);
      const float* tile = src.rows(r0, n, tiles.get(tid, Source::chunk * k));
      float* cm = pm + ch * k;
      float* cs = ps + ch * k;
      std::fill(cm, cm + k, -std::numeric_limits<float>::infinity());
      std::fill(cs, cs + k, 0.f);
      const Vec vie(ie);
      if (wide) {
        for (int64_t i = 0; i < n; ++i) avx512::col_max_row(tile + i * k, ie, u[r0 + i], cm, k);
      } else {
        for (int64_t i = 0; i < n; ++i) {
          const float* row = tile + i * k;
          const Vec vu(u[r0 + i]);
          int64_t q = 0;
          for (; q + W <= k; q += W)
            fast_max(Vec::loadu(cm + q), Vec::loadu(row + q) * vie + vu).store(cm + q);
          for (; q < k; ++q) cm[q] = std::fmax(cm[q], row[q] * ie + u[r0 + i]);
        }
      }
      for (int64_t q = 0; q < k; ++q) sh[q] = lse_shift(cm[q]);
      if (wide) {
        // 8 rows per sweep: the column sums stay in registers across them
        for (int64_t i = 0; i < n; i += 8)
          avx512::col_expsum_rows(tile + i * k, std::min<int64_t>(8, n - i), k, ie, u + r0 + i, sh, cs, k);
        continue;
      }
      for (int64_t i = 0; i < n; ++i) {
        const float* row = tile + i * k;
        const Vec vu(u[r0 + i]);
        int64_t q = 0;
        for (; q + W <= k; q += W) {
          Vec ex = fast_exp(Vec::loadu(row + q) * vie + vu - Vec::loadu(sh + q));
          (Vec::loadu(cs + q) + ex).store(cs + q);
        }
        if (q < k) {
          float tail[Vec::size()], shv[Vec::size()] = {0};
          float xs[Vec::size()] = {0};
          for (int64_t j = 0; q + j < k; ++j) {
            xs[j] = row[q + j] * ie + u[r0 + i];
            shv[j] = sh[q + j];
          }
          fast_exp(Vec::loadu(xs) - Vec::loadu(shv)).store(tail);
          for (int64_t j = 0; q + j < k; ++j) cs[q + j] += tail[j];
        }
      }
    }
  });
  at::Tensor out = at::empty({k}, at::kFloat);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, k, 256, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      float g = -std::numeric_limits<float>::infinity();
      for (int64_t ch = 0; ch < nch; ++ch) g = std::fmax(g, pm[ch * k + q]);
      const float gs = lse_shift(g);
      double total = 0.0;
      for (int64_t ch = 0; ch < nch; ++ch) {
        const float s = ps[ch * k + q];
        if (s != 0.f) total += (double)s * std::exp((double)lse_shift(pm[ch * k + q]) - gs);
      }
      o[q] = gs + (float)std::log(total);
    }
  });
  return out;
}

// One fused pass: u_i = -log_m - LSE_k(S_ik·ie + v_k) and col_k = LSE_i(S_ik·ie + u_i).
template <class Source>
std::tuple<at::Tensor, at::Tensor> row_step_impl(const Source& src, int64_t m, int64_t k, const float* v, float ie,
                                                 double log_m) {
  const int64_t nch = num_chunks(m, Source::chunk);
  at::Tensor u_t = at::empty({m}, at::kFloat);
  at::Tensor partial = at::empty({nch, k}, at::kFloat);
  float* u = u_t.data_ptr<float>();
  float* pc = partial.data_ptr<float>();
  Buffers tiles = thread_buffers(Source::chunk * k, src.needs_buffer());
  Buffers ebufs = thread_buffers(kFoldRows * k, true);
  const float neg_log_m = (float)(-log_m);
  const bool wide = avx512::supported();
  at::parallel_for(0, nch, 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    float* eb = ebufs.get(tid, kFoldRows * k);
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * Source::chunk, n = std::min(Source::chunk, m - r0);
      const float* tile = src.rows(r0, n, tiles.get(tid, Source::chunk * k));
      float* col = pc + ch * k;
      std::fill(col, col + k, 0.f);
      for (int64_t g = 0; g < n; g += kFoldRows) {
        const int64_t gn = std::min(kFoldRows, n - g);
        float alpha[kFoldRows];
        for (int64_t j = 0; j < gn; ++j) {
          float* ej = eb + j * k;
          const float* srow = tile + (g + j) * k;
          float mx, sh, sum;
          if (wide) {
            // the row is re-read from L1 by the exp pass instead of storing S·ie + v
            mx = avx512::row_max(srow, ie, v, k);
            sh = lse_shift(mx);
            sum = avx512::row_exp_sum(srow, ie, v, sh, ej, k, g + j + 1 < n ? srow + k : nullptr);
          } else {
            mx = scale_add_max(srow, ie, v, ej, k);
            sh = lse_shift(mx);
            sum = exp_shift_sum_inplace(ej, sh, k);
          }
          const float ui = neg_log_m - (sh + std::log(sum));
          u[r0 + g + j] = ui;
          alpha[j] = (float)std::exp((double)ui + (double)sh);
        }
        if (wide)
          avx512::fold_rows(col, eb, alpha, gn, k);
        else
          fold_rows(col, eb, alpha, gn, k);
      }
    }
  });
  at::Tensor col_t = at::empty({k}, at::kFloat);
  float* col = col_t.data_ptr<float>();
  // Below this the dropped sub-FLT_MIN terms could matter (see the file comment).
  const double threshold = (double)m * 1e-30;
  std::vector<char> flagged(k, 0);
  at::parallel_for(0, k, 256, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      float s = 0.f;
      for (int64_t ch = 0; ch < nch; ++ch) s += pc[ch * k + q];
      flagged[q] = !((double)s >= threshold);
      col[q] = std::log(s) - v[q];
    }
  });
  if (std::find(flagged.begin(), flagged.end(), 1) != flagged.end()) {
    at::Tensor exact = col_lse_impl(src, m, k, u, ie);
    const float* ex = exact.data_ptr<float>();
    for (int64_t q = 0; q < k; ++q)
      if (flagged[q]) col[q] = ex[q];
  }
  return {u_t, col_t};
}

// argmax_k (S_ik·ie + v_k), ties -> lowest index.
template <class Source>
at::Tensor assign_impl(const Source& src, int64_t m, int64_t k, const float* v, float ie) {
  const int64_t nch = num_chunks(m, Source::chunk);
  at::Tensor out = at::empty({m}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  Buffers tiles = thread_buffers(Source::chunk * k, src.needs_buffer());
  Buffers rbufs = thread_buffers(k, true);
  const bool wide = avx512::supported();
  at::parallel_for(0, nch, 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    float* rb = rbufs.get(tid, k);
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * Source::chunk, n = std::min(Source::chunk, m - r0);
      const float* tile = src.rows(r0, n, tiles.get(tid, Source::chunk * k));
      for (int64_t i = 0; i < n; ++i) {
        const float mx = wide ? avx512::scale_add_max(tile + i * k, ie, v, rb, k) : scale_add_max(tile + i * k, ie, v, rb, k);
        int64_t q = 0;
        if (wide) {
          q = avx512::first_at_least(rb, mx, k);
        } else {
          while (q < k - 1 && rb[q] < mx) ++q;  // first index reaching the max
        }
        o[r0 + i] = q;
      }
    }
  });
  return out;
}

template <typename F>
auto dispatch_dense(const at::Tensor& s, F&& f) {
  const int64_t k = s.size(1);
  switch (s.scalar_type()) {
    case at::kFloat: return f(DenseFloatScores{s.data_ptr<float>(), k});
    case at::kHalf: return f(DenseLowScores<at::Half>{s.data_ptr<at::Half>(), k});
    case at::kBFloat16: return f(DenseLowScores<at::BFloat16>{s.data_ptr<at::BFloat16>(), k});
    default: TORCH_CHECK(false, "scores must be float32, float16 or bfloat16, got ", s.scalar_type());
  }
}

at::Tensor checked_scores(const at::Tensor& scores) {
  check_matrix(scores, "scores");
  TORCH_CHECK(scores.size(1) > 0, "scores must have at least one column (K > 0)");
  return scores.contiguous();
}

FactorScores checked_factors(const at::Tensor& x, const at::Tensor& c) {
  check_matrix(x, "x");
  check_matrix(c, "c");
  TORCH_CHECK(x.size(1) == c.size(1), "x (M, D) and c (K, D) must have the same D, got ", x.sizes(), " and ", c.sizes());
  TORCH_CHECK(c.size(0) > 0, "c must have at least one row (K > 0)");
  return FactorScores{x.detach().to(at::kFloat).contiguous(), c.detach().to(at::kFloat).contiguous()};
}

}  // namespace

at::Tensor sinkhorn_col_lse(const at::Tensor& scores, const at::Tensor& u, double inv_eps) {
  at::Tensor s = checked_scores(scores);
  at::Tensor uf = as_float_vector(u, s.size(0), "u");
  return dispatch_dense(s, [&](const auto& src) {
    return col_lse_impl(src, s.size(0), s.size(1), uf.data_ptr<float>(), (float)inv_eps);
  });
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_row_step(const at::Tensor& scores, const at::Tensor& v, double inv_eps,
                                                     double log_m) {
  at::Tensor s = checked_scores(scores);
  at::Tensor vf = as_float_vector(v, s.size(1), "v");
  return dispatch_dense(s, [&](const auto& src) {
    return row_step_impl(src, s.size(0), s.size(1), vf.data_ptr<float>(), (float)inv_eps, log_m);
  });
}

at::Tensor sinkhorn_assign(const at::Tensor& scores, const at::Tensor& v, double inv_eps) {
  at::Tensor s = checked_scores(scores);
  at::Tensor vf = as_float_vector(v, s.size(1), "v");
  return dispatch_dense(s, [&](const auto& src) {
    return assign_impl(src, s.size(0), s.size(1), vf.data_ptr<float>(), (float)inv_eps);
  });
}

at::Tensor sinkhorn_plan(const at::Tensor& scores, const at::Tensor& u, const at::Tensor& v, double inv_eps,
                         double log_m) {
  at::Tensor s = checked_scores(scores);
  const int64_t m = s.size(0), k = s.size(1);
  at::Tensor uf = as_float_vector(u, m, "u"), vf = as_float_vector(v, k, "v");
  at::Tensor out = at::empty({m, k}, at::kFloat);
  const float ie = (float)inv_eps, lm = (float)log_m;
  const float* pu = uf.data_ptr<float>();
  const float* pv = vf.data_ptr<float>();
  float* po = out.data_ptr<float>();
  dispatch_dense(s, [&](const auto& src) {
    using Source = std::decay_t<decltype(src)>;
    const bool wide = avx512::supported();
    Buffers tiles = thread_buffers(Source::chunk * k, src.needs_buffer());
    at::parallel_for(0, num_chunks(m, Source::chunk), 1, [&](int64_t b, int64_t e) {
      const int64_t tid = at::get_thread_num();
      const int64_t W = Vec::size();
      for (int64_t ch = b; ch < e; ++ch) {
        const int64_t r0 = ch * Source::chunk, n = std::min(Source::chunk, m - r0);
        const float* tile = src.rows(r0, n, tiles.get(tid, Source::chunk * k));
        for (int64_t i = 0; i < n; ++i) {
          const float* row = tile + i * k;
          float* orow = po + (r0 + i) * k;
          if (wide) {
            avx512::plan_row(row, ie, pu[r0 + i], pv, lm, orow, k);
            continue;
          }
          const Vec vie(ie), vu(pu[r0 + i]), vlm(lm);
          // ((S·ie + u_i) + v_k) + log_m, rounded step by step as in the reference
          int64_t q = 0;
          for (; q + W <= k; q += W) (((Vec::loadu(row + q) * vie + vu) + Vec::loadu(pv + q)) + vlm).exp().store(orow + q);
          if (q < k) {
            const int64_t r = k - q;
            (((Vec::loadu(row + q, r) * vie + vu) + Vec::loadu(pv + q, r)) + vlm).exp().store(orow + q, r);
          }
        }
      }
    });
    return 0;
  });
  return out;
}

at::Tensor streaming_col_lse(const at::Tensor& x, const at::Tensor& c, const at::Tensor& u, double inv_eps) {
  FactorScores src = checked_factors(x, c);
  at::Tensor uf = as_float_vector(u, x.size(0), "u");
  return col_lse_impl(src, x.size(0), c.size(0), uf.data_ptr<float>(), (float)inv_eps);
}

std::tuple<at::Tensor, at::Tensor> streaming_row_step(const at::Tensor& x, const at::Tensor& c, const at::Tensor& v,
                                                      double inv_eps, double log_m) {
  FactorScores src = checked_factors(x, c);
  at::Tensor vf = as_float_vector(v, c.size(0), "v");
  return row_step_impl(src, x.size(0), c.size(0), vf.data_ptr<float>(), (float)inv_eps, log_m);
}

at::Tensor streaming_assign(const at::Tensor& x, const at::Tensor& c, const at::Tensor& v, double inv_eps) {
  FactorScores src = checked_factors(x, c);
  at::Tensor vf = as_float_vector(v, c.size(0), "v");
  return assign_impl(src, x.size(0), c.size(0), vf.data_ptr<float>(), (float)inv_eps);
}

}  // namespace sigma_cpu
