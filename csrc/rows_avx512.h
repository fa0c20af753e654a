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
}  // namespace avx512
}  // namespace sigma_cpu
