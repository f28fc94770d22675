/* The small per-layer ops of a Llama block, one pass each over float32 rows.
 *
 * Each replaces several torch ops (rms_norm is pow, mean, add, rsqrt, mul, mul; RoPE is
 * slice, neg, cat, mul, mul, add): at decode sizes a torch op costs more in dispatch than
 * in arithmetic. Rows are split across threads only when there are enough of them.
 */
#include "simd.h"
#include <math.h>

#define PAR_ROWS 16 /* below this many rows, one thread: waking the other costs more */

/* out[m] = x[m] / sqrt(mean(x[m]^2) + eps) * w.  K % 8 == 0. */
void isvc_rms_norm(const float *x, const float *w, float *out, long M, long K, float eps,
                   int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (M >= PAR_ROWS)
  for (long m = 0; m < M; m++) {
    const float *xm = x + m * K;
    __m256 ss = _mm256_setzero_ps();
    for (long k = 0; k < K; k += 8) {
      __m256 v = _mm256_loadu_ps(xm + k);
      ss = _mm256_fmadd_ps(v, v, ss);
    }
    __m256 scale = _mm256_set1_ps(1.0f / sqrtf(hsum(ss) / (float)K + eps));
    for (long k = 0; k < K; k += 8)
      _mm256_storeu_ps(out + m * K + k,
                       _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xm + k), scale), _mm256_loadu_ps(w + k)));
  }
}

/* Rotary embedding in place on the first `heads` heads of each row (q and k heads):
 * x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin over the two halves of each head, with the
 * position's cos/sin rows [Dh]. Dh % 16 == 0. */
void isvc_rope(float *x, long row_stride, const long *positions, const float *cos_table,
               const float *sin_table, long M, long heads, long Dh, int threads) {
  long half = Dh / 2;
#pragma omp parallel for schedule(static) num_threads(threads) if (M >= PAR_ROWS)
  for (long m = 0; m < M; m++) {
    const float *c = cos_table + positions[m] * Dh, *s = sin_table + positions[m] * Dh;
    for (long h = 0; h < heads; h++) {
      float *x1 = x + m * row_stride + h * Dh, *x2 = x1 + half;
      for (long i = 0; i < half; i += 8) {
        __m256 a = _mm256_loadu_ps(x1 + i), b = _mm256_loadu_ps(x2 + i);
        _mm256_storeu_ps(x1 + i, _mm256_fnmadd_ps(b, _mm256_loadu_ps(s + i),
                                                  _mm256_mul_ps(a, _mm256_loadu_ps(c + i))));
        _mm256_storeu_ps(x2 + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(s + half + i),
                                                 _mm256_mul_ps(b, _mm256_loadu_ps(c + half + i))));
      }
    }
  }
}

/* out[m] = silu(gu[m, :I]) * gu[m, I:]  (SwiGLU on the fused gate/up projection). I % 8 == 0. */
void isvc_silu_mul(const float *gu, float *out, long M, long I, int threads) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
#pragma omp parallel for schedule(static) num_threads(threads) if (M >= PAR_ROWS)
  for (long m = 0; m < M; m++) {
    const float *g = gu + m * 2 * I, *u = g + I;
    for (long i = 0; i < I; i += 8) {
      __m256 x = _mm256_loadu_ps(g + i);
      /* sigmoid(x) from t = e^-|x| (never overflows): 1/(1+t) for x >= 0, t/(1+t) below */
      __m256 t = exp256(_mm256_or_ps(x, sign));
      __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, t));
      __m256 sig = _mm256_blendv_ps(inv, _mm256_mul_ps(t, inv), x);
      _mm256_storeu_ps(out + m * I + i, _mm256_mul_ps(_mm256_mul_ps(x, sig), _mm256_loadu_ps(u + i)));
    }
  }
}

/* Structured outputs: logits[m][v] = -inf where bit v of row m's token bitmask is 0 (bit j of
 * word w is token 32 w + j), for v < V. One pass over the row instead of torch's unpack of every
 * bit into a tensor, a comparison and a masked fill (~2-4 ms for 32 rows of 49k tokens). */
void isvc_apply_bitmask(float *logits, const unsigned int *bitmask, long M, long V, long words) {
  const float neg_inf = -INFINITY;
  for (long m = 0; m < M; m++) {
    float *row = logits + m * V;
    const unsigned int *bits = bitmask + m * words;
    for (long w = 0; w < words && 32 * w < V; w++) {
      unsigned int word = bits[w];
      if (word == 0xFFFFFFFFu)
        continue; /* all 32 allowed */
      long end = 32 * w + 32 < V ? 32 * w + 32 : V;
      for (long v = 32 * w; v < end; v++)
        if (!((word >> (v - 32 * w)) & 1u))
          row[v] = neg_inf;
    }
  }
}
