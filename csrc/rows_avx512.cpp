// AVX-512 versions of the hot Sinkhorn row loops (see sigma_common.h for their meaning), chosen
// at run time when the CPU has AVX-512; the rest of the extension is built for AVX2.
// This file deliberately includes no torch or C++ library headers and defines only functions
// of its own: everything here is compiled for AVX-512, and an inline function shared with the
// AVX2 files could otherwise be merged by the linker into the AVX-512 copy.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>

#include "rows_avx512.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)  // clang lacks #pragma GCC target
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,fma,avx2")

namespace sigma_cpu {
namespace avx512 {
namespace {

// The polynomial of fast_exp in sigma_common.h (about 1 ulp); 2^n by scalef. x must already be
// clamped to a range where the reduction stays finite (the callers below).
inline __m512 exp16_reduced(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
  p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Arguments here are <= 0 (x - max); below -87.3 the result flushes towards 0.
inline __m512 exp16(__m512 x) {
  return exp16_reduced(_mm512_max_ps(_mm512_set1_ps(-87.33654475f), x));
}

// Full-range exp: clamping to [-104, 89] keeps r finite for ±inf; scalef then gives 0,
// subnormals and +inf where due, and NaN propagates through the clamps.
inline __m512 exp16_full(__m512 x) {
  return exp16_reduced(_mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x)));
}

inline __mmask16 tail_mask(int64_t r) { return (__mmask16)((1u << r) - 1u); }

}  // namespace

float scale_add_max(const float* s, float a, const float* add, float* out, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  __m512 vmax = _mm512_set1_ps(-__builtin_inff());
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(s + k), va), _mm512_loadu_ps(add + k));
    _mm512_storeu_ps(out + k, t);
    vmax = _mm512_max_ps(vmax, t);
  }
  if (k < n) {
    const __mmask16 mk = tail_mask(n - k);
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + k), va), _mm512_maskz_loadu_ps(mk, add + k));
    _mm512_mask_storeu_ps(out + k, mk, t);
    vmax = _mm512_mask_max_ps(vmax, mk, vmax, t);
  }
  return _mm512_reduce_max_ps(vmax);
}

float exp_shift_sum_inplace(float* buf, float shift, int64_t n) {
  const __m512 vs = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(buf + k), vs));
    _mm512_storeu_ps(buf + k, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (k < n) {
    const __mmask16 mk = tail_mask(n - k);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, buf + k), vs));
    _mm512_mask_storeu_ps(buf + k, mk, e);
    acc = _mm512_mask_add_ps(acc, mk, acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}

void fold_rows(float* col, const float* e, const float* alpha, int64_t gn, int64_t k) {
  // The loops call this right after reading these gn rows from memory (their dot products); the
  // next gn rows follow in memory, so ask for them now: the loads then overlap this fold instead
  // of waiting for it. (A prefetch never faults, also past the end of the matrix.)
  const float* next = e + gn * k;
  int64_t q = 0;
  for (; q + 16 <= k; q += 16) {
    for (int64_t j = 0; j < gn; ++j) _mm_prefetch(reinterpret_cast<const char*>(next + j * k + q), _MM_HINT_T1);
    __m512 acc = _mm512_loadu_ps(col + q);
    for (int64_t j = 0; j < gn; ++j) acc = _mm512_fmadd_ps(_mm512_loadu_ps(e + j * k + q), _mm512_set1_ps(alpha[j]), acc);
    _mm512_storeu_ps(col + q, acc);
  }
  if (q < k) {
    const __mmask16 mk = tail_mask(k - q);
    __m512 acc = _mm512_maskz_loadu_ps(mk, col + q);
    for (int64_t j = 0; j < gn; ++j)
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, e + j * k + q), _mm512_set1_ps(alpha[j]), acc);
    _mm512_mask_storeu_ps(col + q, mk, acc);
  }
}

float row_max(const float* s, float a, const float* add, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  __m512 m0 = _mm512_set1_ps(-__builtin_inff()), m1 = m0;
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    m0 = _mm512_max_ps(m0, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(s + k), va), _mm512_loadu_ps(add + k)));
    m1 = _mm512_max_ps(m1, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(s + k + 16), va), _mm512_loadu_ps(add + k + 16)));
  }
  for (; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + k), va), _mm512_maskz_loadu_ps(mk, add + k));
    m0 = _mm512_mask_max_ps(m0, mk, m0, t);
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

float row_exp_sum(const float* s, float a, const float* add, float shift, float* e, int64_t n,
                  const float* prefetch) {
  const __m512 va = _mm512_set1_ps(a), vs = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k < n; k += 16) {
    // one cache line of the next row per 16 scores: its load overlaps this compute-bound loop
    if (prefetch != nullptr) _mm_prefetch(reinterpret_cast<const char*>(prefetch + k), _MM_HINT_T1);
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + k), va), _mm512_maskz_loadu_ps(mk, add + k));
    const __m512 x = exp16(_mm512_sub_ps(t, vs));
    _mm512_mask_storeu_ps(e + k, mk, x);
    acc = _mm512_mask_add_ps(acc, mk, acc, x);
  }
  return _mm512_reduce_add_ps(acc);
}

void plan_row(const float* s, float ie, float ui, const float* v, float log_m, float* out, int64_t n) {
  const __m512 va = _mm512_set1_ps(ie), vu = _mm512_set1_ps(ui), vl = _mm512_set1_ps(log_m);
  int64_t k = 0;
  for (; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + k), va), vu);
    t = _mm512_add_ps(_mm512_add_ps(t, _mm512_maskz_loadu_ps(mk, v + k)), vl);
    _mm512_mask_storeu_ps(out + k, mk, exp16_full(t));
  }
}

void col_max_row(const float* s, float ie, float ui, float* cm, int64_t n) {
  const __m512 va = _mm512_set1_ps(ie), vu = _mm512_set1_ps(ui);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + k), va), vu);
    _mm512_mask_storeu_ps(cm + k, mk, _mm512_max_ps(_mm512_maskz_loadu_ps(mk, cm + k), t));
  }
}

void col_expsum_rows(const float* s, int64_t rows, int64_t stride, float ie, const float* u, const float* sh,
                     float* cs, int64_t n) {
  const __m512 va = _mm512_set1_ps(ie);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __m512 vs = _mm512_maskz_loadu_ps(mk, sh + k);
    __m512 acc = _mm512_maskz_loadu_ps(mk, cs + k);
    for (int64_t i = 0; i < rows; ++i) {
      const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + i * stride + k), va),
                                     _mm512_set1_ps(u[i]));
      acc = _mm512_add_ps(acc, exp16_full(_mm512_sub_ps(t, vs)));
    }
    _mm512_mask_storeu_ps(cs + k, mk, acc);
  }
}

int64_t first_at_least(const float* t, float value, int64_t n) {
  const __m512 vv = _mm512_set1_ps(value);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(mk, _mm512_maskz_loadu_ps(mk, t + k), vv, _CMP_GE_OQ);
    if (hit) return k + __builtin_ctz((unsigned)hit);
  }
  return n - 1;
}

void exp_row(const float* s, float ie, float* e, int64_t n, float* mx, float* mn) {
  const __m512 va = _mm512_set1_ps(ie);
  __m512 vmax = _mm512_set1_ps(-__builtin_inff()), vmin = _mm512_set1_ps(__builtin_inff());
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + k), va);
    vmax = _mm512_mask_max_ps(vmax, mk, vmax, t);
    vmin = _mm512_mask_min_ps(vmin, mk, vmin, t);
  }
  const float hi = _mm512_reduce_max_ps(vmax);
  *mx = hi;
  *mn = _mm512_reduce_min_ps(vmin);
  const __m512 vs = _mm512_set1_ps(hi);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + k), va);
    _mm512_mask_storeu_ps(e + k, mk, exp16(_mm512_sub_ps(t, vs)));
  }
}

float dot(const float* e, const float* b, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(e + k), _mm512_loadu_ps(b + k), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(e + k + 16), _mm512_loadu_ps(b + k + 16), a1);
  }
  for (; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, e + k), _mm512_maskz_loadu_ps(mk, b + k), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

void scaled_row(const float* e, const float* b, float a, float* out, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __m512 t = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, e + k), _mm512_maskz_loadu_ps(mk, b + k)), va);
    _mm512_mask_storeu_ps(out + k, mk, t);
  }
}

float logit_entropy(const float* t, float mx, int64_t n) {
  const float sh = (mx == __builtin_inff() || mx == -__builtin_inff()) ? 0.f : mx;
  const __m512 vs = _mm512_set1_ps(sh), lo = _mm512_set1_ps(-87.33654475f);
  __m512 z = _mm512_setzero_ps(), w = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mk = n - k >= 16 ? (__mmask16)0xFFFF : tail_mask(n - k);
    const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, t + k), vs);
    // terms below FLT_MIN count as 0 (also keeps 0·(-inf) out of the weighted sum); a NaN stays
    // in (not-less-than holds for NaN), so the row's entropy is NaN as softmax gives it
    const __mmask16 live = _mm512_mask_cmp_ps_mask(mk, x, lo, _CMP_NLT_UQ);
    const __m512 ex = _mm512_maskz_mov_ps(live, exp16(x));
    z = _mm512_add_ps(z, ex);
    w = _mm512_add_ps(w, _mm512_maskz_mul_ps(live, ex, x));
  }
  const float zs = _mm512_reduce_add_ps(z), ws = _mm512_reduce_add_ps(w);
  return __builtin_logf(zs) - ws / zs;
}

}  // namespace avx512
}  // namespace sigma_cpu

#pragma GCC pop_options

namespace sigma_cpu {
namespace avx512 {
bool supported() {
  // SIGMA_CPU_NO_AVX512=1 forces the AVX2 loops (to test them on an AVX-512 machine).
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                         std::getenv("SIGMA_CPU_NO_AVX512") == nullptr;
  return ok;
}
}  // namespace avx512
}  // namespace sigma_cpu

#else  // not x86-64 GCC: never selected

namespace sigma_cpu {
namespace avx512 {
bool supported() { return false; }
float scale_add_max(const float*, float, const float*, float*, int64_t) { return 0.f; }
float exp_shift_sum_inplace(float*, float, int64_t) { return 0.f; }
void fold_rows(float*, const float*, const float*, int64_t, int64_t) {}
void plan_row(const float*, float, float, const float*, float, float*, int64_t) {}
float row_max(const float*, float, const float*, int64_t) { return 0.f; }
float row_exp_sum(const float*, float, const float*, float, float*, int64_t, const float*) { return 0.f; }
void col_max_row(const float*, float, float, float*, int64_t) {}
void col_expsum_rows(const float*, int64_t, int64_t, float, const float*, const float*, float*, int64_t) {}
int64_t first_at_least(const float*, float, int64_t n) { return n - 1; }
void exp_row(const float*, float, float*, int64_t, float*, float*) {}
float dot(const float*, const float*, int64_t) { return 0.f; }
void scaled_row(const float*, const float*, float, float*, int64_t) {}
float logit_entropy(const float*, float, int64_t) { return 0.f; }
}  // namespace avx512
}  // namespace sigma_cpu

#endif
