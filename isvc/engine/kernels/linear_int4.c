/* y = x @ w.T with 4-bit grouped weights (GPTQ / AWQ checkpoints) and 10-bit integer activations.
 *
 * The weights [N, K] are unsigned 4-bit q with a float scale and an integer zero point per row
 * and group of `group` consecutive inputs: w[n][k] = scale[n][g] * (q[n][k] - zero[n][g])
 * (kernels/int4.py lays a checkpoint out so; act-order checkpoints have their inputs permuted
 * so that groups are consecutive). Each activation row is quantized on its own scale to
 * integers in [-511, 511], as in linear_int8.c. Per group, sum_k q * x is exact in int32; the
 * zero point comes off as zero * sum_k x, the group's sum of the row's integer activations:
 *   y[m][n] = xscale[m] * (sum_g scale[n][g] * dot_g - sum_g scale[n][g] * (zero[n][g] * xsum[m][g])).
 * The float sums run in the same order for a row whatever the tile or batch around it, so a
 * row's result never depends on its neighbours (batch invariance). Each group's scaling is one
 * explicit FMA (the library builds with -ffp-contract=off, so only where written): with groups
 * of 32 it is a third of a tile's work.
 *
 * Packing: each 32 inputs of a row are 16 bytes, byte b holding input b (low nibble) and input
 * b + 16 (high nibble): one widening load gives 16 int16 lanes holding both, a mask the first 16
 * inputs and a shift the next 16 (4 ops for 32 weights; a layout of 8-byte halves took 10).
 * Products as in linear_int8.c: vpdpwssd where the CPU has AVX-512 VNNI, else vpmaddwd + vpaddd.
 * K % 32 == 0, group % 32 == 0, N % 4 == 0.
 */
#include <stdint.h>

#include "quant.h"
#include "simd.h"

/* Inputs k .. k + 15 (*lo) and k + 16 .. k + 31 (*hi) of a packed row as int16 lanes in 0..15. */
static inline void unpack32(const uint8_t *p, __m256i *lo, __m256i *hi) {
  const __m256i both = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
  *lo = _mm256_and_si256(both, _mm256_set1_epi16(0x0F));
  *hi = _mm256_srli_epi16(both, 4);
}

/* sums[i * LD + j] = sum_g scale[i][g] * sum_{k in g} q[i][k] * x[j][k] for R weight rows and MB
 * activation rows, prefetching the packed rows at `next` meanwhile (see linear_int8.c). */
#define DOT(NAME, ATTR, MUL, R, MB)                                                                      \
  ATTR static void NAME(const int16_t *x, const uint8_t *w, long K, long group, const float *scale, long G, \
                        float *sums, const uint8_t *next) {                                              \
    const long row = K / 2;                                                                              \
    __m256 facc[R][MB];                                                                                  \
    for (int i = 0; i < R; i++)                                                                          \
      for (int j = 0; j < MB; j++) facc[i][j] = _mm256_setzero_ps();                                     \
    for (long g = 0, k0 = 0; k0 < K; g++, k0 += group) {                                                 \
      const long k1 = k0 + group < K ? k0 + group : K;                                                   \
      __m256i acc[R][MB];                                                                                \
      for (int i = 0; i < R; i++)                                                                        \
        for (int j = 0; j < MB; j++) acc[i][j] = _mm256_setzero_si256();                                 \
      for (long k = k0; k < k1; k += 32) {                                                               \
        if (next && (k & 127) == 0)                                                                      \
          for (int i = 0; i < R; i++) _mm_prefetch((const char *)(next + i * row + k / 2), _MM_HINT_T0); \
        __m256i xlo[MB], xhi[MB];                                                                        \
        for (int j = 0; j < MB; j++) {                                                                   \
          xlo[j] = _mm256_loadu_si256((const __m256i *)(x + j * K + k));                                 \
          xhi[j] = _mm256_loadu_si256((const __m256i *)(x + j * K + k + 16));                            \
        }                                                                                                \
        for (int i = 0; i < R; i++) {                                                                    \
          __m256i wlo, whi;                                                                              \
          unpack32(w + i * row + k / 2, &wlo, &whi);                                                     \
          for (int j = 0; j < MB; j++) acc[i][j] = MUL(MUL(acc[i][j], wlo, xlo[j]), whi, xhi[j]);        \
        }                                                                                                \
      }                                                                                                  \
      for (int i = 0; i < R; i++) {                                                                      \
        const __m256 s = _mm256_set1_ps(scale[i * G + g]);                                               \
        for (int j = 0; j < MB; j++)                                                                     \
          facc[i][j] = FMA(_mm256_cvtepi32_ps(acc[i][j]), s, facc[i][j]);                               \
      }                                                                                                  \
    }                                                                                                    \
    for (int i = 0; i < R; i++)                                                                          \
      for (int j = 0; j < MB; j++) sums[i * LD + j] = hsum(facc[i][j]);                                  \
  }

#define FMA _mm256_fmadd_ps

/* AVX2 has 16 vector registers: one activation row per tile keeps 4 int and 4 float sums in them. */
DOT(avx2_4x1, , mul_avx2, 4, 1)
DOT(vnni_8x1, VNNI, mul_vnni, 8, 1)
DOT(vnni_4x1, VNNI, mul_vnni, 4, 1)
DOT(vnni_4x2, VNNI, mul_vnni, 4, 2)
DOT(vnni_4x3, VNNI, mul_vnni, 4, 3)

typedef void (*dot_fn)(const int16_t *, const uint8_t *, long, long, const float *, long, float *, const uint8_t *);

/* y[M, N] = x[M, K] @ w.T, or y += it when `add`. xq [M, K], xscale [M] and xsum [M, G] are the
 * caller's scratch. */
void isvc_linear_q4(const float *x, const uint8_t *w, const float *scale, const float *zero, float *y, long M, long N,
                    long K, long group, int add, int threads, int16_t *xq, float *xscale, int32_t *xsum, int portable) {
  const int vnni = !portable && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  const dot_fn by_rows[4] = {0, vnni ? vnni_4x1 : avx2_4x1, vnni ? vnni_4x2 : 0, vnni ? vnni_4x3 : 0};
  const int widest = vnni ? 3 : 1;
  const long G = (K + group - 1) / group;
  const long step = vnni && M == 1 && N % 8 == 0 ? 8 : 4;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (long m = 0; m < M; m++) {
      quantize_row(x + m * K, xq + m * K, &xscale[m], K);
      for (long g = 0; g < G; g++) {
        int32_t s = 0;
        const long k1 = (g + 1) * group < K ? (g + 1) * group : K;
        for (long k = g * group; k < k1; k++) s += xq[m * K + k];
        xsum[m * G + g] = s;
      }
    }
#pragma omp for schedule(static)
    for (long n = 0; n < N; n += step) {
      float sums[8 * LD];
      const uint8_t *wn = w + n * (K / 2);
      const uint8_t *next = n + step < N ? wn + step * (K / 2) : 0;
      const float *sn = scale + n * G;
      for (long m = 0; m < M; m += LD) {
        const long rows = M - m < LD ? M - m : LD;
        if (step == 8) vnni_8x1(xq, wn, K, group, sn, G, sums, next);
        else
          for (long j = 0; j < rows;) {
            long t = rows - j < widest ? rows - j : widest;
            while (!by_rows[t]) t--;
            by_rows[t](xq + (m + j) * K, wn, K, group, sn, G, sums + j, m + j ? 0 : next);
            j += t;
          }
        for (int i = 0; i < step; i++)
          for (long j = 0; j < rows; j++) {
            float corr = 0.0f;
            for (long g = 0; g < G; g++)
              corr += sn[i * G + g] * (zero[(n + i) * G + g] * (float)xsum[(m + j) * G + g]);
            const float v = (sums[i * LD + j] - corr) * xscale[m + j];
            float *out = y + (m + j) * N + n + i;
            *out = add ? *out + v : v;
          }
      }
    }
  }
}
