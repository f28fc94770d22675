/* Attention for every row of a step on the slot KV cache: decode tokens and prompt chunks.
 *
 * Each row is (slot, position). First every row's K and V are written into its slot at its
 * position; then, for each (row, kv head), the G query heads that share that kv head attend
 * over positions 0..position of the row's slot, the causal mask by construction. The cache
 * is read once per kv head (K for all G scores, then V for all G outputs), with no padding
 * to the longest request and no repeated K/V for GQA.
 *
 * A row's result depends only on its slot's keys and values up to its position, summed in
 * a fixed order: the same whether the prompt was prefilled in one chunk or many, alone or
 * beside other requests (batch invariance, and prefix reuse that is exact).
 *
 * Layouts (heads contiguous inside a row, rows `*_stride` floats apart):
 *   q [D, KVH * G, Dh]   k, v [D, KVH, Dh]   out [D, KVH * G, Dh]   float32
 *   kc, vc [slots, KVH, cap, Dh]   float32 (_f32) or float16 (_f16: half the memory and
 *   half the bytes read per step; F16C converts 8 values per instruction) or float8 e5m2 (_e5m2:
 *   a quarter; e5m2 is float16 without its low 8 mantissa bits, so a byte shifted into the high
 *   half of a 16-bit lane is its float16, and F16C converts it too)
 * Preconditions (checked by the caller): Dh % 8 == 0, Dh <= 256, G <= 16.
 */
#include "simd.h"
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#define LOAD_F32(p) _mm256_loadu_ps(p)
#define LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

static inline void store_row_f32(float *dst, const float *src, long n) { memcpy(dst, src, sizeof(float) * n); }
static inline void store_row_f16(uint16_t *dst, const float *src, long n) {
  for (long i = 0; i < n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
}

/* e5m2 keeps a float16's top byte: the byte in the high half of each 16-bit lane is a float16. */
#define LOAD_E5M2(p) _mm256_cvtph_ps(_mm_unpacklo_epi8(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)(p))))

/* float32 -> float8 e5m2 rounded to nearest even in one step from float32 (through float16 would
 * round twice), as torch's .to(torch.float8_e5m2): the same bytes whichever path wrote the cache. */
static inline uint8_t to_e5m2(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  const uint8_t sign = (uint8_t)((b >> 24) & 0x80);
  b &= 0x7FFFFFFFu;
  if (b > 0x7F800000u) return sign | 0x7F;         /* NaN */
  if (b >= 0x47800000u) return sign | 0x7C;        /* >= 2^16: past the largest finite e5m2 -> inf */
  if (b < 0x38800000u) {                           /* below 2^-14: a subnormal, in steps of 2^-16 */
    const float sum = f < 0 ? -f + 128.0f : f + 128.0f; /* 2^7's float32 ulp is 2^-16: the add rounds */
    uint32_t s;
    memcpy(&s, &sum, sizeof s);
    return sign | (uint8_t)(s - 0x43000000u);
  }
  const uint32_t odd = (b >> 21) & 1;              /* round half to even on the kept 2 mantissa bits */
  b += ((uint32_t)(15 - 127) << 23) + 0xFFFFFu + odd;
  return sign | (uint8_t)(b >> 21);
}

static inline void store_row_e5m2(uint8_t *dst, const float *src, long n) {
  for (long i = 0; i < n; i++) dst[i] = to_e5m2(src[i]);
}

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

#define ATTENTION(NAME, T, LOAD8, STORE_ROW)                                              \
  void NAME(const float *q, long q_stride, const float *k, long k_stride, const float *v,          \
            long v_stride, T *kc, T *vc, const long *slots, const long *positions, float *out,     \
            long D, long KVH, long G, long Dh, long cap, float scale, int threads) {               \
    _Pragma("omp parallel num_threads(threads)") {                                                 \
      long max_len = 0;                                                                            \
      for (long d = 0; d < D; d++) max_len = positions[d] + 1 > max_len ? positions[d] + 1 : max_len; \
      float *scores = malloc(sizeof(float) * G * max_len);                                         \
      /* all writes before any read: a chunk's rows read each other's keys */                     \
      _Pragma("omp for schedule(static)")                                                          \
      for (long item = 0; item < D * KVH; item++) {                                                \
        long d = item / KVH, h = item % KVH, at = ((slots[d] * KVH + h) * cap + positions[d]) * Dh; \
        STORE_ROW(kc + at, k + d * k_stride + h * Dh, Dh);                                         \
        STORE_ROW(vc + at, v + d * v_stride + h * Dh, Dh);                                         \
      }                                                                                            \
      _Pragma("omp for schedule(dynamic, 1)")                                                      \
      for (long item = 0; item < D * KVH; item++) {                                                \
        long d = item / KVH, h = item % KVH, pos = positions[d], len = pos + 1, nv = Dh / 8;       \
        T *kh = kc + ((slots[d] * KVH + h) * cap) * Dh;                                            \
        T *vh = vc + ((slots[d] * KVH + h) * cap) * Dh;                                            \
        const float *qh = q + d * q_stride + h * G * Dh;                                           \
        /* scores[g][t] = scale * q_g . K[t]; four keys at a time share one reduction */           \
        long t = 0;                                                                                \
        for (; t + 4 <= len; t += 4) {                                                             \
          const T *kt = kh + t * Dh;                                                               \
          for (long g = 0; g < G; g++) {                                                           \
            const float *qg = qh + g * Dh;                                                         \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                            \
            for (long i = 0; i < nv; i++) {                                                        \
              __m256 qv = _mm256_loadu_ps(qg + 8 * i);                                             \
              a0 = _mm256_fmadd_ps(qv, LOAD8(kt + 8 * i), a0);                                     \
              a1 = _mm256_fmadd_ps(qv, LOAD8(kt + Dh + 8 * i), a1);                                \
              a2 = _mm256_fmadd_ps(qv, LOAD8(kt + 2 * Dh + 8 * i), a2);                            \
              a3 = _mm256_fmadd_ps(qv, LOAD8(kt + 3 * Dh + 8 * i), a3);                            \
            }                                                                                      \
            _mm_storeu_ps(scores + g * len + t, _mm_mul_ps(hsum4(a0, a1, a2, a3), _mm_set1_ps(scale))); \
          }                                                                                        \
        }                                                                                          \
        for (; t < len; t++) {                                                                     \
          const T *kt = kh + t * Dh;                                                               \
          for (long g = 0; g < G; g++) {                                                           \
            const float *qg = qh + g * Dh;                                                         \
            __m256 acc = _mm256_setzero_ps();                                                      \
            for (long i = 0; i < nv; i++)                                                          \
              acc = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8 * i), LOAD8(kt + 8 * i), acc);         \
            scores[g * len + t] = hsum(acc) * scale;                                               \
          }                                                                                        \
        }                                                                                          \
        for (long g = 0; g < G; g++) softmax_inplace(scores + g * len, len);                       \
        /* out_g = sum_t p[g][t] V[t], each output summed over t in order. For a 64-wide head one  \
         * query head at a time, its 8 accumulators in registers (V re-read from cache per head):   \
         * the general loop's G x nv accumulators live in memory, and a 4k-token prompt's           \
         * attention spent most of its time storing them. The same FMAs in the same order.    */   \
        float *o = out + d * KVH * G * Dh + h * G * Dh;                                            \
        if (nv == 8) {                                                                             \
          for (long g = 0; g < G; g++) {                                                           \
            const float *p = scores + g * len;                                                     \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0; \
            for (long t = 0; t < len; t++) {                                                       \
              const T *vt = vh + t * Dh;                                                           \
              const __m256 pt = _mm256_set1_ps(p[t]);                                              \
              a0 = _mm256_fmadd_ps(pt, LOAD8(vt), a0);                                             \
              a1 = _mm256_fmadd_ps(pt, LOAD8(vt + 8), a1);                                         \
              a2 = _mm256_fmadd_ps(pt, LOAD8(vt + 16), a2);                                        \
              a3 = _mm256_fmadd_ps(pt, LOAD8(vt + 24), a3);                                        \
              a4 = _mm256_fmadd_ps(pt, LOAD8(vt + 32), a4);                                        \
              a5 = _mm256_fmadd_ps(pt, LOAD8(vt + 40), a5);                                        \
              a6 = _mm256_fmadd_ps(pt, LOAD8(vt + 48), a6);                                        \
              a7 = _mm256_fmadd_ps(pt, LOAD8(vt + 56), a7);                                        \
            }                                                                                      \
            float *og = o + g * Dh;                                                                \
            _mm256_storeu_ps(og, a0), _mm256_storeu_ps(og + 8, a1), _mm256_storeu_ps(og + 16, a2); \
            _mm256_storeu_ps(og + 24, a3), _mm256_storeu_ps(og + 32, a4), _mm256_storeu_ps(og + 40, a5); \
            _mm256_storeu_ps(og + 48, a6), _mm256_storeu_ps(og + 56, a7);                          \
          }                                                                                        \
          continue;                                                                                \
        }                                                                                          \
        __m256 acc[16][32];                                                                        \
        for (long g = 0; g < G; g++)                                                               \
          for (long i = 0; i < nv; i++) acc[g][i] = _mm256_setzero_ps();                           \
        for (long t = 0; t < len; t++) {                                                           \
          const T *vt = vh + t * Dh;                                                               \
          for (long i = 0; i < nv; i++) {                                                          \
            __m256 vv = LOAD8(vt + 8 * i);                                                         \
            for (long g = 0; g < G; g++)                                                           \
              acc[g][i] = _mm256_fmadd_ps(_mm256_set1_ps(scores[g * len + t]), vv, acc[g][i]);     \
          }                                                                                        \
        }                                                                                          \
        for (long g = 0; g < G; g++)                                                               \
          for (long i = 0; i < nv; i++) _mm256_storeu_ps(o + g * Dh + 8 * i, acc[g][i]);           \
      }                                                                                            \
      free(scores);                                                                                \
    }                                                                                              \
  }

ATTENTION(isvc_attention_f32, float, LOAD_F32, store_row_f32)
ATTENTION(isvc_attention_f16, uint16_t, LOAD_F16, store_row_f16)
ATTENTION(isvc_attention_e5m2, uint8_t, LOAD_E5M2, store_row_e5m2)
