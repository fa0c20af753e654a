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
#include "sigma_common.h"

#include <ATen/ops/full.h>

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

// Exact column LSE_i(S_ik·ie + u_i): per chunk a column max pass then a shifted exp-sum pass
// over the (cached) chunk, chunks merged in order with rescaling.
template <class Rows, class Source>
at::Tensor col_lse_impl(const Source& src, int64_t m, int64_t k, const float* u, float ie) {
  const int64_t nch = num_chunks(m, Source::chunk);
  at::Tensor pmax = at::empty({nch, k}, at::kFloat), psum = at::empty({nch, k}, at::kFloat);
  float* pm = pmax.data_ptr<float>();
  float* ps = psum.data_ptr<float>();
  Buffers tiles = thread_buffers(Source::chunk * k, src.needs_buffer());
  at::Tensor shifts_t = at::empty({at::get_num_threads() * k}, at::kFloat);
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
      for (int64_t i = 0; i < n; ++i) Rows::col_max_row(tile + i * k, ie, u[r0 + i], cm, k);
      for (int64_t q = 0; q < k; ++q) sh[q] = lse_shift(cm[q]);
      // 8 rows per sweep: the column sums stay in registers across them
      for (int64_t i = 0; i < n; i += 8)
        Rows::col_expsum_rows(tile + i * k, std::min<int64_t>(8, n - i), k, ie, u + r0 + i, sh, cs, k);
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
template <class Rows, class Source>
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
          const float* srow = tile + (g + j) * k;
          float sh;
          const float sum = Rows::row_exp(srow, ie, v, eb + j * k, k, g + j + 1 < n ? srow + k : nullptr, &sh);
          // The row max contributes exp(0) = 1, so sum < 1 only for a row without a finite logit
          // (max -inf, shift 0, every exp clamped to ~0): its u is +inf, as the reference's
          // LSE = -inf gives (a finite u would leave a plan row summing to 0).
          const float ui = sum < 1.f ? std::numeric_limits<float>::infinity() : neg_log_m - (sh + std::log(sum));
          u[r0 + g + j] = ui;
          alpha[j] = (float)std::exp((double)ui + (double)sh);
        }
        Rows::fold_rows(col, eb, alpha, gn, k);
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
    at::Tensor exact = col_lse_impl<Rows>(src, m, k, u, ie);
    const float* ex = exact.data_ptr<float>();
    for (int64_t q = 0; q < k; ++q)
      if (flagged[q]) col[q] = ex[q];
  }
  return {u_t, col_t};
}

// Hard labels of S_ik·ie + v_k (`hard_label`: near-ties -> lowest index, NaN first); with `entropy`,
// also Σ_i H(softmax_k(S_ik·ie + v_k)) (summed per chunk in double, chunks in order: independent of
// the thread count).
template <class Rows, class Source>
std::tuple<at::Tensor, at::Tensor> assign_impl(const Source& src, int64_t m, int64_t k, const float* v, float ie,
                                               bool entropy) {
  const int64_t nch = num_chunks(m, Source::chunk);
  at::Tensor out = at::empty({m}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  std::vector<double> hsums(nch, 0.0);
  Buffers tiles = thread_buffers(Source::chunk * k, src.needs_buffer());
  Buffers rbufs = thread_buffers(k, true);
  const float vmag = potential_scale(v, k);
  at::parallel_for(0, nch, 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    float* rb = rbufs.get(tid, k);
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * Source::chunk, n = std::min(Source::chunk, m - r0);
      const float* tile = src.rows(r0, n, tiles.get(tid, Source::chunk * k));
      double hs = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        float h = 0.f;
        o[r0 + i] = hard_label<Rows>(tile + i * k, ie, v, vmag, rb, k, entropy ? &h : nullptr);
        hs += h;
      }
      hsums[ch] = hs;
    }
  });
  double total = 0.0;
  for (double h : hsums) total += h;
  return {out, entropy ? at::full({}, total, at::kFloat) : at::empty({0}, at::kFloat)};
}

// LSE_k(S_ik·scale) per row (M,)
template <class Rows, class Source>
at::Tensor row_lse_impl(const Source& src, int64_t m, int64_t k, float scale) {
  at::Tensor out = at::empty({m}, at::kFloat);
  float* o = out.data_ptr<float>();
  const std::vector<float> zeros(k, 0.f);
  Buffers tiles = thread_buffers(Source::chunk * k, src.needs_buffer());
  Buffers rbufs = thread_buffers(k, true);
  at::parallel_for(0, num_chunks(m, Source::chunk), 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    float* rb = rbufs.get(tid, k);
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * Source::chunk, n = std::min(Source::chunk, m - r0);
      const float* tile = src.rows(r0, n, tiles.get(tid, Source::chunk * k));
      for (int64_t i = 0; i < n; ++i) {
        float sh;
        const float sum = Rows::row_exp(tile + i * k, scale, zeros.data(), rb, k, nullptr, &sh);
        o[r0 + i] = lse_from_shifted_sum(sh, sum);
      }
    }
  });
  return out;
}

template <class Rows, class Source>
void plan_impl(const Source& src, int64_t m, int64_t k, const float* pu, const float* pv, float ie, float lm,
               float* po) {
  Buffers tiles = thread_buffers(Source::chunk * k, src.needs_buffer());
  at::parallel_for(0, num_chunks(m, Source::chunk), 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * Source::chunk, n = std::min(Source::chunk, m - r0);
      const float* tile = src.rows(r0, n, tiles.get(tid, Source::chunk * k));
      for (int64_t i = 0; i < n; ++i) Rows::plan_row(tile + i * k, ie, pu[r0 + i], pv, lm, po + (r0 + i) * k, k);
    }
  });
}

// Σ_k |exp(v_k + col_k) - 1/K| (the column marginal error of the plan, as _sinkhorn_loop.py)
float marginal_error(const float* v, const float* col, int64_t k, double log_k) {
  const float target = (float)std::exp(-log_k);
  float err = 0.f;
  for (int64_t q = 0; q < k; ++q) err += std::fabs(std::exp(v[q] + col[q]) - target);
  return err;
}

// ---- Exp-domain Sinkhorn on stored scores ------------------------------------------------------
//
// E_ik = exp(S_ik·ε⁻¹ − r_i), r_i = max_k S_ik·ε⁻¹, is computed once (one exp per score per
// solve). With b_k = exp(v_k − max v) the token step is a matrix-vector product and the
// prototype sums a weighted column sum, both on E (one read of E per iteration, no exp):
//   R_i = Σ_k E_ik b_k,   u_i = −log M − (r_i + max v + log R_i),
//   col_k = LSE_i(S_ik·ε⁻¹ + u_i) = −log M − max v + log Σ_i E_ik / R_i.
// The potentials stay logarithms (u, v as in the log domain), so scalings never leave the float
// range. Exactness guards (everything else is fp32 rounding of the same sums):
// - every E_ik is a normal float when the score range (max S − min S)·ε⁻¹ ≤ kMaxExpRange; else
//   the whole solve runs in the log domain (e.g. ε = 1e-3);
// - a row sum R_i < K·1e-30 or a column sum < M·1e-30 could have lost terms below FLT_MIN: that
//   iteration is redone in the log domain and the solve stays there (rows), or those columns
//   are recomputed exactly (columns), as in row_step_impl.
// The plan is then Q_ik = M·exp(S_ik·ε⁻¹ + u_i + v_k) = E_ik·b_k / R_i, written over E.
constexpr float kMaxExpRange = 80.f;

template <class Rows, class Source>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> solve_dense_impl(const Source& src, int64_t m, int64_t k,
                                                                            float ie, int64_t n_iters, double tol,
                                                                            int64_t check_every, bool want_plan) {
  const double log_m = std::log((double)m), log_k = std::log((double)k);
  const int64_t chunk = kRowChunk;
  const int64_t nch = num_chunks(m, chunk);
  at::Tensor e_t = at::empty({m, k}, at::kFloat);
  advise_huge_pages(e_t);
  at::Tensor r_t = at::empty({m}, at::kFloat), rs_t = at::empty({m}, at::kFloat);
  at::Tensor partial = at::empty({nch, k}, at::kFloat);
  float* E = e_t.data_ptr<float>();
  float* r = r_t.data_ptr<float>();
  float* R = rs_t.data_ptr<float>();
  float* pc = partial.data_ptr<float>();
  std::vector<float> gch(nch);
  std::vector<char> range_ok(nch, 1);
  Buffers tiles = thread_buffers(chunk * k, src.needs_buffer());

  // E, r and the chunk partials of Σ_i E_ik·exp(r_i − g_c) (the initial column LSE at u = 0).
  // The partials are folded right after each group's exps (rows still in cache) relative to the
  // chunk's first row max; a chunk whose row maxima spread further than kMaxExpRange is refolded
  // relative to its largest one.
  at::parallel_for(0, nch, 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * chunk, n = std::min(chunk, m - r0);
      const float* tile = src.rows(r0, n, tiles.get(tid, chunk * k));
      float* col = pc + ch * k;
      std::fill(col, col + k, 0.f);
      float g = -std::numeric_limits<float>::infinity(), ref = 0.f;
      bool ok = true, fused = true;
      for (int64_t i = 0; i < n; i += kFoldRows) {
        const int64_t gn = std::min(kFoldRows, n - i);
        float alpha[kFoldRows];
        for (int64_t j = 0; j < gn; ++j) {
          const int64_t row = r0 + i + j;
          float mx, mn;
          Rows::exp_row(tile + (i + j) * k, ie, E + row * k, k, &mx, &mn);
          r[row] = mx;
          ok = ok && (mx - mn <= kMaxExpRange);  // false for NaN and infinities
          g = std::fmax(g, mx);
          if (row == r0) ref = mx;
          const float d = mx - ref;
          fused = fused && d <= kMaxExpRange;
          alpha[j] = (float)std::exp((double)d);
        }
        if (fused) Rows::fold_rows(col, E + (r0 + i) * k, alpha, gn, k);
      }
      range_ok[ch] = ok;
      gch[ch] = fused ? ref : g;
      if (!ok || fused) continue;
      std::fill(col, col + k, 0.f);
      for (int64_t i = 0; i < n; i += kFoldRows) {
        const int64_t gn = std::min(kFoldRows, n - i);
        float alpha[kFoldRows];
        for (int64_t j = 0; j < gn; ++j) alpha[j] = (float)std::exp((double)r[r0 + i + j] - (double)g);
        Rows::fold_rows(col, E + (r0 + i) * k, alpha, gn, k);
      }
    }
  });
  bool exp_mode = std::all_of(range_ok.begin(), range_ok.end(), [](char c) { return c != 0; });
  float gmax = -std::numeric_limits<float>::infinity();
  for (float g : gch) gmax = std::fmax(gmax, g);
  exp_mode = exp_mode && std::isfinite(gmax);

  at::Tensor u_t = at::zeros({m}, at::kFloat), col_t = at::empty({k}, at::kFloat);
  float* u = u_t.data_ptr<float>();
  float* col = col_t.data_ptr<float>();
  std::vector<char> flagged(k, 0);
  // Column sums of the chunk partials (scaled by exp(g_c − gmax) when scales differ); flags small ones.
  auto merge_cols = [&](const std::vector<double>& scale, double offset) {
    const double threshold = (double)m * 1e-30;
    at::parallel_for(0, k, 256, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) {
        double s = 0.0;
        for (int64_t ch = 0; ch < nch; ++ch) s += (double)pc[ch * k + q] * scale[ch];
        flagged[q] = !(s >= threshold);
        col[q] = (float)(offset + std::log(s));
      }
    });
    return std::find(flagged.begin(), flagged.end(), 1) != flagged.end();
  };
  auto fix_cols = [&]() {
    at::Tensor exact = col_lse_impl<Rows>(src, m, k, u, ie);
    const float* ex = exact.data_ptr<float>();
    for (int64_t q = 0; q < k; ++q)
      if (flagged[q]) col[q] = ex[q];
  };
  if (exp_mode) {
    std::vector<double> scale(nch);
    for (int64_t ch = 0; ch < nch; ++ch) scale[ch] = std::exp((double)gch[ch] - (double)gmax);
    if (merge_cols(scale, (double)gmax)) fix_cols();
  } else {
    e_t = at::Tensor();  // not needed in the log domain
    col_t = col_lse_impl<Rows>(src, m, k, u, ie);
    col = col_t.data_ptr<float>();
  }

  at::Tensor v_t = at::empty({k}, at::kFloat);
  float* v = v_t.data_ptr<float>();
  std::vector<float> bvec(k);
  const std::vector<double> ones(nch, 1.0);
  float vmax = 0.f;
  bool plan_written = false;  // E already holds the plan (see write_plan)
  for (int64_t it = 1; it <= n_iters; ++it) {
    for (int64_t q = 0; q < k; ++q) v[q] = (float)(-log_k) - col[q];
    bool done = false;
    if (exp_mode) {
      vmax = -std::numeric_limits<float>::infinity();
      for (int64_t q = 0; q < k; ++q) vmax = std::fmax(vmax, v[q]);
      if (std::isfinite(vmax)) {
        for (int64_t q = 0; q < k; ++q) bvec[q] = (float)std::exp((double)v[q] - (double)vmax);
        const float* bv = bvec.data();
        const float rmin = (float)k * 1e-30f;
        std::vector<char> row_bad(nch, 0);
        const float neg_log_m = (float)(-log_m);
        // The plan Q_ik = E_ik·b_k / R_i needs this iteration's b and R only: on the last iteration
        // it is written over each row group right after the group is folded (still in cache),
        // instead of in one more pass over E. (With tol, the last iteration is not known ahead.)
        const bool write_plan = want_plan && it == n_iters;
        at::parallel_for(0, nch, 1, [&](int64_t b, int64_t e) {
          for (int64_t ch = b; ch < e; ++ch) {
            const int64_t r0 = ch * chunk, n = std::min(chunk, m - r0);
            float* pcol = pc + ch * k;
            std::fill(pcol, pcol + k, 0.f);
            bool bad = false;
            for (int64_t i = 0; i < n; i += kFoldRows) {
              const int64_t gn = std::min(kFoldRows, n - i);
              float alpha[kFoldRows];
              for (int64_t j = 0; j < gn; ++j) {
                const int64_t row = r0 + i + j;
                const float s = Rows::dot(E + row * k, bv, k);
                bad = bad || !(s >= rmin);
                R[row] = s;
                alpha[j] = 1.f / s;
                u[row] = neg_log_m - ((r[row] + vmax) + std::log(s));
              }
              Rows::fold_rows(pcol, E + (r0 + i) * k, alpha, gn, k);
              if (write_plan)
                for (int64_t j = 0; j < gn; ++j) {
                  float* er = E + (r0 + i + j) * k;
                  Rows::scaled_row(er, bv, alpha[j], er, k);
                }
            }
            row_bad[ch] = bad;
          }
        });
        if (std::none_of(row_bad.begin(), row_bad.end(), [](char c) { return c != 0; })) {
          if (merge_cols(ones, -log_m - (double)vmax)) fix_cols();
          done = true;
          plan_written = write_plan;
        }
      }
      if (!done) {
        exp_mode = false;  // the log domain from here on (exact for any range)
        e_t = at::Tensor();
      }
    }
    if (!done) {
      auto [nu, ncol] = row_step_impl<Rows>(src, m, k, v, ie, log_m);
      u_t = nu;
      col_t = ncol;
      u = u_t.data_ptr<float>();
      col = col_t.data_ptr<float>();
    }
    if (tol > 0 && it % check_every == 0 && it < n_iters && marginal_error(v, col, k, log_k) <= tol) break;
  }
  at::Tensor err = at::full({}, marginal_error(v, col, k, log_k), at::kFloat);
  at::Tensor plan = at::empty({0}, at::kFloat);
  if (want_plan) {
    if (exp_mode) {
      // Q_ik = E_ik·b_k / R_i, in place over E (R and b belong to the final v)
      const float* bv = bvec.data();
      if (!plan_written)
        at::parallel_for(0, m, 64, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) Rows::scaled_row(E + i * k, bv, 1.f / R[i], E + i * k, k);
        });
      plan = e_t;
    } else {
      plan = at::empty({m, k}, at::kFloat);
      plan_impl<Rows>(src, m, k, u, v, ie, (float)log_m, plan.data_ptr<float>());
    }
  }
  return {u_t, v_t, err, plan};
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
  return with_rows([&](auto rows) {
    return dispatch_dense(s, [&](const auto& src) {
      return col_lse_impl<decltype(rows)>(src, s.size(0), s.size(1), uf.data_ptr<float>(), (float)inv_eps);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_row_step(const at::Tensor& scores, const at::Tensor& v, double inv_eps,
                                                     double log_m) {
  at::Tensor s = checked_scores(scores);
  at::Tensor vf = as_float_vector(v, s.size(1), "v");
  return with_rows([&](auto rows) {
    return dispatch_dense(s, [&](const auto& src) {
      return row_step_impl<decltype(rows)>(src, s.size(0), s.size(1), vf.data_ptr<float>(), (float)inv_eps, log_m);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_assign_entropy(const at::Tensor& scores, const at::Tensor& v,
                                                           double inv_eps, bool entropy) {
  at::Tensor s = checked_scores(scores);
  at::Tensor vf = as_float_vector(v, s.size(1), "v");
  return with_rows([&](auto rows) {
    return dispatch_dense(s, [&](const auto& src) {
      return assign_impl<decltype(rows)>(src, s.size(0), s.size(1), vf.data_ptr<float>(), (float)inv_eps, entropy);
    });
  });
}

at::Tensor sinkhorn_assign(const at::Tensor& scores, const at::Tensor& v, double inv_eps) {
  return std::get<0>(sinkhorn_assign_entropy(scores, v, inv_eps, false));
}

at::Tensor scores_product(const at::Tensor& x, const at::Tensor& c) {
  check_matrix(x, "x");
  check_matrix(c, "c");
  TORCH_CHECK(x.size(1) == c.size(1), "x (M, D) and c (K, D) must have the same D, got ", x.sizes(), " and ",
              c.sizes());
  TORCH_CHECK(x.scalar_type() == c.scalar_type() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "x and c must both be float32 or both float64, got ", x.scalar_type(), " and ", c.scalar_type());
  at::Tensor out = at::empty({x.size(0), c.size(0)}, x.options());
  advise_huge_pages(out);  // before at::mm_out's first write (see advise_huge_pages)
  at::mm_out(out, x.detach(), c.detach().t());
  return out;
}

at::Tensor row_logsumexp(const at::Tensor& scores, double scale) {
  at::Tensor s = checked_scores(scores);
  return with_rows([&](auto rows) {
    return dispatch_dense(s, [&](const auto& src) {
      return row_lse_impl<decltype(rows)>(src, s.size(0), s.size(1), (float)scale);
    });
  });
}

at::Tensor sinkhorn_plan(const at::Tensor& scores, const at::Tensor& u, const at::Tensor& v, double inv_eps,
                         double log_m) {
  at::Tensor s = checked_scores(scores);
  const int64_t m = s.size(0), k = s.size(1);
  at::Tensor uf = as_float_vector(u, m, "u"), vf = as_float_vector(v, k, "v");
  at::Tensor out = at::empty({m, k}, at::kFloat);
  with_rows([&](auto rows) {
    return dispatch_dense(s, [&](const auto& src) {
      plan_impl<decltype(rows)>(src, m, k, uf.data_ptr<float>(), vf.data_ptr<float>(), (float)inv_eps, (float)log_m,
                                out.data_ptr<float>());
      return 0;
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_solve_dense(const at::Tensor& scores,
                                                                                double inv_eps, int64_t n_iters,
                                                                                double tol, int64_t check_every,
                                                                                bool want_plan) {
  at::Tensor s = checked_scores(scores);
  TORCH_CHECK(s.size(0) > 0, "scores must have at least one row (M > 0)");
  TORCH_CHECK(n_iters >= 1 && check_every >= 1, "n_iters and check_every must be >= 1");
  return with_rows([&](auto rows) {
    return dispatch_dense(s, [&](const auto& src) {
      return solve_dense_impl<decltype(rows)>(src, s.size(0), s.size(1), (float)inv_eps, n_iters, tol, check_every,
                                              want_plan);
    });
  });
}

at::Tensor streaming_col_lse(const at::Tensor& x, const at::Tensor& c, const at::Tensor& u, double inv_eps) {
  FactorScores src = checked_factors(x, c);
  at::Tensor uf = as_float_vector(u, x.size(0), "u");
  return with_rows([&](auto rows) {
    return col_lse_impl<decltype(rows)>(src, x.size(0), c.size(0), uf.data_ptr<float>(), (float)inv_eps);
  });
}

std::tuple<at::Tensor, at::Tensor> streaming_row_step(const at::Tensor& x, const at::Tensor& c, const at::Tensor& v,
                                                      double inv_eps, double log_m) {
  FactorScores src = checked_factors(x, c);
  at::Tensor vf = as_float_vector(v, c.size(0), "v");
  return with_rows([&](auto rows) {
    return row_step_impl<decltype(rows)>(src, x.size(0), c.size(0), vf.data_ptr<float>(), (float)inv_eps, log_m);
  });
}

std::tuple<at::Tensor, at::Tensor> streaming_assign_entropy(const at::Tensor& x, const at::Tensor& c,
                                                            const at::Tensor& v, double inv_eps, bool entropy) {
  FactorScores src = checked_factors(x, c);
  at::Tensor vf = as_float_vector(v, c.size(0), "v");
  return with_rows([&](auto rows) {
    return assign_impl<decltype(rows)>(src, x.size(0), c.size(0), vf.data_ptr<float>(), (float)inv_eps, entropy);
  });
}

at::Tensor streaming_assign(const at::Tensor& x, const at::Tensor& c, const at::Tensor& v, double inv_eps) {
  return std::get<0>(streaming_assign_entropy(x, c, v, inv_eps, false));
}

}  // namespace sigma_cpu
