/* Decode attention on the slot KV cache: one new token per running request.
 *
 * For each (request, kv head): write this step's K and V into the cache at the request's
 * position, then attend the G query heads that share that kv head over exactly the
 * request's own length. The cache is read once per kv head (K for all G scores, then V for
 * all G outputs), with no padding to the longest request and no repeated K/V for GQA.
 *
 * Layouts (float32, heads contiguous inside a row, rows `*_stride` floats apart):
 *   q [D, KVH * G, Dh]   k, v [D, KVH, Dh]   kc, vc [slots, KVH, cap, Dh]   out [D, KVH * G, Dh]
 * Preconditions (checked by the caller): Dh % 8 == 0, Dh <= 256, G <= 16.
 */
#include "simd.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void softmax_inplace(float *s, long n) {
  float m = -INFINITY;
  for (long i = 0; i < n; i++) m = s[i] > m ? s[i] : m;
  __m256 mv = _mm256_set1_ps(m), sum = _mm256_setzero_ps();
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv));
    _mm256_storeu_ps(s + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = hsum(sum);
  for (; i < n; i++) {
    s[i] = expf(s[i] - m);
    total += s[i];
  }
  float inv = 1.f / total;
  for (i = 0; i < n; i++) s[i] *= inv;
}

void isvc_decode_attention(const float *q, long q_stride, const float *k, long k_stride,
                           const float *v, long v_stride, float *kc, float *vc,
                           const long *slots, const long *positions, float *out, long D,
                           long KVH, long G, long Dh, long cap, float scale, int threads) {
#pragma omp parallel num_threads(threads)
  {
    long max_len = 0;
    for (long d = 0; d < D; d++) max_len = positions[d] + 1 > max_len ? positions[d] + 1 : max_len;
    float *scores = malloc(sizeof(float) * G * max_len);
#pragma omp for schedule(dynamic, 1)
    for (long item = 0; item < D * KVH; item++) {
      long d = item / KVH, h = item % KVH, pos = positions[d], len = pos + 1;
      float *kh = kc + ((slots[d] * KVH + h) * cap) * Dh;
      float *vh = vc + ((slots[d] * KVH + h) * cap) * Dh;
      memcpy(kh + pos * Dh, k + d * k_stride + h * Dh, sizeof(float) * Dh);
      memcpy(vh + pos * Dh, v + d * v_stride + h * Dh, sizeof(float) * Dh);
      const float *qh = q + d * q_stride + h * G * Dh;
      long nv = Dh / 8;
      /* scores[g][t] = scale * q_g . K[t] */
      for (long t = 0; t < len; t++) {
        const float *kt = kh + t * Dh;
        for (long g = 0; g < G; g++) {
          const float *qg = qh + g * Dh;
          __m256 acc = _mm256_setzero_ps();
          for (long i = 0; i < nv; i++)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8 * i), _mm256_loadu_ps(kt + 8 * i), acc);
          scores[g * len + t] = hsum(acc) * scale;
        }
      }
      for (long g = 0; g < G; g++) softmax_inplace(scores + g * len, len);
      /* out_g = sum_t p[g][t] V[t] */
      __m256 acc[16][32];
      for (long g = 0; g < G; g++)
        for (long i = 0; i < nv; i++) acc[g][i] = _mm256_setzero_ps();
      for (long t = 0; t < len; t++) {
        const float *vt = vh + t * Dh;
        for (long i = 0; i < nv; i++) {
          __m256 vv = _mm256_loadu_ps(vt + 8 * i);
          for (long g = 0; g < G; g++)
            acc[g][i] = _mm256_fmadd_ps(_mm256_set1_ps(scores[g * len + t]), vv, acc[g][i]);
        }
      }
      float *o = out + d * KVH * G * Dh + h * G * Dh;
      for (long g = 0; g < G; g++)
        for (long i = 0; i < nv; i++) _mm256_storeu_ps(o + g * Dh + 8 * i, acc[g][i]);
    }
    free(scores);
  }
}
