#include "trainer/noisy_gd_kernel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <stdexcept>

// The operations of a tile, the same in both kernels (the AVX2 one computes four lanes at once:
// four classes of a row, four rows of a class, or four features), for each row x with label y:
//   ||x||^2    four partial sums s_l = fma(x_j, x_j, s_l) over j = l mod 4 (j < 4 floor(d/4)), the
//              rest t = fma(x_j, x_j, t), then ((s_0 + s_1) + (s_2 + s_3)) + t;
//   z_k        = fma(x_j, w_jk, z_k) for j = 0 .. d-1, from 0;
//   top        m = z_0, then m = (m > z_k ? m : z_k) for k = 1 .. c-1;
//   e_k        = kernel_exp(z_k - top); total = e_0, then total + e_k for k = 1 .. c-1;
//   r_k        = e_k / total - [k == y]; ||r||^2: q = fma(r_k, r_k, q) for k = 0 .. c-1, from 0;
//   clip       n = sqrt(||x||^2) sqrt(||r||^2); r_k = r_k * (n > M ? M / n : 1);
// then for the tile, over its rows i in order:
//   G_jk       = fma(x_ij, r_ik, G_jk), from 0;
//   sum_jk     += round_to_nearest_even(G_jk 2^bits), exact in int64.
// Nothing else touches the values (no -ffast-math; contractions of a*b + c cannot change a
// result here: the only such pair, G 2^bits + shift, multiplies by a power of 2).

namespace lethe::trainer::detail {
namespace {

// x + kShift holds round(x) in its low mantissa bits (|x| < 2^51), as an int64 minus kShiftBits.
constexpr double kShift = 0x1.8p52;
constexpr std::int64_t kShiftBits = 0x4338000000000000;
constexpr double kFixedPointLimit = 0x1.0p51;

constexpr double kExpLow = -708.0;  // exp(-708) ~ 3e-308, still a normal double
constexpr double kLog2e = 0x1.71547652b82fep0;
constexpr double kLn2Hi = 0x1.62e42fee00000p-1;  // ln 2 = hi + lo, hi with its low bits 0
constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;
// Taylor coefficients 1/k!, k = 13 .. 2 (then 1, 1): on |r| <= ln 2 / 2 the truncation is ~4e-18.
constexpr double kExpPoly[] = {
    0x1.6124613a86d09p-33, 0x1.1eed8eff8d898p-29, 0x1.ae64567f544e4p-26, 0x1.27e4fb7789f5cp-22,
    0x1.71de3a556c734p-19, 0x1.a01a01a01a01ap-16, 0x1.a01a01a01a01ap-13, 0x1.6c16c16c16c17p-10,
    0x1.1111111111111p-7,  0x1.5555555555555p-5,  0x1.5555555555555p-3,  0x1.0000000000000p-1,
    1.0, 1.0};

inline double max_of(double a, double b) { return a > b ? a : b; }  // MAXPD's rule

double row_norm2(const double* x, std::int64_t d) {
  double s[4] = {0, 0, 0, 0};
  std::int64_t j = 0;
  for (; j + 4 <= d; j += 4)
    for (int l = 0; l < 4; ++l) s[l] = std::fma(x[j + l], x[j + l], s[l]);
  double t = 0;
  for (; j < d; ++j) t = std::fma(x[j], x[j], t);
  return ((s[0] + s[1]) + (s[2] + s[3])) + t;
}

bool row_in_bounds(const double* x, std::int64_t d, double bound) {
  bool ok = true;
  for (std::int64_t j = 0; j < d; ++j) ok &= std::abs(x[j]) <= bound;  // NaN fails
  return ok;
}

// The residual row r (logits on entry): softmax, minus e_y, clipped. Portable.
void residual_row(double* r, std::int64_t classes, std::int64_t y, double x_norm2, double clip) {
  double top = r[0];
  for (std::int64_t k = 1; k < classes; ++k) top = max_of(top, r[k]);
  double total = 0;
  for (std::int64_t k = 0; k < classes; ++k) {
    r[k] = kernel_exp(r[k] - top);
    total = k == 0 ? r[k] : total + r[k];
  }
  double q = 0;
  for (std::int64_t k = 0; k < classes; ++k) {
    r[k] = r[k] / total - (k == y ? 1.0 : 0.0);
    q = std::fma(r[k], r[k], q);
  }
  const double norm = std::sqrt(x_norm2) * std::sqrt(q);
  const double scale = norm > clip ? clip / norm : 1.0;
  for (std::int64_t k = 0; k < classes; ++k) r[k] = r[k] * scale;
}

// sums (d x classes) += round(partial 2^bits) (partial: d x padded); false, sums unchanged, when
// an entry is out of the exact range (|x| < 2^51) or NaN. Portable and AVX2: the same integers.
bool add_fixed_point_portable(const double* partial, std::int64_t d, std::int64_t classes, std::int64_t padded,
                              double unit, std::int64_t* sums) {
  bool in_range = true;
  for (std::int64_t j = 0; j < d; ++j)
    for (std::int64_t k = 0; k < classes; ++k) in_range &= std::abs(partial[j * padded + k] * unit) < kFixedPointLimit;
  if (!in_range) return false;
  for (std::int64_t j = 0; j < d; ++j)
    for (std::int64_t k = 0; k < classes; ++k)
      sums[j * classes + k] += std::bit_cast<std::int64_t>(partial[j * padded + k] * unit + kShift) - kShiftBits;
  return true;
}

#if defined(__x86_64__)
// ---- AVX2 + FMA: the same operations, four lanes at a time ----

#define LETHE_AVX2 __attribute__((target("avx2,fma")))

LETHE_AVX2 inline __m256d exp4(__m256d x) {
  x = _mm256_max_pd(_mm256_set1_pd(kExpLow), x);  // low > x ? low : x, as kernel_exp (NaN stays NaN)
  const __m256d k = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(kLn2Hi), x);
  r = _mm256_fnmadd_pd(k, _mm256_set1_pd(kLn2Lo), r);
  __m256d p = _mm256_set1_pd(kExpPoly[0]);
  for (std::size_t i = 1; i < std::size(kExpPoly); ++i) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(kExpPoly[i]));
  const __m256i ki = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(k, _mm256_set1_pd(kShift))),
                                      _mm256_set1_epi64x(kShiftBits));
  const __m256d scale = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(ki, _mm256_set1_epi64x(1023)), 52));
  return _mm256_mul_pd(p, scale);
}

// (v_0 + v_1) + (v_2 + v_3), in registers.
LETHE_AVX2 inline double sum_lanes(__m256d v) {
  const __m128d low = _mm256_castpd256_pd128(v);
  const __m128d high = _mm256_extractf128_pd(v, 1);
  return _mm_cvtsd_f64(_mm_add_sd(_mm_add_sd(low, _mm_unpackhi_pd(low, low)), _mm_add_sd(high, _mm_unpackhi_pd(high, high))));
}

// The 4 x 4 transpose: row r of the input, a[r], becomes lane r of every output vector.
LETHE_AVX2 inline void transpose4(__m256d& a0, __m256d& a1, __m256d& a2, __m256d& a3) {
  const __m256d t0 = _mm256_unpacklo_pd(a0, a1);  // a00 a10 a02 a12
  const __m256d t1 = _mm256_unpackhi_pd(a0, a1);  // a01 a11 a03 a13
  const __m256d t2 = _mm256_unpacklo_pd(a2, a3);  // a20 a30 a22 a32
  const __m256d t3 = _mm256_unpackhi_pd(a2, a3);  // a21 a31 a23 a33
  a0 = _mm256_permute2f128_pd(t0, t2, 0x20);      // a00 a10 a20 a30
  a1 = _mm256_permute2f128_pd(t1, t3, 0x20);      // a01 a11 a21 a31
  a2 = _mm256_permute2f128_pd(t0, t2, 0x31);      // a02 a12 a22 a32
  a3 = _mm256_permute2f128_pd(t1, t3, 0x31);      // a03 a13 a23 a33
}

// ||x||^2 of R rows (stride d) into norm2, their four lane sums side by side (independent chains);
// false when a feature is out of [-bound, bound] or NaN (the caller finds which).
template <int R>
LETHE_AVX2 bool rows_in_bounds_avx2(const double* x, std::int64_t d, double bound, double* norm2) {
  const __m256d sign = _mm256_set1_pd(-0.0);
  const __m256d limit = _mm256_set1_pd(bound);
  __m256d s[R];
  for (int r = 0; r < R; ++r) s[r] = _mm256_setzero_pd();
  __m256d bad = _mm256_setzero_pd();
  std::int64_t j = 0;
  for (; j + 4 <= d; j += 4) {
    for (int r = 0; r < R; ++r) {
      const __m256d v = _mm256_loadu_pd(x + r * d + j);
      s[r] = _mm256_fmadd_pd(v, v, s[r]);
      bad = _mm256_or_pd(bad, _mm256_cmp_pd(_mm256_andnot_pd(sign, v), limit, _CMP_NLE_UQ));  // NaN: bad
    }
  }
  bool ok = _mm256_movemask_pd(bad) == 0;
  for (int r = 0; r < R; ++r) {
    double t = 0;
    for (std::int64_t k = j; k < d; ++k) {
      t = std::fma(x[r * d + k], x[r * d + k], t);
      ok &= std::abs(x[r * d + k]) <= bound;
    }
    norm2[r] = sum_lanes(s[r]) + t;
  }
  return ok;
}

// z (R rows, stride padded) = x (R rows, stride d) w for NV vectors of classes from w's column 0.
template <int R, int NV>
LETHE_AVX2 void logits_avx2(const double* x, std::int64_t d, const double* w, std::int64_t padded, double* z) {
  __m256d acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_pd();
  for (std::int64_t j = 0; j < d; ++j) {
    __m256d wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = _mm256_loadu_pd(w + j * padded + 4 * v);
    for (int r = 0; r < R; ++r) {
      const __m256d xv = _mm256_broadcast_sd(x + r * d + j);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_pd(xv, wv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm256_storeu_pd(z + r * padded + 4 * v, acc[r][v]);
}

// g (d rows, stride padded; NV vectors of classes from g's column 0) += x_r^T r_r for the R rows
// x_r (stride d) and r_r (stride padded), r = 0 .. R-1 in order: G_jk = fma(x_rj, r_rk, G_jk).
template <int R, int NV>
LETHE_AVX2 void accumulate_avx2(const double* x, std::int64_t d, const double* r, std::int64_t padded, double* g) {
  __m256d rv[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) rv[i][v] = _mm256_loadu_pd(r + i * padded + 4 * v);
  for (std::int64_t j = 0; j < d; ++j) {
    __m256d gv[NV];
    for (int v = 0; v < NV; ++v) gv[v] = _mm256_loadu_pd(g + j * padded + 4 * v);
    for (int i = 0; i < R; ++i) {
      const __m256d xv = _mm256_broadcast_sd(x + i * d + j);
      for (int v = 0; v < NV; ++v) gv[v] = _mm256_fmadd_pd(xv, rv[i][v], gv[v]);
    }
    for (int v = 0; v < NV; ++v) _mm256_storeu_pd(g + j * padded + 4 * v, gv[v]);
  }
}

// The common case (4 rows, 12 classes) spelled out: GCC keeps an array of vector accumulators in
// memory, named ones in registers. The same operations as logits_avx2<4, 3>.
LETHE_AVX2 void logits_4x3(const double* x, std::int64_t d, const double* w, std::int64_t padded, double* z) {
  __m256d a00 = _mm256_setzero_pd(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
  __m256d a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  const double* x1 = x + d;
  const double* x2 = x + 2 * d;
  const double* x3 = x + 3 * d;
  // The 4 rows two groups ahead (4 d doubles), a cache line every other j: they come from memory
  // while this group computes.
  const double* ahead = x + 8 * d;
  for (std::int64_t j = 0; j < d; ++j) {
    if ((j & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead + 4 * j), _MM_HINT_T0);
    const double* wj = w + j * padded;
    const __m256d w0 = _mm256_loadu_pd(wj), w1 = _mm256_loadu_pd(wj + 4), w2 = _mm256_loadu_pd(wj + 8);
    __m256d b = _mm256_broadcast_sd(x + j);
    a00 = _mm256_fmadd_pd(b, w0, a00), a01 = _mm256_fmadd_pd(b, w1, a01), a02 = _mm256_fmadd_pd(b, w2, a02);
    b = _mm256_broadcast_sd(x1 + j);
    a10 = _mm256_fmadd_pd(b, w0, a10), a11 = _mm256_fmadd_pd(b, w1, a11), a12 = _mm256_fmadd_pd(b, w2, a12);
    b = _mm256_broadcast_sd(x2 + j);
    a20 = _mm256_fmadd_pd(b, w0, a20), a21 = _mm256_fmadd_pd(b, w1, a21), a22 = _mm256_fmadd_pd(b, w2, a22);
    b = _mm256_broadcast_sd(x3 + j);
    a30 = _mm256_fmadd_pd(b, w0, a30), a31 = _mm256_fmadd_pd(b, w1, a31), a32 = _mm256_fmadd_pd(b, w2, a32);
  }
  const __m256d out[12] = {a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32};
  for (int r = 0; r < 4; ++r)
    for (int v = 0; v < 3; ++v) _mm256_storeu_pd(z + r * padded + 4 * v, out[3 * r + v]);
}

// The same for G += X^T R over 4 rows and 12 classes; the operations of accumulate_avx2<4, 3>.
LETHE_AVX2 void accumulate_4x3(const double* x, std::int64_t d, const double* r, std::int64_t padded, double* g) {
  const __m256d r00 = _mm256_loadu_pd(r), r01 = _mm256_loadu_pd(r + 4), r02 = _mm256_loadu_pd(r + 8);
  const __m256d r10 = _mm256_loadu_pd(r + padded), r11 = _mm256_loadu_pd(r + padded + 4),
                r12 = _mm256_loadu_pd(r + padded + 8);
  const __m256d r20 = _mm256_loadu_pd(r + 2 * padded), r21 = _mm256_loadu_pd(r + 2 * padded + 4),
                r22 = _mm256_loadu_pd(r + 2 * padded + 8);
  const __m256d r30 = _mm256_loadu_pd(r + 3 * padded), r31 = _mm256_loadu_pd(r + 3 * padded + 4),
                r32 = _mm256_loadu_pd(r + 3 * padded + 8);
  const double* x1 = x + d;
  const double* x2 = x + 2 * d;
  const double* x3 = x + 3 * d;
  for (std::int64_t j = 0; j < d; ++j) {
    double* gj = g + j * padded;
    __m256d g0 = _mm256_loadu_pd(gj), g1 = _mm256_loadu_pd(gj + 4), g2 = _mm256_loadu_pd(gj + 8);
    __m256d b = _mm256_broadcast_sd(x + j);
    g0 = _mm256_fmadd_pd(b, r00, g0), g1 = _mm256_fmadd_pd(b, r01, g1), g2 = _mm256_fmadd_pd(b, r02, g2);
    b = _mm256_broadcast_sd(x1 + j);
    g0 = _mm256_fmadd_pd(b, r10, g0), g1 = _mm256_fmadd_pd(b, r11, g1), g2 = _mm256_fmadd_pd(b, r12, g2);
    b = _mm256_broadcast_sd(x2 + j);
    g0 = _mm256_fmadd_pd(b, r20, g0), g1 = _mm256_fmadd_pd(b, r21, g1), g2 = _mm256_fmadd_pd(b, r22, g2);
    b = _mm256_broadcast_sd(x3 + j);
    g0 = _mm256_fmadd_pd(b, r30, g0), g1 = _mm256_fmadd_pd(b, r31, g1), g2 = _mm256_fmadd_pd(b, r32, g2);
    _mm256_storeu_pd(gj, g0), _mm256_storeu_pd(gj + 4, g1), _mm256_storeu_pd(gj + 8, g2);
  }
}

// A kernel over R rows and one group of classes: (x, d, in, padded, out), `in` and `out` at the group.
using GroupKernel = void (*)(const double*, std::int64_t, const double*, std::int64_t, double*);

// Runs the kernels over the padded classes in groups of 12, then 8 or 4 (K3, K2, K1: 3, 2, 1 vectors).
template <GroupKernel K3, GroupKernel K2, GroupKernel K1>
LETHE_AVX2 void by_class_groups(const double* x, std::int64_t d, const double* in, std::int64_t padded, double* out) {
  for (std::int64_t v = 0; v < padded; v += 12) {
    switch (std::min<std::int64_t>(12, padded - v) / 4) {
      case 3: K3(x, d, in + v, padded, out + v); break;
      case 2: K2(x, d, in + v, padded, out + v); break;
      default: K1(x, d, in + v, padded, out + v); break;
    }
  }
}

template <int R>
LETHE_AVX2 void logits_rows(const double* x, std::int64_t d, const double* w, std::int64_t padded, double* z) {
  by_class_groups<R == 4 ? &logits_4x3 : &logits_avx2<R, 3>, &logits_avx2<R, 2>, &logits_avx2<R, 1>>(x, d, w, padded, z);
}

template <int R>
LETHE_AVX2 void accumulate_rows(const double* x, std::int64_t d, const double* r, std::int64_t padded, double* g) {
  by_class_groups<R == 4 ? &accumulate_4x3 : &accumulate_avx2<R, 3>, &accumulate_avx2<R, 2>, &accumulate_avx2<R, 1>>(
      x, d, r, padded, g);
}

// Four rows' residuals at once, a lane per row: z holds the 4 rows' logits (stride padded) and
// gets their clipped residuals (0 in the pad columns); t is scratch of 4 padded doubles, where
// class k of the 4 rows is the vector at t + 4 k.
LETHE_AVX2 void residual_rows_avx2(double* z, std::int64_t classes, std::int64_t padded, const std::int64_t* y,
                                   const double* x_norm2, double clip, double* t) {
  for (std::int64_t v = 0; v < padded; v += 4) {
    __m256d a0 = _mm256_loadu_pd(z + v), a1 = _mm256_loadu_pd(z + padded + v);
    __m256d a2 = _mm256_loadu_pd(z + 2 * padded + v), a3 = _mm256_loadu_pd(z + 3 * padded + v);
    transpose4(a0, a1, a2, a3);
    _mm256_store_pd(t + 4 * v, a0), _mm256_store_pd(t + 4 * v + 4, a1);
    _mm256_store_pd(t + 4 * v + 8, a2), _mm256_store_pd(t + 4 * v + 12, a3);
  }
  __m256d top = _mm256_load_pd(t);
  for (std::int64_t k = 1; k < classes; ++k) top = _mm256_max_pd(top, _mm256_load_pd(t + 4 * k));  // top > z ? top : z
  __m256d total = _mm256_setzero_pd();
  for (std::int64_t k = 0; k < classes; ++k) {
    const __m256d e = exp4(_mm256_sub_pd(_mm256_load_pd(t + 4 * k), top));
    _mm256_store_pd(t + 4 * k, e);
    total = k == 0 ? e : _mm256_add_pd(total, e);
  }
  const __m256d label = _mm256_setr_pd(static_cast<double>(y[0]), static_cast<double>(y[1]), static_cast<double>(y[2]),
                                       static_cast<double>(y[3]));
  const __m256d one = _mm256_set1_pd(1.0);
  __m256d q = _mm256_setzero_pd();
  for (std::int64_t k = 0; k < classes; ++k) {
    const __m256d hot = _mm256_and_pd(_mm256_cmp_pd(label, _mm256_set1_pd(static_cast<double>(k)), _CMP_EQ_OQ), one);
    const __m256d r = _mm256_sub_pd(_mm256_div_pd(_mm256_load_pd(t + 4 * k), total), hot);
    _mm256_store_pd(t + 4 * k, r);
    q = _mm256_fmadd_pd(r, r, q);
  }
  const __m256d norm = _mm256_mul_pd(_mm256_sqrt_pd(_mm256_loadu_pd(x_norm2)), _mm256_sqrt_pd(q));
  const __m256d clip_vector = _mm256_set1_pd(clip);
  const __m256d scale = _mm256_blendv_pd(one, _mm256_div_pd(clip_vector, norm), _mm256_cmp_pd(norm, clip_vector, _CMP_GT_OQ));
  for (std::int64_t k = 0; k < padded; ++k)
    _mm256_store_pd(t + 4 * k, k < classes ? _mm256_mul_pd(_mm256_load_pd(t + 4 * k), scale) : _mm256_setzero_pd());
  for (std::int64_t v = 0; v < padded; v += 4) {
    __m256d a0 = _mm256_load_pd(t + 4 * v), a1 = _mm256_load_pd(t + 4 * v + 4);
    __m256d a2 = _mm256_load_pd(t + 4 * v + 8), a3 = _mm256_load_pd(t + 4 * v + 12);
    transpose4(a0, a1, a2, a3);
    _mm256_storeu_pd(z + v, a0), _mm256_storeu_pd(z + padded + v, a1);
    _mm256_storeu_pd(z + 2 * padded + v, a2), _mm256_storeu_pd(z + 3 * padded + v, a3);
  }
}

// The tile in three passes, four rows at a time: bound check, ||x||^2 and logits (each row's X
// from memory, prefetched), then the residuals (4 rows in the lanes of a vector; a last group of
// 1 to 3 rows fills the other lanes with zeros and drops them; one group after another, so that
// their latencies overlap), then G += X^T R (X from L2). Returns the first bad row or -1.
LETHE_AVX2 std::int64_t tile_avx2(const double* x, const std::int64_t* y, std::int64_t rows, std::int64_t d,
                                  std::int64_t classes, std::int64_t padded, const double* w, double clip, double bound,
                                  double* z, double* t, double* g) {
  double* norms = t + 4 * padded;  // kMaxTileRows + 4 of them
  for (std::int64_t i = 0; i < rows; i += 4) {
    const std::int64_t count = std::min<std::int64_t>(4, rows - i);
    const double* xi = x + i * d;
    if (count == 4 ? !rows_in_bounds_avx2<4>(xi, d, bound, norms + i) : false) {
      for (std::int64_t r = 0; r < 4; ++r)
        if (!rows_in_bounds_avx2<1>(xi + r * d, d, bound, norms + i + r)) return i + r;
    }
    if (count == 4) {
      logits_rows<4>(xi, d, w, padded, z + i * padded);
    } else {
      for (std::int64_t r = 0; r < count; ++r) {
        if (!rows_in_bounds_avx2<1>(xi + r * d, d, bound, norms + i + r)) return i + r;
        logits_rows<1>(xi + r * d, d, w, padded, z + (i + r) * padded);
      }
      std::fill(z + rows * padded, z + (i + 4) * padded, 0.0);
      std::fill(norms + rows, norms + i + 4, 0.0);
    }
  }
  for (std::int64_t i = 0; i < rows; i += 4) {
    std::int64_t labels[4] = {0, 0, 0, 0};
    std::copy(y + i, y + std::min(rows, i + 4), labels);
    residual_rows_avx2(z + i * padded, classes, padded, labels, norms + i, clip, t);
  }
  std::fill(g, g + d * padded, 0.0);
  std::int64_t i = 0;
  for (; i + 4 <= rows; i += 4) accumulate_rows<4>(x + i * d, d, z + i * padded, padded, g);
  for (; i < rows; ++i) accumulate_rows<1>(x + i * d, d, z + i * padded, padded, g);
  return -1;
}

// add_fixed_point_portable, four entries at a time: the same integers.
LETHE_AVX2 bool add_fixed_point_avx2(const double* partial, std::int64_t d, std::int64_t classes, std::int64_t padded,
                                     double unit, std::int64_t* sums) {
  const __m256d scale = _mm256_set1_pd(unit), sign = _mm256_set1_pd(-0.0), limit = _mm256_set1_pd(kFixedPointLimit);
  const std::int64_t vectors = classes / 4 * 4;
  __m256d bad = _mm256_setzero_pd();
  for (std::int64_t j = 0; j < d; ++j)
    for (std::int64_t k = 0; k < vectors; k += 4)
      bad = _mm256_or_pd(bad, _mm256_cmp_pd(_mm256_andnot_pd(sign, _mm256_mul_pd(_mm256_loadu_pd(partial + j * padded + k), scale)),
                                            limit, _CMP_NLT_UQ));
  bool in_range = _mm256_movemask_pd(bad) == 0;
  for (std::int64_t j = 0; j < d; ++j)
    for (std::int64_t k = vectors; k < classes; ++k) in_range &= std::abs(partial[j * padded + k] * unit) < kFixedPointLimit;
  if (!in_range) return false;
  const __m256d shift = _mm256_set1_pd(kShift);
  const __m256i shift_bits = _mm256_set1_epi64x(kShiftBits);
  for (std::int64_t j = 0; j < d; ++j) {
    std::int64_t* out = sums + j * classes;
    for (std::int64_t k = 0; k < vectors; k += 4) {
      const __m256d shifted = _mm256_add_pd(_mm256_mul_pd(_mm256_loadu_pd(partial + j * padded + k), scale), shift);
      const __m256i value = _mm256_sub_epi64(_mm256_castpd_si256(shifted), shift_bits);
      auto* target = reinterpret_cast<__m256i*>(out + k);
      _mm256_storeu_si256(target, _mm256_add_epi64(_mm256_loadu_si256(target), value));
    }
    for (std::int64_t k = vectors; k < classes; ++k)
      out[k] += std::bit_cast<std::int64_t>(partial[j * padded + k] * unit + kShift) - kShiftBits;
  }
  return true;
}

#undef LETHE_AVX2
#endif  // __x86_64__

std::int64_t tile_portable(const double* x, const std::int64_t* y, std::int64_t rows, std::int64_t d,
                           std::int64_t classes, std::int64_t padded, const double* w, double clip, double bound,
                           double* z, double* x_norms, double* g) {
  for (std::int64_t i = 0; i < rows; ++i) {
    if (!row_in_bounds(x + i * d, d, bound)) return i;
    x_norms[i] = row_norm2(x + i * d, d);
  }
  std::fill(z, z + rows * padded, 0.0);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < d; ++j)
      for (std::int64_t k = 0; k < padded; ++k) z[i * padded + k] = std::fma(x[i * d + j], w[j * padded + k], z[i * padded + k]);
  for (std::int64_t i = 0; i < rows; ++i) residual_row(z + i * padded, classes, y[i], x_norms[i], clip);
  std::fill(g, g + d * padded, 0.0);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < d; ++j)
      for (std::int64_t k = 0; k < padded; ++k) g[j * padded + k] = std::fma(x[i * d + j], z[i * padded + k], g[j * padded + k]);
  return -1;
}

// The tile and rounding functions of a kernel.
struct KernelOps {
  decltype(&tile_portable) tile;
  decltype(&add_fixed_point_portable) add_fixed_point;
};

KernelOps ops_of(TileKernel kernel) {
#if defined(__x86_64__)
  if (kernel == TileKernel::kAvx2) return {tile_avx2, add_fixed_point_avx2};
#endif
  (void)kernel;
  return {tile_portable, add_fixed_point_portable};
}

}  // namespace

double kernel_exp(double x) {
  x = kExpLow > x ? kExpLow : x;  // NaN stays NaN
  const double k = std::nearbyint(x * kLog2e);  // ties to even, as _MM_FROUND_TO_NEAREST_INT
  double r = std::fma(-k, kLn2Hi, x);
  r = std::fma(-k, kLn2Lo, r);
  double p = kExpPoly[0];
  for (std::size_t i = 1; i < std::size(kExpPoly); ++i) p = std::fma(p, r, kExpPoly[i]);
  const std::int64_t exponent = std::bit_cast<std::int64_t>(k + kShift) - kShiftBits;
  return p * std::bit_cast<double>(static_cast<std::uint64_t>(exponent + 1023) << 52);
}

TileKernel best_tile_kernel() {
#if defined(__x86_64__)
  static const TileKernel best = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? TileKernel::kAvx2
                                                                                                  : TileKernel::kPortable;
  return best;
#else
  return TileKernel::kPortable;  // the vector kernel is x86-64's
#endif
}

const char* to_string(TileKernel kernel) { return kernel == TileKernel::kAvx2 ? "avx2" : "portable"; }

TileSums::TileSums(const double* weights, std::int64_t num_features, std::int64_t num_classes, double clip, int bits,
                   double feature_bound, TileKernel kernel)
    : d_(num_features),
      classes_(num_classes),
      padded_((num_classes + 3) / 4 * 4),
      clip_(clip),
      unit_(std::ldexp(1.0, bits)),
      bound_(feature_bound),
      kernel_(kernel),
      weights_(static_cast<std::size_t>(d_ * padded_), 0.0),
      residuals_(static_cast<std::size_t>((kMaxTileRows + 4) * padded_)),
      scratch_(static_cast<std::size_t>(4 * padded_ + kMaxTileRows + 8)),
      partial_(static_cast<std::size_t>(d_ * padded_)),
      sums_(static_cast<std::size_t>(d_ * classes_), 0) {
  if (kernel == TileKernel::kAvx2 && best_tile_kernel() != TileKernel::kAvx2)
    throw std::invalid_argument("noisy-GD tile kernel: this CPU has no AVX2 and FMA");
  for (std::int64_t j = 0; j < d_; ++j)
    std::copy(weights + j * classes_, weights + (j + 1) * classes_, weights_.begin() + j * padded_);
}

std::int64_t TileSums::add(const double* x, const std::int64_t* y, std::int64_t rows) {
  if (rows < 1 || rows > kMaxTileRows) throw std::invalid_argument("noisy-GD tile kernel: a tile holds 1 to 256 rows");
  const KernelOps ops = ops_of(kernel_);
  // Scratch on a 32-byte boundary (vector loads and stores).
  const auto address = reinterpret_cast<std::uintptr_t>(scratch_.data());
  double* scratch = scratch_.data() + (32 - address % 32) % 32 / sizeof(double);
  const std::int64_t bad = ops.tile(x, y, rows, d_, classes_, padded_, weights_.data(), clip_, bound_, residuals_.data(),
                                scratch, partial_.data());
  if (bad >= 0) return bad;
  return ops.add_fixed_point(partial_.data(), d_, classes_, padded_, unit_, sums_.data()) ? -1 : -2;
}

}  // namespace lethe::trainer::detail
