// Run-time-selected AVX-512 row loops (rows_avx512.cpp); same contracts as the AVX2 ones in
// sigma_common.h. Call only when supported() is true.
#pragma once

#include <cstdint>

namespace sigma_cpu {
namespace avx512 {
bool supported();
float scale_add_max(const float* s, float a, const float* add, float* out, int64_t n);
float exp_shift_sum_inplace(float* buf, float shift, int64_t n);
void fold_rows(float* col, const float* e, const float* alpha, int64_t gn, int64_t k);
// max_k (s_k·a + add_k), nothing stored
float row_max(const float* s, float a, const float* add, int64_t n);
// e_k = exp((s_k·a + add_k) - shift); returns Σ_k e_k. prefetch (may be null): the next row of s.
float row_exp_sum(const float* s, float a, const float* add, float shift, float* e, int64_t n,
                  const float* prefetch);
// out_k = exp(((s_k·ie + ui) + v_k) + log_m), full exp range
void plan_row(const float* s, float ie, float ui, const float* v, float log_m, float* out, int64_t n);
// cm_k = max(cm_k, s_k·ie + ui)
void col_max_row(const float* s, float ie, float ui, float* cm, int64_t n);
// cs_k += Σ_i exp(s_ik·ie + u_i - sh_k) over `rows` rows of stride `stride`
void col_expsum_rows(const float* s, int64_t rows, int64_t stride, float ie, const float* u, const float* sh,
                     float* cs, int64_t n);
// first k with t_k >= value (n - 1 if none: NaN rows)
int64_t first_at_least(const float* t, float value, int64_t n);
// e_k = exp(s_k·ie - max_j s_j·ie); returns max and min of s_k·ie through *mx, *mn
void exp_row(const float* s, float ie, float* e, int64_t n, float* mx, float* mn);
// Σ_k e_k·b_k
float dot(const float* e, const float* b, int64_t n);
// out_k = (e_k·b_k)·a (out may alias e)
void scaled_row(const float* e, const float* b, float a, float* out, int64_t n);
// entropy of softmax_k(t_k), given the logits t and their max mx
float logit_entropy(const float* t, float mx, int64_t n);
}  // namespace avx512

// The AVX-512 row kernels as one type, so an algorithm is written once as a template over
// `Rows` (see Avx2Rows in sigma_common.h for the same interface on AVX2).
struct Avx512Rows {
  // e_k = exp(s_k·ie + v_k - shift), shift the max unless infinite (then 0, as torch.logsumexp);
  // returns Σ_k e_k. The row is re-read from L1 by the exp pass instead of storing s·ie + v.
  static float row_exp(const float* s, float ie, const float* v, float* e, int64_t n, const float* prefetch,
                       float* shift) {
    const float mx = avx512::row_max(s, ie, v, n);
    *shift = (mx == __builtin_inff() || mx == -__builtin_inff()) ? 0.f : mx;
    return avx512::row_exp_sum(s, ie, v, *shift, e, n, prefetch);
  }
  static void fold_rows(float* col, const float* e, const float* alpha, int64_t gn, int64_t k) {
    avx512::fold_rows(col, e, alpha, gn, k);
  }
  static void col_max_row(const float* s, float ie, float ui, float* cm, int64_t n) {
    avx512::col_max_row(s, ie, ui, cm, n);
  }
  static void col_expsum_rows(const float* s, int64_t rows, int64_t stride, float ie, const float* u,
                              const float* sh, float* cs, int64_t n) {
    avx512::col_expsum_rows(s, rows, stride, ie, u, sh, cs, n);
  }
  static float scale_add_max(const float* s, float ie, const float* v, float* buf, int64_t n) {
    return avx512::scale_add_max(s, ie, v, buf, n);
  }
  static int64_t first_at_least(const float* t, float value, int64_t n) {
    return avx512::first_at_least(t, value, n);
  }
  static float logit_entropy(const float* t, float mx, int64_t n) { return avx512::logit_entropy(t, mx, n); }
  static void plan_row(const float* s, float ie, float ui, const float* v, float log_m, float* out, int64_t n) {
    avx512::plan_row(s, ie, ui, v, log_m, out, n);
  }
  static void exp_row(const float* s, float ie, float* e, int64_t n, float* mx, float* mn) {
    avx512::exp_row(s, ie, e, n, mx, mn);
  }
  static float dot(const float* e, const float* b, int64_t n) { return avx512::dot(e, b, n); }
  static void scaled_row(const float* e, const float* b, float a, float* out, int64_t n) {
    avx512::scaled_row(e, b, a, out, n);
  }
};
}  // namespace sigma_cpu
