/* y = x @ w.T with int8 weights and 10-bit integer activations (``--quantization int8``).
 *
 * The weights [N, K] are int8, one float scale per output channel (quantized once at load, by
 * kernels/int8.py). Each call quantizes each activation row on its own scale to integers in
 * [-511, 511] -- 10 bits: SmolLM2's perplexity moved +2.9 % with 8-bit activations per token,
 * -0.2 % with 10 (within noise of float activations) -- multiplies in exact int32, and scales
 * back: ((float)sum * row scale) * column scale. Integer sums are exact whatever the tiling, so
 * a row's result never depends on the rows beside it (batch invariance). The library is built
 * with -ffp-contract=off so that epilogue is never fused into an FMA, and the quantization
 * (nearbyintf: round half to even) matches kernels/int8.py's torch path to the bit.
 *
 * Products: int16 activations times int8 weights widened to int16, in pairs into int32 lanes --
 * AVX-512 VNNI's vpdpwssd where the CPU has it, else AVX2's vpmaddwd + vpaddd. |sum| <=
 * K * 511 * 127 stays inside int32 for K <= 32768 (the caller checks). K % 16 == 0, N % 4 == 0.
 */
#include <stdint.h>

#include "quant.h"
#include "simd.h"

/* sums[i * LD + j] = sum_k w[i][k] * x[j][k] for R weight rows and MB activation rows (sizes
 * fixed at compile time so the accumulators stay in registers), prefetching the weight rows
 * at `next` meanwhile: a model's weights stream from memory once per step, and an int8 row is
 * too short for the hardware prefetcher to run ahead of. */
#define DOT(NAME, ATTR, MUL, R, MB)                                                             \
  ATTR static void NAME(const int16_t *x, const int8_t *w, long K, int32_t *sums, const int8_t *next) { \
    __m256i acc[R][MB];                                                                         \
    for (int i = 0; i < R; i++)                                                                 \
      for (int j = 0; j < MB; j++) acc[i][j] = _mm256_setzero_si256();                          \
    for (long k = 0; k < K; k += 16) {                                                          \
      if (next && (k & 63) == 0)                                                                \
        for (int i = 0; i < R; i++) _mm_prefetch((const char *)(next + i * K + k), _MM_HINT_T0); \
      __m256i xv[MB];                                                                           \
      for (int j = 0; j < MB; j++) xv[j] = _mm256_loadu_si256((const __m256i *)(x + j * K + k)); \
      for (int i = 0; i < R; i++) {                                                             \
        const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + i * K + k))); \
        for (int j = 0; j < MB; j++) acc[i][j] = MUL(acc[i][j], wv, xv[j]);                     \
      }                                                                                         \
    }                                                                                           \
    for (int i = 0; i < R; i++)                                                                 \
      for (int j = 0; j < MB; j++) sums[i * LD + j] = hsum_epi32(acc[i][j]);                    \
  }

DOT(avx2_8x1, , mul_avx2, 8, 1)
DOT(avx2_4x1, , mul_avx2, 4, 1)
DOT(avx2_4x2, , mul_avx2, 4, 2)
DOT(vnni_8x1, VNNI, mul_vnni, 8, 1)
DOT(vnni_4x1, VNNI, mul_vnni, 4, 1)
DOT(vnni_4x2, VNNI, mul_vnni, 4, 2)
DOT(vnni_4x3, VNNI, mul_vnni, 4, 3)
DOT(vnni_4x6, VNNI, mul_vnni, 4, 6)

typedef void (*dot_fn)(const int16_t *, const int8_t *, long, int32_t *, const int8_t *);

/* The tile functions by activation rows (index: rows in the tile) for this CPU, or the AVX2 ones
 * when `portable` (tests check both give the same bits). Returns the widest. */
static int tiles(dot_fn by_rows[7], dot_fn *dot8, int portable) {
  const int vnni = !portable && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  const dot_fn v[7] = {0, vnni_4x1, vnni_4x2, vnni_4x3, 0, 0, vnni_4x6};
  const dot_fn a[7] = {0, avx2_4x1, avx2_4x2, 0, 0, 0, 0};
  for (int i = 0; i < 7; i++) by_rows[i] = vnni ? v[i] : a[i];
  *dot8 = vnni ? vnni_8x1 : avx2_8x1;
  return vnni ? 6 : 2;
}

/* y[M, N] = x[M, K] @ dequant(w[N, K]).T, or y += it when `add`. xq [M, K] and xs [M] are the
 * caller's scratch for the integer activations and their scales. N % 4 == 0, K % 16 == 0. */
void isvc_linear_i8(const float *x, const int8_t *w, const float *wscale, float *y, long M, long N, long K,
                    int add, int threads, int16_t *xq, float *xscale, int portable) {
  dot_fn by_rows[7], dot8;
  const int widest = tiles(by_rows, &dot8, portable);
  const long step = M == 1 && N % 8 == 0 ? 8 : 4;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (long m = 0; m < M; m++) quantize_row(x + m * K, xq + m * K, &xscale[m], K);
#pragma omp for schedule(static)
    for (long n = 0; n < N; n += step) {
      int32_t sums[8 * LD];
      const int8_t *wn = w + n * K;
      const int8_t *next = n + step < N ? wn + step * K : 0;
      for (long m = 0; m < M; m += LD) {
        const long rows = M - m < LD ? M - m : LD;
        if (step == 8) dot8(xq, wn, K, sums, next);
        else {
          /* rows of this block in tiles of the widest size, then one smaller tile */
          for (long j = 0; j < rows;) {
            long t = rows - j < widest ? rows - j : widest;
            while (!by_rows[t]) t--;
            by_rows[t](xq + (m + j) * K, wn, K, sums + j, m + j ? 0 : next);
            j += t;
          }
        }
        for (int i = 0; i < step; i++)
          for (long j = 0; j < rows; j++) {
            const float v = ((float)sums[i * LD + j] * xscale[m + j]) * wscale[n + i];
            float *out = y + (m + j) * N + n + i;
            *out = add ? *out + v : v;
          }
      }
    }
  }
}
