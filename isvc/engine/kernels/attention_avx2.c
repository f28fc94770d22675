/* Attention for every row of a step on the slot KV cache: decode tokens and prompt chunks.
 *
 * Each row is (slot, position). First every row's K and V are written into its slot at its
 * position; then, for each (row, kv head) pair, the G query heads that share that kv head attend
 * over positions 0..position of the row's slot, the causal mask by construction, with no padding
 * to the longest request and no repeated K/V for GQA.
 *
 * A pair's keys are taken in blocks of BLOCK positions (0..255, 256..511, ...). Per block, up to
 * three query heads at once: their scores against four keys per pass over the head dimension, then
 * exp(score - the block's max), then those weights times V, so each key and value is loaded and
 * widened once per three heads. The blocks are then combined in order, each weighted by
 * exp(its max - the overall max), and divided by the weighted sum of their exponentials.
 *
 * The blocks are fixed by position, so a row's result depends only on its slot's keys and values
 * up to its position, summed in a fixed order: the same whether the prompt was prefilled in one
 * chunk or many, alone or beside other requests (batch invariance, and prefix reuse that is
 * exact). Who computes a block is free: with few pairs (a lone decode over a long context, 3 kv
 * heads for 2 cores) every block is a work item, so both cores share each head; with many, each
 * pair is one.
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

#define BLOCK 256 /* positions per block; a multiple of 4 */

#define LOAD_F32(p) _mm256_loadu_ps(p)
#define LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

static inline void store_row_f32(float *dst, const float *src, long n) { memcpy(dst, src, sizeof(float) * n); }
static inline void store_row_f16(uint16_t *dst, const float *src, long n) {
  for (long i = 0; i < n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
}

/* e5m2 keeps a float16's top byte: the byte in the high half of each 16-bit lane is a float16. */
#define LOAD_E5M2(p) _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(p))), 8))

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

/* s[0..n) <- exp(s - max s); *m = that max, *l = the sum of the exponentials. */
static void exp_block(float *s, long n, float *m, float *l) {
  __m256 mv = _mm256_set1_ps(-INFINITY), sum = _mm256_setzero_ps();
  long i = 0;
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  float mx = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
  for (; i < n; i++) mx = s[i] > mx ? s[i] : mx;
  mv = _mm256_set1_ps(mx);
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv));
    _mm256_storeu_ps(s + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = hsum(sum);
  for (; i < n; i++) {
    s[i] = expf(s[i] - mx);
    total += s[i];
  }
  *m = mx, *l = total;
}

/* A block's part of a pair: m[g], l[g] and o[g][Dh] = sum_t exp(s[g][t] - m[g]) V[t] (not yet
 * divided). Blocks are stored [m (G), l (G), o (G * Dh)], PART floats apart. */
#define PART(G, Dh) ((G) * ((Dh) + 2))

/* out[g] = sum_b w_b o_b[g] / sum_b w_b l_b[g], w_b = exp(m_b[g] - max_b m_b[g]), over nb blocks in
 * order. Each w_b replaces its m_b in part (scratch). */
static void combine(float *part, long nb, long G, long Dh, float *out) {
  const long stride = PART(G, Dh);
  for (long g = 0; g < G; g++) {
    float mx = -INFINITY, total = 0.f;
    for (long b = 0; b < nb; b++) mx = part[b * stride + g] > mx ? part[b * stride + g] : mx;
    for (long b = 0; b < nb; b++) {
      part[b * stride + g] = expf(part[b * stride + g] - mx);
      total += part[b * stride + g] * part[b * stride + G + g];
    }
    const __m256 inv = _mm256_set1_ps(1.f / total);
    for (long i = 0; i < Dh; i += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (long b = 0; b < nb; b++)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(part[b * stride + g]), _mm256_loadu_ps(part + b * stride + 2 * G + g * Dh + i), acc);
      _mm256_storeu_ps(out + g * Dh + i, _mm256_mul_ps(acc, inv));
    }
  }
}

/* s[g * BLOCK + t] = scale * q_g . K[t] for GB query heads and n keys: four keys per pass over
 * the head dimension, each key loaded once for all GB heads (3 x 4 accumulators in registers). */
#define SCORES(SFX, T, LOAD8, GB)                                                                      \
  static inline void scores_##SFX##_##GB(const float *q, const T *k, long n, long Dh, float scale, float *s) { \
    const long nv = Dh / 8;                                                                            \
    long t = 0;                                                                                        \
    for (; t + 4 <= n; t += 4) {                                                                       \
      const T *kt = k + t * Dh;                                                                        \
      __m256 a[GB][4];                                                                                 \
      for (int g = 0; g < GB; g++) a[g][0] = a[g][1] = a[g][2] = a[g][3] = _mm256_setzero_ps();        \
      for (long i = 0; i < nv; i++)                                                                    \
        for (int j = 0; j < 4; j++) { /* one key in a register at a time: 12 accumulators fit */       \
          const __m256 kj = LOAD8(kt + j * Dh + 8 * i);                                                \
          for (int g = 0; g < GB; g++) a[g][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * Dh + 8 * i), kj, a[g][j]); \
        }                                                                                              \
      for (int g = 0; g < GB; g++)                                                                     \
        _mm_storeu_ps(s + g * BLOCK + t, _mm_mul_ps(hsum4(a[g][0], a[g][1], a[g][2], a[g][3]), _mm_set1_ps(scale))); \
    }                                                                                                  \
    for (; t < n; t++)                                                                                 \
      for (int g = 0; g < GB; g++) {                                                                   \
        __m256 acc = _mm256_setzero_ps();                                                              \
        for (long i = 0; i < nv; i++) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * Dh + 8 * i), LOAD8(k + t * Dh + 8 * i), acc); \
        s[g * BLOCK + t] = hsum(acc) * scale;                                                          \
      }                                                                                                \
  }

/* o[g][:] = sum_t p[g * BLOCK + t] V[t] for GB heads, 16 dimensions per pass over the keys (each value
 * loaded once for all GB heads), each output summed over t in order. */
#define VALUES(SFX, T, LOAD8, GB)                                                                      \
  static inline void values_##SFX##_##GB(const float *p, const T *v, long n, long Dh, float *o) {      \
    long i = 0;                                                                                        \
    for (; i + 16 <= Dh; i += 16) {                                                                    \
      __m256 a[GB][2];                                                                                 \
      for (int g = 0; g < GB; g++) a[g][0] = a[g][1] = _mm256_setzero_ps();                            \
      for (long t = 0; t < n; t++) {                                                                   \
        const __m256 v0 = LOAD8(v + t * Dh + i), v1 = LOAD8(v + t * Dh + i + 8);                       \
        for (int g = 0; g < GB; g++) {                                                                 \
          const __m256 pt = _mm256_broadcast_ss(p + g * BLOCK + t);                                    \
          a[g][0] = _mm256_fmadd_ps(pt, v0, a[g][0]);                                                  \
          a[g][1] = _mm256_fmadd_ps(pt, v1, a[g][1]);                                                  \
        }                                                                                              \
      }                                                                                                \
      for (int g = 0; g < GB; g++) _mm256_storeu_ps(o + g * Dh + i, a[g][0]), _mm256_storeu_ps(o + g * Dh + i + 8, a[g][1]); \
    }                                                                                                  \
    if (i < Dh) {                                                                                      \
      __m256 a[GB];                                                                                    \
      for (int g = 0; g < GB; g++) a[g] = _mm256_setzero_ps();                                         \
      for (long t = 0; t < n; t++) {                                                                   \
        const __m256 v0 = LOAD8(v + t * Dh + i);                                                       \
        for (int g = 0; g < GB; g++) a[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + g * BLOCK + t), v0, a[g]); \
      }                                                                                                \
      for (int g = 0; g < GB; g++) _mm256_storeu_ps(o + g * Dh + i, a[g]);                             \
    }                                                                                                  \
  }

/* One block of one pair: keys and values t0 .. t0 + n - 1 of the kv head at kh / vh, for the G
 * query heads at q, into part (m, l, o as PART describes); s is G * BLOCK floats of scratch. */
#define BLOCK_FN(SFX, T)                                                                               \
  static void block_##SFX(const float *q, const T *kh, const T *vh, long t0, long n, long G, long Dh, \
                          float scale, float *s, float *part) {                                        \
    for (long g = 0; g < G; g += 3) {                                                                  \
      const long gb = G - g < 3 ? G - g : 3;                                                           \
      if (gb == 3) scores_##SFX##_3(q + g * Dh, kh + t0 * Dh, n, Dh, scale, s + g * BLOCK);            \
      else if (gb == 2) scores_##SFX##_2(q + g * Dh, kh + t0 * Dh, n, Dh, scale, s + g * BLOCK);       \
      else scores_##SFX##_1(q + g * Dh, kh + t0 * Dh, n, Dh, scale, s + g * BLOCK);                    \
    }                                                                                                  \
    for (long g = 0; g < G; g++) exp_block(s + g * BLOCK, n, part + g, part + G + g);                  \
    float *o = part + 2 * G;                                                                           \
    for (long g = 0; g < G; g += 3) {                                                                  \
      const long gb = G - g < 3 ? G - g : 3;                                                           \
      if (gb == 3) values_##SFX##_3(s + g * BLOCK, vh + t0 * Dh, n, Dh, o + g * Dh);                   \
      else if (gb == 2) values_##SFX##_2(s + g * BLOCK, vh + t0 * Dh, n, Dh, o + g * Dh);              \
      else values_##SFX##_1(s + g * BLOCK, vh + t0 * Dh, n, Dh, o + g * Dh);                           \
    }                                                                                                  \
  }

static inline long blocks_of(long len) { return (len + BLOCK - 1) / BLOCK; }

#define ATTENTION(SFX, T, LOAD8, STORE_ROW)                                                            \
  SCORES(SFX, T, LOAD8, 1) SCORES(SFX, T, LOAD8, 2) SCORES(SFX, T, LOAD8, 3)                            \
  VALUES(SFX, T, LOAD8, 1) VALUES(SFX, T, LOAD8, 2) VALUES(SFX, T, LOAD8, 3)                            \
  BLOCK_FN(SFX, T)                                                                                     \
  void isvc_attention_##SFX(const float *q, long q_stride, const float *k, long k_stride, const float *v, \
                            long v_stride, T *kc, T *vc, const long *slots, const long *positions, float *out, \
                            long D, long KVH, long G, long Dh, long cap, float scale, int threads) {   \
    const long pairs = D * KVH, part_size = PART(G, Dh);                                               \
    long total = 0, most = 0;                                                                          \
    for (long d = 0; d < D; d++) {                                                                     \
      const long nb = blocks_of(positions[d] + 1);                                                     \
      total += KVH * nb, most = nb > most ? nb : most;                                                 \
    }                                                                                                  \
    const int split = pairs < 4 * threads && total > pairs;                                            \
    long *first = NULL; /* split: pair p's blocks are work items first[p] .. first[p + 1] - 1 */       \
    float *parts = NULL;                                                                               \
    if (split) {                                                                                       \
      first = malloc(sizeof(long) * (pairs + 1));                                                      \
      parts = malloc(sizeof(float) * total * part_size);                                               \
      first[0] = 0;                                                                                    \
      for (long p = 0; p < pairs; p++) first[p + 1] = first[p] + blocks_of(positions[p / KVH] + 1);    \
    }                                                                                                  \
    _Pragma("omp parallel num_threads(threads)") {                                                     \
      float *s = malloc(sizeof(float) * G * BLOCK);                                                    \
      float *own = split ? NULL : malloc(sizeof(float) * most * part_size);                            \
      /* all writes before any read: a chunk's rows read each other's keys */                         \
      _Pragma("omp for schedule(static)")                                                              \
      for (long item = 0; item < pairs; item++) {                                                      \
        long d = item / KVH, h = item % KVH, at = ((slots[d] * KVH + h) * cap + positions[d]) * Dh;    \
        STORE_ROW(kc + at, k + d * k_stride + h * Dh, Dh);                                             \
        STORE_ROW(vc + at, v + d * v_stride + h * Dh, Dh);                                             \
      }                                                                                                \
      if (split) {                                                                                     \
        _Pragma("omp for schedule(static)    ")                                                        \
        for (long j = 0; j < total; j++) {                                                             \
          long p = 0;                                                                                  \
          while (first[p + 1] <= j) p++;                                                               \
          const long d = p / KVH, h = p % KVH, t0 = (j - first[p]) * BLOCK, len = positions[d] + 1;   \
          const long n = len - t0 < BLOCK ? len - t0 : BLOCK, base = (slots[d] * KVH + h) * cap * Dh;  \
          block_##SFX(q + d * q_stride + h * G * Dh, kc + base, vc + base, t0, n, G, Dh, scale, s,     \
                      parts + j * part_size);                                                          \
        }                                                                                              \
        _Pragma("omp for schedule(static)")                                                            \
        for (long p = 0; p < pairs; p++)                                                               \
          combine(parts + first[p] * part_size, first[p + 1] - first[p], G, Dh, out + p * G * Dh);     \
      } else {                                                                                         \
        _Pragma("omp for schedule(dynamic, 1)")                                                        \
        for (long p = 0; p < pairs; p++) {                                                             \
          const long d = p / KVH, h = p % KVH, len = positions[d] + 1, nb = blocks_of(len);           \
          const long base = (slots[d] * KVH + h) * cap * Dh;                                           \
          for (long b = 0; b < nb; b++) {                                                              \
            const long t0 = b * BLOCK, n = len - t0 < BLOCK ? len - t0 : BLOCK;                        \
            block_##SFX(q + d * q_stride + h * G * Dh, kc + base, vc + base, t0, n, G, Dh, scale, s,   \
                        own + b * part_size);                                                          \
          }                                                                                            \
          combine(own, nb, G, Dh, out + p * G * Dh);                                                   \
        }                                                                                              \
      }                                                                                                \
      free(own);                                                                                       \
      free(s);                                                                                         \
    }                                                                                                  \
    free(parts);                                                                                       \
    free(first);                                                                                       \
  }

ATTENTION(f32, float, LOAD_F32, store_row_f32)
ATTENTION(f16, uint16_t, LOAD_F16, store_row_f16)
ATTENTION(e5m2, uint8_t, LOAD_E5M2, store_row_e5m2)
