// Fused linear + cross-entropy on the CPU: logits = scale·x·cᵀ are formed one row chunk
// (kGemmRowChunk × K, fp32) at a time per thread and never stored whole. The forward keeps only the
// row LSE; the backward recomputes the chunk, turns it into dlogits in place and feeds two GEMMs:
// dx rows directly, dc into a per-thread fp32 accumulator summed at the end.
// Targets: int64 indices (M,), probabilities (M, K) (need not sum to 1), or computed on the fly
// from another factored score matrix as softmax_k(y·cyᵀ·inv_eps + v) (soft) or its hard label (`hard_label`).
#include "sigma_common.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/full.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace sigma_cpu {
namespace {

enum class TargetKind { kIndex, kProbs, kSinkhornSoft, kSinkhornHard };

// Where the targets of a chunk come from, and the scratch they may need.
struct Targets {
  TargetKind kind;
  const int64_t* index = nullptr;  // kIndex
  at::Tensor probs;                // kProbs: (M, K) contiguous, any floating dtype
  at::Tensor y, cy;                // kSinkhorn*: fp32 contiguous (M, Dy), (K, Dy)
  const float* v = nullptr;
  float inv_eps = 0.f;
  float vmag = 0.f;  // potential_scale(v)

  bool is_hard() const { return kind == TargetKind::kIndex || kind == TargetKind::kSinkhornHard; }
  bool needs_tile() const {
    return kind == TargetKind::kSinkhornSoft || kind == TargetKind::kSinkhornHard ||
           (kind == TargetKind::kProbs && probs.scalar_type() != at::kFloat);
  }

  // Fills either idx (n) or returns fp32 probability rows (n × k) for rows [r0, r0+n).
  const float* chunk(int64_t r0, int64_t n, int64_t k, float* tile, int64_t* idx) const {
    switch (kind) {
      case TargetKind::kIndex:
        for (int64_t i = 0; i < n; ++i) {
          const int64_t t = index[r0 + i];
          TORCH_CHECK(t >= 0 && t < k, "target indices must be in [0, ", k, "), got ", t, " at row ", r0 + i);
          idx[i] = t;
        }
        return nullptr;
      case TargetKind::kProbs: {
        if (probs.scalar_type() == at::kFloat) return probs.data_ptr<float>() + r0 * k;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, probs.scalar_type(), "sigma_ce_probs", [&] {
          rows_to_float(probs.data_ptr<scalar_t>() + r0 * k, tile, n * k);
        });
        return tile;
      }
      default: {
        at::Tensor out = at::from_blob(tile, {n, k}, y.options());
        at::mm_out(out, y.narrow(0, r0, n), cy.t());
        for (int64_t i = 0; i < n; ++i) {
          float* row = tile + i * k;
          if (kind == TargetKind::kSinkhornHard) {
            idx[i] = hard_label<Avx2Rows>(row, inv_eps, v, vmag, row, k);
          } else {
            const float mx = scale_add_max(row, inv_eps, v, row, k);
            const float sum = exp_shift_sum_inplace(row, lse_shift(mx), k);
            const Vec rs(1.f / sum);
            int64_t q = 0;
            for (; q + Vec::size() <= k; q += Vec::size()) (Vec::loadu(row + q) * rs).store(row + q);
            for (; q < k; ++q) row[q] *= 1.f / sum;
          }
        }
        return kind == TargetKind::kSinkhornHard ? nullptr : tile;
      }
    }
  }
};

struct Operands {
  at::Tensor x, c;  // fp32 contiguous (M, D), (K, D)
  int64_t m, k;
};

Operands checked_operands(const at::Tensor& x, const at::Tensor& c) {
  check_matrix(x, "x");
  check_matrix(c, "c");
  TORCH_CHECK(x.size(1) == c.size(1), "x (M, D) and c (K, D) must have the same D, got ", x.sizes(), " and ",
              c.sizes());
  TORCH_CHECK(c.size(0) > 0, "c must have at least one row (K > 0)");
  // detached: worker threads do not inherit the caller's no-grad mode
  return Operands{x.detach().to(at::kFloat).contiguous(), c.detach().to(at::kFloat).contiguous(), x.size(0), c.size(0)};
}

Targets given_targets(const at::Tensor& target, int64_t m, int64_t k) {
  TORCH_CHECK(target.device().is_cpu(), "target must be a CPU tensor, got ", target.device());
  Targets t;
  if (!target.is_floating_point()) {
    TORCH_CHECK(target.scalar_type() == at::kLong, "hard targets must be int64 class indices, got ",
                target.scalar_type());
    TORCH_CHECK(target.dim() == 1 && target.size(0) == m, "hard target must have shape (", m, ",), got ",
                target.sizes());
    t.kind = TargetKind::kIndex;
    t.probs = target.contiguous();  // keeps the storage alive
    t.index = t.probs.data_ptr<int64_t>();
  } else {
    TORCH_CHECK(target.dim() == 2 && target.size(0) == m && target.size(1) == k, "soft target must have shape (",
                m, ", ", k, "), got ", target.sizes());
    t.kind = TargetKind::kProbs;
    t.probs = target.contiguous();
  }
  return t;
}

Targets sinkhorn_targets(const at::Tensor& y, const at::Tensor& cy, const at::Tensor& v_float, double inv_eps,
                         bool soft, int64_t m, int64_t k) {
  check_matrix(y, "y");
  check_matrix(cy, "cy");
  TORCH_CHECK(y.size(0) == m, "y must have M=", m, " rows, got ", y.sizes());
  TORCH_CHECK(cy.size(0) == k, "cy must have K=", k, " rows, got ", cy.sizes());
  TORCH_CHECK(y.size(1) == cy.size(1), "y and cy must have the same D, got ", y.sizes(), " and ", cy.sizes());
  Targets t;
  t.kind = soft ? TargetKind::kSinkhornSoft : TargetKind::kSinkhornHard;
  t.y = y.detach().to(at::kFloat).contiguous();
  t.cy = cy.detach().to(at::kFloat).contiguous();
  t.v = v_float.data_ptr<float>();
  t.inv_eps = (float)inv_eps;
  t.vmag = potential_scale(t.v, k);
  return t;
}

// logits tile of rows [r0, r0+n): scale·(x·cᵀ), product rounded first as in the reference.
// 1/Σ of a softmax row kept as shifted exps (Rows::row_exp's sum, which is >= 1 unless no logit is
// finite): NaN for such a row, whose softmax torch gives as NaN.
inline float inverse_row_sum(float sum) { return sum < 1.f ? std::numeric_limits<float>::quiet_NaN() : 1.f / sum; }

// The hard label (as sinkhorn_assign: `hard_label`, vmag = potential_scale(add)) and the entropy of
// softmax_k(src·f + add), given the row's shifted exps e, their sum and shift: H = log Σe −
// Σ e·(t − shift) / Σe, terms below the float range counting as 0; NaN for a row without a finite
// logit. t receives the logits.
template <class Rows>
int64_t label_and_entropy(const float* src, float f, const float* add, float vmag, const float* e, float sum,
                          float shift, float* t, int64_t k, double* h) {
  const int64_t label = hard_label<Rows>(src, f, add, vmag, t, k);
  *h = sum < 1.f ? std::numeric_limits<double>::quiet_NaN()
                 : std::log(sum) - exp_weighted_shift_sum(e, t, shift, k) / sum;
  return label;
}

inline float* logits_chunk(const Operands& op, int64_t r0, int64_t n, float scale, float* tile) {
  at::Tensor out = at::from_blob(tile, {n, op.k}, op.x.options());
  at::mm_out(out, op.x.narrow(0, r0, n), op.c.t());
  at::vec::map([scale](Vec a) { return a * Vec(scale); }, tile, tile, n * op.k);
  return tile;
}

inline float row_dot(const float* a, const float* b, int64_t n, float* sum_a) {
  const int64_t W = Vec::size();
  Vec d(0.f), s(0.f);
  int64_t q = 0;
  for (; q + W <= n; q += W) {
    Vec va = Vec::loadu(a + q);
    d = at::vec::fmadd(va, Vec::loadu(b + q), d);
    s = s + va;
  }
  float dd = hsum(d), ss = hsum(s);
  for (; q < n; ++q) {
    dd = std::fma(a[q], b[q], dd);
    ss += a[q];
  }
  *sum_a = ss;
  return dd;
}

std::tuple<at::Tensor, at::Tensor> forward_impl(const Operands& op, const Targets& tg, float scale) {
  const int64_t m = op.m, k = op.k;
  at::Tensor loss = at::empty({m}, at::kFloat), lse = at::empty({m}, at::kFloat);
  float* pl = loss.data_ptr<float>();
  float* pe = lse.data_ptr<float>();
  const int64_t nt = at::get_num_threads(), per = kGemmRowChunk * k;
  at::Tensor ltiles = at::empty({nt * per}, at::kFloat);
  at::Tensor ttiles = at::empty({tg.needs_tile() ? nt * per : 0}, at::kFloat);
  at::Tensor idxbuf = at::empty({nt * kGemmRowChunk}, at::kLong);
  at::parallel_for(0, num_chunks(m, kGemmRowChunk), 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    float* lt = ltiles.data_ptr<float>() + tid * per;
    float* tt = tg.needs_tile() ? ttiles.data_ptr<float>() + tid * per : nullptr;
    int64_t* idx = idxbuf.data_ptr<int64_t>() + tid * kGemmRowChunk;
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * kGemmRowChunk, n = std::min(kGemmRowChunk, m - r0);
      const float* probs = tg.chunk(r0, n, k, tt, idx);
      const float* logits = logits_chunk(op, r0, n, scale, lt);
      for (int64_t i = 0; i < n; ++i) {
        const float* row = logits + i * k;
        float mx = -std::numeric_limits<float>::infinity();
        {
          Vec vm(mx);
          int64_t q = 0;
          for (; q + Vec::size() <= k; q += Vec::size()) vm = fast_max(vm, Vec::loadu(row + q));
          mx = hmax(vm);
          for (; q < k; ++q) mx = std::fmax(mx, row[q]);
        }
        const float sh = lse_shift(mx);
        const float l = sh + std::log(exp_shift_sum(row, sh, k));
        pe[r0 + i] = l;
        if (tg.is_hard()) {
          pl[r0 + i] = l - row[idx[i]];
        } else {
          float tsum;
          const float dot = row_dot(probs + i * k, row, k, &tsum);
          pl[r0 + i] = tsum * l - dot;
        }
      }
    }
  });
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad, const Operands& op, const Targets& tg,
                                                 const at::Tensor& lse_in, float scale, at::ScalarType x_dtype,
                                                 at::ScalarType c_dtype, bool need_dx, bool need_dc) {
  const int64_t m = op.m, k = op.k, d = op.x.size(1);
  at::Tensor gf = as_float_vector(grad, m, "grad");
  at::Tensor lf = as_float_vector(lse_in, m, "lse");
  const float* pg = gf.data_ptr<float>();
  const float* plse = lf.data_ptr<float>();
  // A gradient not asked for is returned as an empty (0,) tensor and its GEMM is skipped.
  at::Tensor skipped = at::empty({0}, at::kFloat);
  if (!need_dx && !need_dc) return {skipped, skipped};
  at::Tensor dx = need_dx ? at::empty({m, d}, at::kFloat) : skipped;
  const int64_t nt = at::get_num_threads(), per = kGemmRowChunk * k;
  ThreadPartials dc_parts(k, d, need_dc);
  at::Tensor ltiles = at::empty({nt * per}, at::kFloat);
  at::Tensor ttiles = at::empty({tg.needs_tile() ? nt * per : 0}, at::kFloat);
  at::Tensor idxbuf = at::empty({nt * kGemmRowChunk}, at::kLong);
  at::parallel_for(0, num_chunks(m, kGemmRowChunk), 1, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    float* lt = ltiles.data_ptr<float>() + tid * per;
    float* tt = tg.needs_tile() ? ttiles.data_ptr<float>() + tid * per : nullptr;
    int64_t* idx = idxbuf.data_ptr<int64_t>() + tid * kGemmRowChunk;
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t r0 = ch * kGemmRowChunk, n = std::min(kGemmRowChunk, m - r0);
      const float* probs = tg.chunk(r0, n, k, tt, idx);
      float* g = logits_chunk(op, r0, n, scale, lt);
      for (int64_t i = 0; i < n; ++i) {
        float* row = g + i * k;
        const float gi = pg[r0 + i];
        const float l = plse[r0 + i];
        if (tg.is_hard()) {
          const float p_t = std::exp(row[idx[i]] - l);
          // dlogit = (softmax - onehot)·grad·scale
          at::vec::map([l, gi, scale](Vec a) { return (fast_exp(a - Vec(l)) * Vec(gi)) * Vec(scale); }, row, row, k);
          row[idx[i]] = ((p_t - 1.f) * gi) * scale;
        } else {
          const float* t = probs + i * k;
          float tsum = 0.f;
          {
            Vec s(0.f);
            int64_t q = 0;
            for (; q + Vec::size() <= k; q += Vec::size()) s = s + Vec::loadu(t + q);
            tsum = hsum(s);
            for (; q < k; ++q) tsum += t[q];
          }
          // dlogit = (softmax·Σt - t)·grad·scale
          at::vec::map2([l, gi, scale, tsum](Vec a, Vec tv) {
            return ((fast_exp(a - Vec(l)) * Vec(tsum) - tv) * Vec(gi)) * Vec(scale);
          }, row, row, t, k);
        }
      }
      at::Tensor gt = at::from_blob(g, {n, k}, op.x.options());
      if (need_dx) {
        at::Tensor dx_rows = dx.narrow(0, r0, n);
        at::mm_out(dx_rows, gt, op.c);
      }
      if (need_dc) dc_parts.add_product(tid, gt.t(), op.x.narrow(0, r0, n));
    }
  });
  return {need_dx ? dx.to(x_dtype) : skipped, need_dc ? dc_parts.sum().to(c_dtype) : skipped};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_forward(const at::Tensor& x, const at::Tensor& c,
                                                                const at::Tensor& target, double scale) {
  Operands op = checked_operands(x, c);
  return forward_impl(op, given_targets(target, op.m, op.k), (float)scale);
}

std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                 const at::Tensor& c, const at::Tensor& target,
                                                                 const at::Tensor& lse, double scale, bool need_dx,
                                                                 bool need_dc) {
  Operands op = checked_operands(x, c);
  return backward_impl(grad, op, given_targets(target, op.m, op.k), lse, (float)scale, x.scalar_type(),
                       c.scalar_type(), need_dx, need_dc);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> softmax_products(
    const at::Tensor& scores, double scale, const c10::optional<at::Tensor>& v, const at::Tensor& c,
    const c10::optional<at::Tensor>& x, bool labels) {
  // P = softmax_k(S·scale + v) of stored scores, one row chunk (kGemmRowChunk × K) per thread at a
  // time, never stored whole: its row LSE (M,), P·c (M, D) and, if x is given, Pᵀ·x (K, D), the
  // latter summed over per-thread fp32 partials (last bits may depend on the thread count).
  // With labels: also argmax_k (int64 (M,), as sinkhorn_assign: near-ties to the lowest index, NaN
  // first) and Σ_i H(P_i·) (0-d, as sinkhorn_assign_entropy), from the same row sweeps.
  check_matrix(scores, "scores");
  check_matrix(c, "c");
  const int64_t m = scores.size(0), k = scores.size(1), d = c.size(1);
  TORCH_CHECK(c.size(0) == k, "c must have K=", k, " rows like scores (M, K), got ", c.sizes());
  const bool with_x = x.has_value() && x->defined();
  at::Tensor xf;
  if (with_x) {
    check_matrix(*x, "x");
    TORCH_CHECK(x->size(0) == m && x->size(1) == d, "x must have shape (", m, ", ", d, "), got ", x->sizes());
    xf = x->detach().to(at::kFloat).contiguous();
  }
  at::Tensor vf = v.has_value() && v->defined() ? as_float_vector(*v, k, "v") : at::zeros({k}, at::kFloat);
  at::Tensor s = scores.detach().to(at::kFloat).contiguous();
  at::Tensor cf = c.detach().to(at::kFloat).contiguous();
  at::Tensor lse = at::empty({m}, at::kFloat), pc = at::empty({m, d}, at::kFloat);
  const int64_t nt = at::get_num_threads(), per = kGemmRowChunk * k;
  ThreadPartials parts(k, d, with_x);
  at::Tensor tiles = at::empty({nt * per}, at::kFloat);
  // per thread: 1/Σ_k of each row, and the chunk's x rows scaled by it (for Pᵀ·x)
  at::Tensor invs = at::empty({nt * kGemmRowChunk}, at::kFloat);
  at::Tensor xtiles = at::empty({with_x ? nt * kGemmRowChunk * d : 0}, at::kFloat);
  at::Tensor lab = at::empty({labels ? m : 0}, at::kLong);
  at::Tensor tbufs = at::empty({labels ? nt * k : 0}, at::kFloat);  // a row of logits per thread
  const int64_t nch = num_chunks(m, kGemmRowChunk);
  std::vector<double> hsums(labels ? nch : 0, 0.0);
  const float* ps = s.data_ptr<float>();
  const float* pv = vf.data_ptr<float>();
  const float vmag = labels ? potential_scale(pv, k) : 0.f;
  float* pl = lse.data_ptr<float>();
  const float a = (float)scale;
  with_rows([&](auto rows) {
    using Rows = decltype(rows);
    at::parallel_for(0, num_chunks(m, kGemmRowChunk), 1, [&](int64_t b, int64_t e) {
      const int64_t tid = at::get_thread_num();
      float* tile = tiles.data_ptr<float>() + tid * per;
      float* inv = invs.data_ptr<float>() + tid * kGemmRowChunk;
      for (int64_t ch = b; ch < e; ++ch) {
        const int64_t r0 = ch * kGemmRowChunk, n = std::min(kGemmRowChunk, m - r0);
        // the tile keeps exp(t − shift) unnormalised; 1/Σ scales the n×D products instead of n×K
        double hs = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          const float* src = ps + (r0 + i) * k;
          float sh;
          const float sum = Rows::row_exp(src, a, pv, tile + i * k, k, src + k, &sh);
          pl[r0 + i] = lse_from_shifted_sum(sh, sum);  // −inf for a row without a finite logit
          inv[i] = inverse_row_sum(sum);
          if (labels) {
            double h;
            lab.data_ptr<int64_t>()[r0 + i] = label_and_entropy<Rows>(src, a, pv, vmag, tile + i * k, sum, sh,
                                                                      tbufs.data_ptr<float>() + tid * k, k, &h);
            hs += h;
          }
        }
        if (labels) hsums[ch] = hs;
        at::Tensor et = at::from_blob(tile, {n, k}, cf.options());
        at::Tensor inv_t = at::from_blob(inv, {n, 1}, cf.options());
        at::Tensor out = pc.narrow(0, r0, n);
        at::mm_out(out, et, cf);
        out.mul_(inv_t);
        if (with_x) {
          at::Tensor xs = at::from_blob(xtiles.data_ptr<float>() + tid * kGemmRowChunk * d, {n, d}, cf.options());
          at::mul_out(xs, xf.narrow(0, r0, n), inv_t);
          parts.add_product(tid, et.t(), xs);
        }
      }
    });
  });
  double total = 0.0;
  for (double h : hsums) total += h;
  return {lse, pc, with_x ? parts.sum() : at::empty({0}, at::kFloat), lab,
          labels ? at::full({}, (float)total, at::kFloat) : at::empty({0}, at::kFloat)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> swapped_softmax_products(
    const at::Tensor& scores, const at::Tensor& xb, const at::Tensor& c, const at::Tensor& va, const at::Tensor& vb,
    double inv_eps, double scale, const c10::optional<at::Tensor>& za, const c10::optional<at::Tensor>& zb,
    bool labels) {
  // Two branches a, b over the same rows: scores S_a (M, K) stored, S_b = xb·cᵀ recomputed one row
  // chunk (kGemmRowChunk × K) per thread at a time. Per branch a softmax P = softmax_k(S·scale) and
  // a Sinkhorn assignment Q = softmax_k(S·inv_eps + v); each predicts the other's Q:
  //   term 0: P_a against Q_b, term 1: P_b against Q_a.
  // The difference rows D_0 = P_a − Q_b, D_1 = P_b − Q_a are formed in the chunk (from both
  // branches' rows at once), so each gradient product is one GEMM: D·c (M, D) per term and Dᵀ·z
  // (K, D) for a term whose z is given (per-thread fp32 partials, summed in thread order).
  // Row values: CE_i = LSE_k(S·scale)_i − scale·Σ_k Q_ik·S_ik. With labels: the argmax and summed
  // entropy of Q_a and Q_b (as sinkhorn_assign_entropy), from the same row sweeps.
  check_matrix(scores, "scores");
  check_matrix(xb, "xb");
  check_matrix(c, "c");
  const int64_t m = scores.size(0), k = scores.size(1), d = c.size(1);
  TORCH_CHECK(c.size(0) == k, "c must have K=", k, " rows like scores (M, K), got ", c.sizes());
  TORCH_CHECK(xb.size(0) == m && xb.size(1) == d, "xb must have shape (", m, ", ", d, "), got ", xb.sizes());
  auto features = [&](const c10::optional<at::Tensor>& z, const char* name) {
    if (!z.has_value() || !z->defined()) return at::Tensor();
    check_matrix(*z, name);
    TORCH_CHECK(z->size(0) == m && z->size(1) == d, name, " must have shape (", m, ", ", d, "), got ", z->sizes());
    return z->detach().to(at::kFloat).contiguous();
  };
  at::Tensor zaf = features(za, "za"), zbf = features(zb, "zb");
  at::Tensor vaf = as_float_vector(va, k, "va"), vbf = as_float_vector(vb, k, "vb");
  at::Tensor zero_v = at::zeros({k}, at::kFloat);
  at::Tensor s = scores.detach().to(at::kFloat).contiguous();
  at::Tensor xbf = xb.detach().to(at::kFloat).contiguous();
  at::Tensor cf = c.detach().to(at::kFloat).contiguous();
  at::Tensor ct = cf.t();
  at::Tensor ce = at::empty({2, m}, at::kFloat), g = at::empty({2, m, d}, at::kFloat);
  const int64_t nt = at::get_num_threads(), per = kGemmRowChunk * k;
  ThreadPartials parts_a(k, d, zaf.defined()), parts_b(k, d, zbf.defined());
  at::Tensor tiles = at::empty({nt * 2 * per}, at::kFloat);     // D_0 and S_b → D_1 per thread
  at::Tensor scratch = at::empty({nt * 5 * k}, at::kFloat);    // exp rows of P_a, Q_a, P_b, Q_b, logits
  at::Tensor lab = at::empty({labels ? 2 * m : 0}, at::kLong);
  const int64_t nch = num_chunks(m, kGemmRowChunk);
  std::vector<double> hsums(labels ? 2 * nch : 0, 0.0);
  const float* ps = s.data_ptr<float>();
  const float* pva = vaf.data_ptr<float>();
  const float* pvb = vbf.data_ptr<float>();
  const float* p0 = zero_v.data_ptr<float>();
  float* pce = ce.data_ptr<float>();
  const float a = (float)scale, ie = (float)inv_eps;
  const float vmag_a = labels ? potential_scale(pva, k) : 0.f, vmag_b = labels ? potential_scale(pvb, k) : 0.f;
  with_rows([&](auto rows) {
    using Rows = decltype(rows);
    at::parallel_for(0, nch, 1, [&](int64_t b, int64_t e) {
      const int64_t tid = at::get_thread_num();
      float* d0 = tiles.data_ptr<float>() + tid * 2 * per;
      float* d1 = d0 + per;
      float* ea = scratch.data_ptr<float>() + tid * 5 * k;
      float *qa = ea + k, *eb = qa + k, *qb = eb + k, *t = qb + k;
      for (int64_t ch = b; ch < e; ++ch) {
        const int64_t r0 = ch * kGemmRowChunk, n = std::min(kGemmRowChunk, m - r0);
        at::Tensor t0 = at::from_blob(d0, {n, k}, cf.options()), t1 = at::from_blob(d1, {n, k}, cf.options());
        at::mm_out(t1, xbf.narrow(0, r0, n), ct);  // S_b rows; each becomes D_1 once read
        double h_a = 0.0, h_b = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t row = r0 + i;
          const float* sa = ps + row * k;
          float* sb = d1 + i * k;
          // the rows of P_a, Q_a, P_b, Q_b as shifted exps, with their shifts and sums
          float sh_pa, sh_qa, sh_pb, sh_qb;
          const float sum_pa = Rows::row_exp(sa, a, p0, ea, k, sa + k, &sh_pa);
          const float sum_qa = Rows::row_exp(sa, ie, pva, qa, k, nullptr, &sh_qa);
          const float sum_pb = Rows::row_exp(sb, a, p0, eb, k, nullptr, &sh_pb);
          const float sum_qb = Rows::row_exp(sb, ie, pvb, qb, k, nullptr, &sh_qb);
          const float ipa = inverse_row_sum(sum_pa), iqa = inverse_row_sum(sum_qa);
          const float ipb = inverse_row_sum(sum_pb), iqb = inverse_row_sum(sum_qb);
          pce[row] = lse_from_shifted_sum(sh_pa, sum_pa) - a * (Rows::dot(qb, sa, k) * iqb);
          pce[m + row] = lse_from_shifted_sum(sh_pb, sum_pb) - a * (Rows::dot(qa, sb, k) * iqa);
          if (labels) {
            int64_t* pl = lab.data_ptr<int64_t>();
            double h;
            pl[row] = label_and_entropy<Rows>(sa, ie, pva, vmag_a, qa, sum_qa, sh_qa, t, k, &h);
            h_a += h;
            pl[m + row] = label_and_entropy<Rows>(sb, ie, pvb, vmag_b, qb, sum_qb, sh_qb, t, k, &h);
            h_b += h;
          }
          scaled_difference(ea, ipa, qb, iqb, d0 + i * k, k);
          scaled_difference(eb, ipb, qa, iqa, sb, k);
        }
        if (labels) {
          hsums[ch] = h_a;
          hsums[nch + ch] = h_b;
        }
        at::Tensor g0 = g[0].narrow(0, r0, n), g1 = g[1].narrow(0, r0, n);
        at::mm_out(g0, t0, cf);
        at::mm_out(g1, t1, cf);
        if (zaf.defined()) parts_a.add_product(tid, t0.t(), zaf.narrow(0, r0, n));
        if (zbf.defined()) parts_b.add_product(tid, t1.t(), zbf.narrow(0, r0, n));
      }
    });
  });
  at::Tensor ent = at::empty({labels ? 2 : 0}, at::kFloat);
  if (labels)
    for (int64_t side = 0; side < 2; ++side) {
      double total = 0.0;
      for (int64_t ch = 0; ch < nch; ++ch) total += hsums[side * nch + ch];
      ent.data_ptr<float>()[side] = (float)total;
    }
  auto none = [] { return at::empty({0}, at::kFloat); };  // one each: outputs must not alias
  return {ce, g, zaf.defined() ? parts_a.sum() : none(), zbf.defined() ? parts_b.sum() : none(),
          labels ? lab.view({2, m}) : lab, ent};
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_target_cross_entropy_forward(const at::Tensor& x, const at::Tensor& c,
                                                                         const at::Tensor& y, const at::Tensor& cy,
                                                                         const at::Tensor& v, double inv_eps,
                                                                         double scale, bool soft) {
  Operands op = checked_operands(x, c);
  at::Tensor vf = as_float_vector(v, op.k, "v");
  return forward_impl(op, sinkhorn_targets(y, cy, vf, inv_eps, soft, op.m, op.k), (float)scale);
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_target_cross_entropy_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& c, const at::Tensor& y, const at::Tensor& cy,
    const at::Tensor& v, const at::Tensor& lse, double inv_eps, double scale, bool soft, bool need_dx,
    bool need_dc) {
  Operands op = checked_operands(x, c);
  at::Tensor vf = as_float_vector(v, op.k, "v");
  return backward_impl(grad, op, sinkhorn_targets(y, cy, vf, inv_eps, soft, op.m, op.k), lse, (float)scale,
                       x.scalar_type(), c.scalar_type(), need_dx, need_dc);
}

}  // namespace sigma_cpu
