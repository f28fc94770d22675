/* Integer activations shared by the quantized linears (linear_int8.c, linear_int4.c). */
#pragma once
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define QMAX 511.0f

/* A row with a NaN or an infinity gets a NaN scale, so its outputs are NaN, as torch's are. */
static inline void quantize_row(const float *x, int16_t *q, float *scale, long K) {
  float amax = 0.0f;
  int finite = 1;
  for (long k = 0; k < K; k++) {
    amax = fmaxf(amax, fabsf(x[k]));
    finite &= isfinite(x[k]);
  }
  const float s = fmaxf(amax, FLT_MIN) / QMAX;
  for (long k = 0; k < K; k++) q[k] = finite ? (int16_t)fminf(fmaxf(nearbyintf(x[k] / s), -QMAX), QMAX) : 0;
  *scale = finite ? s : NAN;
}

static inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

#define LD 8 /* leading dimension of a tile's sums: sums[i * LD + j] */

/* acc += the pairwise int16 products of a and b, summed into int32 lanes: AVX2's vpmaddwd + vpaddd,
 * or AVX-512 VNNI's vpdpwssd in one instruction (the kernels pick by CPU, or AVX2 when `portable`). */
static inline __m256i mul_avx2(__m256i acc, __m256i a, __m256i b) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}
#define VNNI __attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni")))
VNNI static inline __m256i mul_vnni(__m256i acc, __m256i a, __m256i b) { return _mm256_dpwssd_epi32(acc, a, b); }
