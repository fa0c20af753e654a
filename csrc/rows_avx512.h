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
}  // namespace avx512
}  // namespace sigma_cpu
