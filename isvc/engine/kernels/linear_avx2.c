/* y = x @ w.T for float32 on AVX2 + FMA, the F.linear layout (w is [N, K], row-major).
 *
 * Why our own: torch's CPU wheel sends these shapes to MKL, whose single-row gemv runs on
 * one thread (~11 GB/s of weights here, a third of what the memory gives two cores) and
 * whose small-M sgemm reaches about half the FMA peak on this CPU. Decoding a small model
 * is exactly those shapes.
 *
 * Dot-product form: each weight row is read from memory once per call and multiplied by
 * every activation row while it sits in L1; activation rows (M x K) stay in L2.
 * The 4x3 register tile (4 weight rows x 3 activation rows = 12 accumulators) keeps both
 * FMA units busy; M == 1 uses 8 weight rows instead, for more memory streams in flight.
 * Threads split the output columns (weight rows), so no two threads read the same weights.
 * Every tile reduces its accumulators with the same hsum4 tree, so an output's value does
 * not depend on the tile (or batch size) that computed it: batch invariance.
 *
 * Preconditions (checked by the caller): K % 8 == 0, N % 4 == 0, contiguous float32.
 */
#include "simd.h"

/* 4 weight rows x MB activation rows. When `next` is set (the first activation rows of a
 * tile), the next tile's 4 weight rows are prefetched while these are multiplied: the
 * weights of a model stream from memory once per step, and fetching them only on use left
 * a 45-row linear ~40 % slower with its weights cold than hot (measured here). */
#define TILE(MB)                                                                  \
  static inline void tile4x##MB(const float *x, const float *w, float *y,         \
                                long N, long K, int add, const float *next) {     \
    __m256 acc[4][MB];                                                            \
    for (int i = 0; i < 4; i++)                                                   \
      for (int j = 0; j < MB; j++) acc[i][j] = _mm256_setzero_ps();               \
    for (long k = 0; k < K; k += 8) {                                             \
      if (next && (k & 15) == 0)                                                  \
        for (int i = 0; i < 4; i++) _mm_prefetch((const char *)(next + i * K + k), _MM_HINT_T1); \
      __m256 xv[MB];                                                              \
      for (int j = 0; j < MB; j++) xv[j] = _mm256_loadu_ps(x + j * K + k);        \
      for (int i = 0; i < 4; i++) {                                               \
        __m256 wv = _mm256_loadu_ps(w + i * K + k);                               \
        for (int j = 0; j < MB; j++) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]); \
      }                                                                           \
    }                                                                             \
    for (int j = 0; j < MB; j++) {                                                \
      __m128 sums = hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]);            \
      _mm_storeu_ps(y + j * N, add ? _mm_add_ps(sums, _mm_loadu_ps(y + j * N)) : sums); \
    }                                                                             \
  }
TILE(1)
TILE(2)
TILE(3)

/* 8 weight rows x 1 activation row. */
static inline void tile8x1(const float *x, const float *w, float *y, long K, int add) {
  __m256 acc[8];
  for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
  for (long k = 0; k < K; k += 8) {
    __m256 xv = _mm256_loadu_ps(x + k);
    for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i * K + k), xv, acc[i]);
  }
  for (int i = 0; i < 8; i += 4) {
    __m128 sums = hsum4(acc[i], acc[i + 1], acc[i + 2], acc[i + 3]);
    _mm_storeu_ps(y + i, add ? _mm_add_ps(sums, _mm_loadu_ps(y + i)) : sums);
  }
}

/* y = x @ w.T, or y += x @ w.T when `add` (a residual connection without a second pass). */
void isvc_linear_f32(const float *x, const float *w, float *y, long M, long N, long K, int add,
                     int threads) {
  if (M == 1 && N % 8 == 0) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n += 8) tile8x1(x, w + n * K, y + n, K, add);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long n = 0; n < N; n += 4) {
    const float *wn = w + n * K;
    const float *next = n + 4 < N ? wn + 4 * K : 0;
    long m = 0;
    for (; m + 3 <= M; m += 3, next = 0) tile4x3(x + m * K, wn, y + m * N + n, N, K, add, next);
    if (M - m == 2) tile4x2(x + m * K, wn, y + m * N + n, N, K, add, next);
    else if (M - m == 1) tile4x1(x + m * K, wn, y + m * N + n, N, K, add, next);
  }
}
