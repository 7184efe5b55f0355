/* Packed, cache-blocked SGEMM with runtime-selected micro-kernels.
 *
 * C (M x N) = A (M x K) * B (K x N). Operands are provided by packing callbacks, so callers can
 * fuse layout transforms (im2col, transposes) into packing. Blocking (Goto/BLIS style):
 *   for jc (NC columns) { for pc (KC depth) { pack B block; for ic (MC rows) { pack A block;
 *     for jr (NR) { for ir (MR) { micro-kernel } } } } }
 * The micro-kernel always accumulates a tile from zero over one KC block and then stores or adds
 * it into C, so every C element sees the same sequence of roundings whatever the partition of
 * the M/N plane among threads: results do not depend on the number of threads.
 */
#include "cn.h"
#include "cn_avx512.h"

#include <stdlib.h>
#include <string.h>
#if defined(CN_X86)
#include <immintrin.h>
#endif
#if defined(CN_ARM64)
#include <arm_neon.h>
#endif

/* ---- micro-kernels -------------------------------------------------------------------------- */

/* Portable: 4 x 8 tile (vectorised by the compiler with the baseline SIMD). */
static void ukr_scalar_4x8(long kc, const float *CN_RESTRICT a, const float *CN_RESTRICT b, float *c, long ldc,
                           int overwrite) {
  float acc[4][8];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;
  for (long k = 0; k < kc; k++) {
    for (int i = 0; i < 4; i++) {
      const float av = a[i];
      for (int j = 0; j < 8; j++) acc[i][j] += av * b[j];
    }
    a += 4;
    b += 8;
  }
  for (int i = 0; i < 4; i++) {
    float *cr = c + i * ldc;
    if (overwrite)
      for (int j = 0; j < 8; j++) cr[j] = acc[i][j];
    else
      for (int j = 0; j < 8; j++) cr[j] += acc[i][j];
  }
}

#if defined(CN_X86)
/* AVX-512: 8 x 32 tile, 16 zmm accumulators; A values are broadcast from memory. */
#define AVX512_ATTR CN_A512
/* The body shared by the three 8 x 32 kernels below: 16 accumulators c<row><half> from zero, then
 * kc steps of 8 broadcasts of A against two vectors of B (unrolled by 4, prefetching B). */
#define UKR512_ACC_ZERO                                                                                                \
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();                                                         \
  __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();                                                         \
  __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();                                                         \
  __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();                                                         \
  __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();                                                         \
  __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();                                                         \
  __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();                                                         \
  __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
#define STEP512_B(b0v, b1v, akp)                                                                                      \
  do {                                                                                                                 \
    const __m512 b0 = (b0v), b1 = (b1v);                                                                               \
    const float *ak = (akp);                                                                                           \
    __m512 av;                                                                                                         \
    av = _mm512_set1_ps(ak[0]); c00 = _mm512_fmadd_ps(av, b0, c00); c01 = _mm512_fmadd_ps(av, b1, c01);              \
    av = _mm512_set1_ps(ak[1]); c10 = _mm512_fmadd_ps(av, b0, c10); c11 = _mm512_fmadd_ps(av, b1, c11);              \
    av = _mm512_set1_ps(ak[2]); c20 = _mm512_fmadd_ps(av, b0, c20); c21 = _mm512_fmadd_ps(av, b1, c21);              \
    av = _mm512_set1_ps(ak[3]); c30 = _mm512_fmadd_ps(av, b0, c30); c31 = _mm512_fmadd_ps(av, b1, c31);              \
    av = _mm512_set1_ps(ak[4]); c40 = _mm512_fmadd_ps(av, b0, c40); c41 = _mm512_fmadd_ps(av, b1, c41);              \
    av = _mm512_set1_ps(ak[5]); c50 = _mm512_fmadd_ps(av, b0, c50); c51 = _mm512_fmadd_ps(av, b1, c51);              \
    av = _mm512_set1_ps(ak[6]); c60 = _mm512_fmadd_ps(av, b0, c60); c61 = _mm512_fmadd_ps(av, b1, c61);              \
    av = _mm512_set1_ps(ak[7]); c70 = _mm512_fmadd_ps(av, b0, c70); c71 = _mm512_fmadd_ps(av, b1, c71);              \
  } while (0)
/* one step on the packed B panel */
#define STEP512(off) STEP512_B(_mm512_load_ps(b + (off)*32), _mm512_load_ps(b + (off)*32 + 16), a + (off)*8)
#define UKR512_KLOOP                                                                                                   \
  do {                                                                                                                 \
    long k_ = 0;                                                                                                       \
    for (; k_ + 4 <= kc; k_ += 4) {                                                                                    \
      _mm_prefetch((const char *)(b + 32 * 8), _MM_HINT_T0);                                                           \
      _mm_prefetch((const char *)(b + 32 * 8 + 16), _MM_HINT_T0);                                                      \
      _mm_prefetch((const char *)(b + 32 * 10), _MM_HINT_T0);                                                          \
      _mm_prefetch((const char *)(b + 32 * 10 + 16), _MM_HINT_T0);                                                     \
      STEP512(0);                                                                                                      \
      STEP512(1);                                                                                                      \
      STEP512(2);                                                                                                      \
      STEP512(3);                                                                                                      \
      a += 32;                                                                                                         \
      b += 128;                                                                                                        \
    }                                                                                                                  \
    for (; k_ < kc; k_++) {                                                                                            \
      STEP512(0);                                                                                                      \
      a += 8;                                                                                                          \
      b += 32;                                                                                                         \
    }                                                                                                                  \
  } while (0)
/* the 16 accumulators stored to (overwrite) or added into the tile at c (rows ldc apart) */
#define ST512(r, v0, v1)                                                                                               \
  do {                                                                                                                 \
    float *cr = c + (r)*ldc;                                                                                           \
    if (overwrite) {                                                                                                   \
      _mm512_storeu_ps(cr, v0);                                                                                        \
      _mm512_storeu_ps(cr + 16, v1);                                                                                   \
    } else {                                                                                                           \
      _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), v0));                                                    \
      _mm512_storeu_ps(cr + 16, _mm512_add_ps(_mm512_loadu_ps(cr + 16), v1));                                          \
    }                                                                                                                  \
  } while (0)
#define UKR512_STORE                                                                                                   \
  do {                                                                                                                 \
    ST512(0, c00, c01);                                                                                                \
    ST512(1, c10, c11);                                                                                                \
    ST512(2, c20, c21);                                                                                                \
    ST512(3, c30, c31);                                                                                                \
    ST512(4, c40, c41);                                                                                                \
    ST512(5, c50, c51);                                                                                                \
    ST512(6, c60, c61);                                                                                                \
    ST512(7, c70, c71);                                                                                                \
  } while (0)
AVX512_ATTR static void ukr_avx512_8x32(long kc, const float *CN_RESTRICT a, const float *CN_RESTRICT b, float *c,
                                        long ldc, int overwrite) {
  UKR512_ACC_ZERO;
  UKR512_KLOOP;
  UKR512_STORE;
}

/* the next panel's rows 8 to 11 ahead of row b (panels 32 floats wide, rows bs apart) */
AVX512_ATTR static inline void bdirect_prefetch(const float *b, long bs) {
  const char *q = (const char *)(b + 8 * bs + 32);
  for (int r = 0; r < 4; r++, q += 4 * bs) {
    _mm_prefetch(q, _MM_HINT_T0);
    _mm_prefetch(q + 64, _MM_HINT_T0);
  }
}

/* The 8 x 32 kernel reading B in place: row k of the panel at b + k * bs (32 contiguous floats),
 * for GEMMs with few rows of A, where packing B costs as much as the arithmetic on it. pf: also
 * prefetch the next panel's rows (b + 32) a few steps ahead. Same arithmetic as ukr_avx512_8x32. */
AVX512_ATTR __attribute__((noinline)) static void ukr_avx512_8x32_bdirect(long kc, const float *CN_RESTRICT a,
                                                                          const float *CN_RESTRICT b, long bs,
                                                                          float *c, long ldc, int overwrite, int pf) {
  UKR512_ACC_ZERO;
#define STEPD(off) STEP512_B(_mm512_loadu_ps(b + (off)*bs), _mm512_loadu_ps(b + (off)*bs + 16), a + (off)*8)
  long k = 0;
  for (; k + 4 <= kc; k += 4) {
    if (pf) bdirect_prefetch(b, bs);
    STEPD(0);
    STEPD(1);
    STEPD(2);
    STEPD(3);
    a += 32;
    b += 4 * bs;
  }
  for (; k < kc; k++) {
    STEPD(0);
    a += 8;
    b += bs;
  }
#undef STEPD
  UKR512_STORE;
}

/* ukr_avx512_8x32_bdirect with an input transform (training fusion): row k's values are
 * transformed (cn512_tf, channel ch0 + k) as read, and stored as the packed panel bp (k * 32) for
 * the other row tiles: the panel's packing done by the first tile, its loads overlapping the
 * arithmetic. Same values as pack_b_im2col's transform, same arithmetic as ukr_avx512_8x32. */
AVX512_ATTR __attribute__((noinline)) static void ukr_avx512_8x32_bdirect_tf(long kc, const float *CN_RESTRICT a,
                                                                             const float *CN_RESTRICT b, long bs,
                                                                             const cn_intf *tf, long ch0,
                                                                             float *CN_RESTRICT bp, float *c, long ldc,
                                                                             int overwrite) {
  UKR512_ACC_ZERO;
  const float *tm = tf->mean + ch0, *ts = tf->scale + ch0, *tb = tf->shift + ch0;
  const int act = tf->act;
  for (long k = 0; k < kc; k++, a += 8, b += bs, bp += 32) {
    if ((k & 3) == 0) bdirect_prefetch(b, bs);
    const __m512 m = _mm512_set1_ps(tm[k]), sc = _mm512_set1_ps(ts[k]), sh = _mm512_set1_ps(tb[k]);
    const __m512 v0 = cn512_tf(_mm512_loadu_ps(b), m, sc, sh, act), v1 = cn512_tf(_mm512_loadu_ps(b + 16), m, sc, sh, act);
    _mm512_store_ps(bp, v0);
    _mm512_store_ps(bp + 16, v1);
    STEP512_B(v0, v1, a);
  }
  UKR512_STORE;
}

/* The 8 x 32 tile stored as 32 / w pieces of w columns (w = 4, 8 or 16), piece t of row r at
 * dst[t] + r * ldc: convolution outputs whose images (segments) are shorter than the tile (4x4,
 * 2x2 planes), where the general path would go through a scratch tile and scalar copies.
 * Optional inference epilogue as ukr_avx512_8x32_epi (res: the residual pieces, same layout).
 * Same arithmetic as the other 8 x 32 kernels. */
AVX512_ATTR static inline __m512 load_pieces(float *const *p, int t0, int w, long off) {
  if (w == 16) return _mm512_loadu_ps(p[t0] + off);
  __m512 v = _mm512_setzero_ps();
  if (w == 8) {
    v = _mm512_insertf32x8(v, _mm256_loadu_ps(p[t0] + off), 0);
    return _mm512_insertf32x8(v, _mm256_loadu_ps(p[t0 + 1] + off), 1);
  }
  v = _mm512_insertf32x4(v, _mm_loadu_ps(p[t0] + off), 0);
  v = _mm512_insertf32x4(v, _mm_loadu_ps(p[t0 + 1] + off), 1);
  v = _mm512_insertf32x4(v, _mm_loadu_ps(p[t0 + 2] + off), 2);
  return _mm512_insertf32x4(v, _mm_loadu_ps(p[t0 + 3] + off), 3);
}
AVX512_ATTR static inline void store_pieces(float *const *p, int t0, int w, long off, __m512 v) {
  if (w == 16) {
    _mm512_storeu_ps(p[t0] + off, v);
  } else if (w == 8) {
    _mm256_storeu_ps(p[t0] + off, _mm512_extractf32x8_ps(v, 0));
    _mm256_storeu_ps(p[t0 + 1] + off, _mm512_extractf32x8_ps(v, 1));
  } else {
    _mm_storeu_ps(p[t0] + off, _mm512_extractf32x4_ps(v, 0));
    _mm_storeu_ps(p[t0 + 1] + off, _mm512_extractf32x4_ps(v, 1));
    _mm_storeu_ps(p[t0 + 2] + off, _mm512_extractf32x4_ps(v, 2));
    _mm_storeu_ps(p[t0 + 3] + off, _mm512_extractf32x4_ps(v, 3));
  }
}

AVX512_ATTR __attribute__((noinline)) static void ukr_avx512_8x32_pieces(long kc, const float *CN_RESTRICT a,
                                                                         const float *CN_RESTRICT b, float *const *dst,
                                                                         float *const *res, int w, long ldc,
                                                                         int overwrite, const cn_epilogue *e,
                                                                         long ch0) {
  UKR512_ACC_ZERO;
  UKR512_KLOOP;
  const int np = 16 / w; /* pieces per half */
#define STP(r, h, v)                                                                                                   \
  do {                                                                                                                 \
    __m512 t_ = v;                                                                                                     \
    if (!overwrite) t_ = _mm512_add_ps(load_pieces(dst, (h)*np, w, (r)*ldc), t_);                                      \
    if (e) {                                                                                                           \
      if (e->bias) t_ = _mm512_add_ps(t_, _mm512_set1_ps(e->bias[ch0 + (r)]));                                         \
      t_ = cn512_bn(t_, _mm512_set1_ps(e->mean[ch0 + (r)]), _mm512_set1_ps(e->scale[ch0 + (r)]),                     \
                    _mm512_set1_ps(e->shift[ch0 + (r)]));                                                             \
      if (res) t_ = _mm512_add_ps(load_pieces(res, (h)*np, w, (r)*ldc), t_);                                           \
      t_ = cn512_act(t_, e->act);                                                                                      \
    }                                                                                                                  \
    store_pieces(dst, (h)*np, w, (r)*ldc, t_);                                                                         \
  } while (0)
  STP(0, 0, c00); STP(0, 1, c01);
  STP(1, 0, c10); STP(1, 1, c11);
  STP(2, 0, c20); STP(2, 1, c21);
  STP(3, 0, c30); STP(3, 1, c31);
  STP(4, 0, c40); STP(4, 1, c41);
  STP(5, 0, c50); STP(5, 1, c51);
  STP(6, 0, c60); STP(6, 1, c61);
  STP(7, 0, c70); STP(7, 1, c71);
#undef STP
}

/* The same 8 x 32 tile with the inference epilogue applied in registers before the single store:
 * v = acc (+ C if accumulating) (+ bias); v = fma(v - m, k, bt) (CN_BN_VAL); (+ res); act. */
AVX512_ATTR __attribute__((noinline)) static void ukr_avx512_8x32_epi(long kc, const float *CN_RESTRICT a, const float *CN_RESTRICT b, float *c,
                                            long ldc, int overwrite, const cn_epilogue *e, long ch0,
                                            const float *res) {
  UKR512_ACC_ZERO;
  UKR512_KLOOP;
  const int act = e->act;
#define EPI1(r, h, v)                                                                                                  \
  do {                                                                                                                 \
    float *cr_ = c + (r)*ldc + 16 * (h);                                                                               \
    __m512 t_ = v;                                                                                                     \
    if (!overwrite) t_ = _mm512_add_ps(_mm512_loadu_ps(cr_), t_);                                                      \
    if (e->bias) t_ = _mm512_add_ps(t_, _mm512_set1_ps(e->bias[ch0 + (r)]));                                           \
    t_ = cn512_bn(t_, _mm512_set1_ps(e->mean[ch0 + (r)]), _mm512_set1_ps(e->scale[ch0 + (r)]),                       \
                  _mm512_set1_ps(e->shift[ch0 + (r)]));                                                               \
    if (res) t_ = _mm512_add_ps(_mm512_loadu_ps(res + (r)*ldc + 16 * (h)), t_);                                        \
    t_ = cn512_act(t_, act);                                                                                           \
    _mm512_storeu_ps(cr_, t_);                                                                                         \
  } while (0)
  EPI1(0, 0, c00); EPI1(0, 1, c01);
  EPI1(1, 0, c10); EPI1(1, 1, c11);
  EPI1(2, 0, c20); EPI1(2, 1, c21);
  EPI1(3, 0, c30); EPI1(3, 1, c31);
  EPI1(4, 0, c40); EPI1(4, 1, c41);
  EPI1(5, 0, c50); EPI1(5, 1, c51);
  EPI1(6, 0, c60); EPI1(6, 1, c61);
  EPI1(7, 0, c70); EPI1(7, 1, c71);
#undef EPI1
}

/* AVX2 + FMA: 6 x 16 tile, 12 ymm accumulators. */
#define AVX2_ATTR __attribute__((target("avx2,fma")))
AVX2_ATTR static void ukr_avx2_6x16(long kc, const float *CN_RESTRICT a, const float *CN_RESTRICT b, float *c,
                                    long ldc, int overwrite) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#define STEP256(off)                                                                                                   \
  do {                                                                                                                 \
    const __m256 b0 = _mm256_load_ps(b + (off)*16), b1 = _mm256_load_ps(b + (off)*16 + 8);                           \
    const float *ak = a + (off)*6;                                                                                     \
    __m256 av;                                                                                                         \
    av = _mm256_broadcast_ss(ak + 0); c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);        \
    av = _mm256_broadcast_ss(ak + 1); c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);        \
    av = _mm256_broadcast_ss(ak + 2); c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);        \
    av = _mm256_broadcast_ss(ak + 3); c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);        \
    av = _mm256_broadcast_ss(ak + 4); c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);        \
    av = _mm256_broadcast_ss(ak + 5); c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);        \
  } while (0)
  long k = 0;
  for (; k + 4 <= kc; k += 4) {
    _mm_prefetch((const char *)(b + 16 * 8), _MM_HINT_T0);
    _mm_prefetch((const char *)(b + 16 * 10), _MM_HINT_T0);
    STEP256(0);
    STEP256(1);
    STEP256(2);
    STEP256(3);
    a += 24;
    b += 64;
  }
  for (; k < kc; k++) {
    STEP256(0);
    a += 6;
    b += 16;
  }
#undef STEP256
#define ST256(r, v0, v1)                                                                                               \
  do {                                                                                                                 \
    float *cr = c + (r)*ldc;                                                                                           \
    if (overwrite) {                                                                                                   \
      _mm256_storeu_ps(cr, v0);                                                                                        \
      _mm256_storeu_ps(cr + 8, v1);                                                                                    \
    } else {                                                                                                           \
      _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), v0));                                                    \
      _mm256_storeu_ps(cr + 8, _mm256_add_ps(_mm256_loadu_ps(cr + 8), v1));                                            \
    }                                                                                                                  \
  } while (0)
  ST256(0, c00, c01);
  ST256(1, c10, c11);
  ST256(2, c20, c21);
  ST256(3, c30, c31);
  ST256(4, c40, c41);
  ST256(5, c50, c51);
#undef ST256
}
#endif /* CN_X86 */

#if defined(CN_ARM64)
/* NEON: 8 x 12 tile, 24 q-register accumulators, lane-indexed FMAs. */
static void ukr_neon_8x12(long kc, const float *CN_RESTRICT a, const float *CN_RESTRICT b, float *c, long ldc,
                          int overwrite) {
  float32x4_t c00 = vdupq_n_f32(0), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
  float32x4_t c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
  float32x4_t c40 = c00, c41 = c00, c42 = c00, c50 = c00, c51 = c00, c52 = c00;
  float32x4_t c60 = c00, c61 = c00, c62 = c00, c70 = c00, c71 = c00, c72 = c00;
  for (long k = 0; k < kc; k++) {
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8);
    const float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
    c00 = vfmaq_laneq_f32(c00, b0, a0, 0); c01 = vfmaq_laneq_f32(c01, b1, a0, 0); c02 = vfmaq_laneq_f32(c02, b2, a0, 0);
    c10 = vfmaq_laneq_f32(c10, b0, a0, 1); c11 = vfmaq_laneq_f32(c11, b1, a0, 1); c12 = vfmaq_laneq_f32(c12, b2, a0, 1);
    c20 = vfmaq_laneq_f32(c20, b0, a0, 2); c21 = vfmaq_laneq_f32(c21, b1, a0, 2); c22 = vfmaq_laneq_f32(c22, b2, a0, 2);
    c30 = vfmaq_laneq_f32(c30, b0, a0, 3); c31 = vfmaq_laneq_f32(c31, b1, a0, 3); c32 = vfmaq_laneq_f32(c32, b2, a0, 3);
    c40 = vfmaq_laneq_f32(c40, b0, a1, 0); c41 = vfmaq_laneq_f32(c41, b1, a1, 0); c42 = vfmaq_laneq_f32(c42, b2, a1, 0);
    c50 = vfmaq_laneq_f32(c50, b0, a1, 1); c51 = vfmaq_laneq_f32(c51, b1, a1, 1); c52 = vfmaq_laneq_f32(c52, b2, a1, 1);
    c60 = vfmaq_laneq_f32(c60, b0, a1, 2); c61 = vfmaq_laneq_f32(c61, b1, a1, 2); c62 = vfmaq_laneq_f32(c62, b2, a1, 2);
    c70 = vfmaq_laneq_f32(c70, b0, a1, 3); c71 = vfmaq_laneq_f32(c71, b1, a1, 3); c72 = vfmaq_laneq_f32(c72, b2, a1, 3);
    a += 8;
    b += 12;
  }
#define STN(r, v0, v1, v2)                                                                                             \
  do {                                                                                                                 \
    float *cr = c + (r)*ldc;                                                                                           \
    if (overwrite) {                                                                                                   \
      vst1q_f32(cr, v0); vst1q_f32(cr + 4, v1); vst1q_f32(cr + 8, v2);                                                 \
    } else {                                                                                                           \
      vst1q_f32(cr, vaddq_f32(vld1q_f32(cr), v0));                                                                     \
      vst1q_f32(cr + 4, vaddq_f32(vld1q_f32(cr + 4), v1));                                                             \
      vst1q_f32(cr + 8, vaddq_f32(vld1q_f32(cr + 8), v2));                                                             \
    }                                                                                                                  \
  } while (0)
  STN(0, c00, c01, c02); STN(1, c10, c11, c12); STN(2, c20, c21, c22); STN(3, c30, c31, c32);
  STN(4, c40, c41, c42); STN(5, c50, c51, c52); STN(6, c60, c61, c62); STN(7, c70, c71, c72);
#undef STN
}
#endif /* CN_ARM64 */

/* ---- ISA selection ---------------------------------------------------------------------------- */

cn_isa_gemm cn_gk = {"scalar", 4, 8, 256, 128, 512, ukr_scalar_4x8};
static int g_isa_selected = 0;
int cn_isa_id = 0;

static long env_long(const char *name, long def) {
  const char *e = getenv(name);
  if (!e || !*e) return def;
  long v = atol(e);
  return v > 0 ? v : def;
}

static void set_blocking(cn_isa_gemm *k) {
  /* Tuning knobs (benchmarking only); rounded to multiples of the register tile. */
  k->kc = env_long("CONVNETS_GEMM_KC", k->kc);
  k->mc = env_long("CONVNETS_GEMM_MC", k->mc);
  k->nc = env_long("CONVNETS_GEMM_NC", k->nc);
  k->mc = (k->mc + k->mr - 1) / k->mr * k->mr;
  k->nc = (k->nc + k->nr - 1) / k->nr * k->nr;
}

static int isa_supported(const char *name) {
  if (!strcmp(name, "scalar")) return 1;
#if defined(CN_X86)
  __builtin_cpu_init();
  if (!strcmp(name, "avx512"))
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("avx2");
  if (!strcmp(name, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#if defined(CN_ARM64)
  if (!strcmp(name, "neon")) return 1;
#endif
  return 0;
}

int cn_select_isa(const char *name) {
  if (!name || !*name || !strcmp(name, "auto")) {
    const char *e = getenv("CONVNETS_ISA");
    if (e && *e && strcmp(e, "auto") && isa_supported(e)) name = e;
    else if (isa_supported("avx512")) name = "avx512";
    else if (isa_supported("avx2")) name = "avx2";
    else if (isa_supported("neon")) name = "neon";
    else name = "scalar";
  }
  if (!isa_supported(name)) return 0;
  cn_isa_gemm k = {"scalar", 4, 8, 256, 128, 512, ukr_scalar_4x8};
  int kid = 0;
#if defined(CN_X86)
  if (!strcmp(name, "avx512")) {
    cn_isa_gemm t = {"avx512", 8, 32, 256, 256, 512, ukr_avx512_8x32};
    k = t;
    kid = 2;
  } else if (!strcmp(name, "avx2")) {
    cn_isa_gemm t = {"avx2", 6, 16, 256, 144, 512, ukr_avx2_6x16};
    k = t;
    kid = 1;
  }
#endif
#if defined(CN_ARM64)
  if (!strcmp(name, "neon")) {
    cn_isa_gemm t = {"neon", 8, 12, 256, 128, 480, ukr_neon_8x12};
    k = t;
    kid = 3;
  }
#endif
  set_blocking(&k);
  cn_gk = k;
  cn_isa_id = kid;
  cn_kernels_select(kid);
  g_isa_selected = 1;
  return 1;
}

const char *cn_isa_name(void) {
  if (!g_isa_selected) cn_select_isa("auto");
  return cn_gk.name;
}

/* ---- generic packers ---------------------------------------------------------------------------- */

void cn_pack_a_strided(const cn_gemm *g, long i0, long len, long k0, long kc, float *dst, int tid) {
  (void)tid;
  const int MR = cn_gk.mr;
  for (long p = 0; p < len; p += MR) {
    const int rows = (int)(len - p < MR ? len - p : MR);
    float *d = dst + (p / MR) * kc * MR;
    const float *base = g->a + (i0 + p) * g->a_rs + k0 * g->a_cs;
    if (g->a_cs == 1) {
      const float *src[32];
      for (int r = 0; r < rows; r++) src[r] = base + r * g->a_rs;
      cn_transpose_pack(src, rows, kc, d, MR);
    } else if (g->a_rs == 1) {
      for (long k = 0; k < kc; k++) {
        const float *s = base + k * g->a_cs;
        float *dk = d + k * MR;
        int r = 0;
        for (; r < rows; r++) dk[r] = s[r];
        for (; r < MR; r++) dk[r] = 0.0f;
      }
    } else {
      for (long k = 0; k < kc; k++) {
        float *dk = d + k * MR;
        int r = 0;
        for (; r < rows; r++) dk[r] = base[r * g->a_rs + k * g->a_cs];
        for (; r < MR; r++) dk[r] = 0.0f;
      }
    }
  }
}

void cn_pack_b_strided(const cn_gemm *g, long j0, long len, long k0, long kc, float *dst, int tid) {
  (void)tid;
  const int NR = cn_gk.nr;
  if (g->b_cs == 1) {
    /* row-major B: copy each k row across all panels (one sequential read per row), while
     * prefetching a few rows ahead */
    const long full = len / NR * NR;
    for (long k = 0; k < kc; k++) {
      const float *s = g->b + (k0 + k) * g->b_rs + j0;
      if (k + 4 < kc) {
        const char *pf = (const char *)(s + 4 * g->b_rs);
        for (long b = 0; b < len * 4; b += 64) __builtin_prefetch(pf + b);
      }
      float *d = dst + k * NR;
      for (long p = 0; p < full; p += NR) memcpy(d + (p / NR) * kc * NR, s + p, sizeof(float) * (size_t)NR);
      if (full < len) {
        float *dl = d + (full / NR) * kc * NR;
        long t = 0;
        for (; t < len - full; t++) dl[t] = s[full + t];
        for (; t < NR; t++) dl[t] = 0.0f;
      }
    }
    return;
  }
  for (long p = 0; p < len; p += NR) {
    const int cols = (int)(len - p < NR ? len - p : NR);
    float *d = dst + (p / NR) * kc * NR;
    const float *base = g->b + k0 * g->b_rs + (j0 + p) * g->b_cs;
    if (g->b_cs == 1) {
      for (long k = 0; k < kc; k++) {
        const float *s = base + k * g->b_rs;
        float *dk = d + k * NR;
        memcpy(dk, s, sizeof(float) * (size_t)cols);
        for (int j = cols; j < NR; j++) dk[j] = 0.0f;
      }
    } else if (g->b_rs == 1) {
      const float *src[64];
      for (int j = 0; j < cols; j++) src[j] = base + j * g->b_cs;
      cn_transpose_pack(src, cols, kc, d, NR);
    } else {
      for (long k = 0; k < kc; k++) {
        float *dk = d + k * NR;
        int j = 0;
        for (; j < cols; j++) dk[j] = base[k * g->b_rs + j * g->b_cs];
        for (; j < NR; j++) dk[j] = 0.0f;
      }
    }
  }
}

void cn_gemm_init_strided(cn_gemm *g, long M, long N, long K, const float *a, long a_rs, long a_cs, const float *b,
                          long b_rs, long b_cs, float *c, long ldc) {
  memset(g, 0, sizeof(*g));
  g->M = M;
  g->N = N;
  g->K = K;
  g->pack_a = cn_pack_a_strided;
  g->pack_b = cn_pack_b_strided;
  g->a = a;
  g->a_rs = a_rs;
  g->a_cs = a_cs;
  g->b = b;
  g->b_rs = b_rs;
  g->b_cs = b_cs;
  g->c = c;
  g->ldc = ldc;
  g->seg_len = N > 0 ? N : 1;
  g->seg_stride = 0;
  g->cs = 1;
}

/* ---- driver ------------------------------------------------------------------------------------- */

/* Store (or add) a computed MR x NR tile held in tmp (row stride NR) into C at (i, j). */
static void store_tile_general(const cn_gemm *g, const float *tmp, long i, long j, int mr, int nr, int overwrite) {
  const int NR = cn_gk.nr;
  for (int r = 0; r < mr; r++) {
    const float *t = tmp + r * NR;
    long jj = j, done = 0;
    while (done < nr) {
      const long seg = jj / g->seg_len, off = jj % g->seg_len;
      long run = g->seg_len - off;
      if (run > nr - done) run = nr - done;
      float *cp = g->c + seg * g->seg_stride + (i + r) * g->ldc + off * g->cs;
      if (g->cs == 1) {
        if (overwrite)
          for (long q = 0; q < run; q++) cp[q] = t[done + q];
        else
          for (long q = 0; q < run; q++) cp[q] += t[done + q];
      } else {
        if (overwrite)
          for (long q = 0; q < run; q++) cp[q * g->cs] = t[done + q];
        else
          for (long q = 0; q < run; q++) cp[q * g->cs] += t[done + q];
      }
      done += run;
      jj += run;
    }
  }
}

/* Apply the epilogue to the (final) tile at (i, j), mr x nr. */
static void epi_tile(const cn_gemm *g, long i, long j, int mr, int nr) {
  long jj = j, done = 0;
  while (done < nr) {
    const long seg = jj / g->seg_len, off = jj % g->seg_len;
    long run = g->seg_len - off;
    if (run > nr - done) run = nr - done;
    cn_epi_rows(g->epi, g->c + seg * g->seg_stride + i * g->ldc + off, g->ldc, mr, run, g->epi->row0 + i);
    done += run;
    jj += run;
  }
}

/* one register tile of C: rows [i, i+mr) x columns [j, j+nr) from the packed A micro-panel ap
 * and B micro-panel bp over kc (overwrite: the first depth block; last: apply the epilogue) */
static void gemm_tile(const cn_gemm *g, long kc, const float *ap, const float *bp, long i, long j, int mr, int nr,
                      int overwrite, int last, float *tmp) {
  const int MR = cn_gk.mr, NR = cn_gk.nr;
  const long seg = j / g->seg_len, off = j % g->seg_len;
  if (mr == MR && nr == NR && g->cs == 1 && off + NR <= g->seg_len) {
    float *cp = g->c + seg * g->seg_stride + off + i * g->ldc;
#if defined(CN_X86)
    if (last && cn_gk.ukr == ukr_avx512_8x32) {
      const float *rp = g->epi->res_base ? g->epi->res_base + (cp - g->epi->out_base) : NULL;
      ukr_avx512_8x32_epi(kc, ap, bp, cp, g->ldc, overwrite, g->epi, g->epi->row0 + i, rp);
      return;
    }
#endif
    cn_gk.ukr(kc, ap, bp, cp, g->ldc, overwrite);
  }
#if defined(CN_X86)
  else if (mr == MR && nr == NR && g->cs == 1 && cn_gk.ukr == ukr_avx512_8x32 && g->seg_len % 4 == 0 && off % 4 == 0) {
    /* the tile spans several segments (images shorter than the tile): whole pieces */
    const int w = (g->seg_len % 16 == 0 && off % 16 == 0) ? 16 : (g->seg_len % 8 == 0 && off % 8 == 0) ? 8 : 4;
    float *dst[8], *rsd[8];
    for (int t = 0; t < 32 / w; t++) {
      const long jt = j + (long)t * w;
      dst[t] = g->c + (jt / g->seg_len) * g->seg_stride + jt % g->seg_len + i * g->ldc;
      if (last && g->epi->res_base) rsd[t] = (float *)g->epi->res_base + (dst[t] - g->epi->out_base);
    }
    ukr_avx512_8x32_pieces(kc, ap, bp, dst, last && g->epi->res_base ? rsd : NULL, w, g->ldc, overwrite,
                           last ? g->epi : NULL, last ? g->epi->row0 + i : 0);
    return;
  }
#endif
  else {
    cn_gk.ukr(kc, ap, bp, tmp, NR, 1);
    store_tile_general(g, tmp, i, j, mr, nr, overwrite);
  }
  if (last) epi_tile(g, i, j, mr, nr);
}

/* at most this many rows of A for B read in place (measured: pointwise input gradients with
 * 16-64 input channels 1.05-1.4x faster; the packed path amortises its packing over more rows) */
#define GEMM_BDIRECT_ROWS 64
/* Column block: NC for deep products; wider for shallow ones (pointwise convolutions with few
 * channels) so the packed B block keeps about the same L2 footprint. */
long cn_gemm_nc(long K) {
  const long NR = cn_gk.nr, base = cn_gk.nc;
  const long kc = K < cn_gk.kc ? (K > 0 ? K : 1) : cn_gk.kc;
  long nc = base * cn_gk.kc / kc;
  if (nc > 8 * base) nc = 8 * base;
  if (nc < base) nc = base;
  return (nc + NR - 1) / NR * NR;
}

void cn_gemm_serial(const cn_gemm *g, long m0, long m1, long n0, long n1, int tid) {
  const int MR = cn_gk.mr, NR = cn_gk.nr;
  const long KC = cn_gk.kc, MC = cn_gk.mc;
  const long K = g->K;
  const long NC = cn_gemm_nc(K);
  if (m1 <= m0 || n1 <= n0) return;
  if (K <= 0) {
    if (g->accumulate) return;
    float zero[64 * 8];
    memset(zero, 0, sizeof(zero));
    for (long i = m0; i < m1; i += MR)
      for (long j = n0; j < n1; j += NR)
        store_tile_general(g, zero, i, j, (int)(m1 - i < MR ? m1 - i : MR), (int)(n1 - j < NR ? n1 - j : NR), 1);
    return;
  }
  const long ncmax = (n1 - n0 < NC ? n1 - n0 : NC);
  const long mcmax = (m1 - m0 < MC ? m1 - m0 : MC);
  const long kcmax = K < KC ? K : KC;
  /* When several column blocks share a small A (conv weights, pointwise layers), pack the
   * task's whole A once instead of once per column block. */
  const long mrows = (m1 - m0 + MR - 1) / MR * MR;
  const int a_pre = g->apre != NULL && m0 == 0 && m1 == g->M;
  const int a_once = !a_pre && (n1 - n0 > NC) && (mrows * K <= (1L << 18));
  float *bufB = cn_ws(tid, CN_WS_PACKB, (size_t)kcmax * (size_t)((ncmax + NR - 1) / NR * NR));
  float *bufA = a_pre    ? (float *)g->apre
               : a_once ? cn_ws(tid, CN_WS_PACKA, (size_t)(mrows * K))
                        : cn_ws(tid, CN_WS_PACKA, (size_t)kcmax * (size_t)((mcmax + MR - 1) / MR * MR));
  float *tmp = cn_ws(tid, CN_WS_TILE, (size_t)MR * NR);
  if (!bufA || !bufB || !tmp) abort();
  if (a_once)
    for (long pc = 0; pc < K; pc += KC) g->pack_a(g, m0, m1 - m0, pc, K - pc < KC ? K - pc : KC, bufA + mrows * pc, tid);
#if defined(CN_X86)
  if (g->b_direct && !g->bpre && !g->epi && K <= KC && m1 - m0 <= GEMM_BDIRECT_ROWS && cn_gk.ukr == ukr_avx512_8x32 &&
      g->cs == 1 && g->seg_len % NR == 0) {
    /* few rows: packing B would cost as much as the arithmetic on it. Panel by panel, every row
     * tile reads the panel in place (the first one from memory, prefetching the next panel; the
     * others from the L1), or with an input transform the first tile transforms and packs it
     * for the others; panels B cannot give in place are packed. */
    if (!a_once && !a_pre) g->pack_a(g, m0, m1 - m0, 0, K, bufA, tid);
    const long tiles = mrows / MR;
    const int overwrite = !g->accumulate;
    for (long j = n0; j < n1; j += NR) {
      const int nr = (int)(n1 - j < NR ? n1 - j : NR);
      const float *base;
      long bs, ch0;
      const cn_intf *tf;
      const long seg = j / g->seg_len, off = j % g->seg_len;
      const int direct = nr == NR && off + NR <= g->seg_len && g->b_direct(g, j, 0, &base, &bs, &tf, &ch0);
      if (direct) {
        for (long t = 0; t < tiles; t++) {
          const long i = m0 + t * MR;
          const int mr = (int)(m1 - i < MR ? m1 - i : MR);
          if (tf && t > 0) { /* the panel the first tile transformed and packed */
            gemm_tile(g, K, bufA + t * K * MR, bufB, i, j, mr, nr, overwrite, 0, tmp);
            continue;
          }
          /* whole tiles straight into C, a partial one through the scratch tile */
          float *cp = mr == MR ? g->c + seg * g->seg_stride + off + i * g->ldc : tmp;
          const long ldc = mr == MR ? g->ldc : NR;
          const int ow = mr == MR ? overwrite : 1;
          if (tf) /* transformed values: the first row tile transforms and packs the panel */
            ukr_avx512_8x32_bdirect_tf(K, bufA, base, bs, tf, ch0, bufB, cp, ldc, ow);
          else
            ukr_avx512_8x32_bdirect(K, bufA + t * K * MR, base, bs, cp, ldc, ow, t == 0);
          if (mr < MR) store_tile_general(g, tmp, i, j, mr, nr, overwrite);
        }
        continue;
      }
      g->pack_b(g, j, nr, 0, K, bufB, tid);
      for (long t = 0; t < tiles; t++) {
        const long i = m0 + t * MR;
        gemm_tile(g, K, bufA + t * K * MR, bufB, i, j, (int)(m1 - i < MR ? m1 - i : MR), nr, overwrite, 0, tmp);
      }
    }
    return;
  }
#endif
  for (long jc = n0; jc < n1; jc += NC) {
    const long nc = n1 - jc < NC ? n1 - jc : NC;
    for (long pc = 0; pc < K; pc += KC) {
      const long kc = K - pc < KC ? K - pc : KC;
      const int overwrite = (pc == 0) && !g->accumulate;
      const int last = g->epi && pc + kc >= K;
      const float *bblk = bufB;
      if (g->bpre)
        bblk = g->bpre + pc * g->bpre_npan * NR + (jc / NR) * kc * NR;
      else
        g->pack_b(g, jc, nc, pc, kc, bufB, tid);
      for (long ic = m0; ic < m1; ic += MC) {
        const long mc = m1 - ic < MC ? m1 - ic : MC;
        const float *apack = bufA;
        if (a_once || a_pre)
          apack = bufA + mrows * pc + (ic - m0) * kc; /* panels of rows >= ic inside block pc */
        else
          g->pack_a(g, ic, mc, pc, kc, bufA, tid);
        /* rows outer: the A micro-panel stays in L1, B streams from L2, and C is written as MR
         * long sequential row runs (prefetch-friendly stores) */
        for (long ir = 0; ir < mc; ir += MR) {
          const int mr = (int)(mc - ir < MR ? mc - ir : MR);
          const float *ap = apack + (ir / MR) * kc * MR;
          const long i = ic + ir;
          for (long jr = 0; jr < nc; jr += NR) {
            const int nr = (int)(nc - jr < NR ? nc - jr : NR);
            const float *bp = bblk + (jr / NR) * kc * NR;
            const long j = jc + jr;
            gemm_tile(g, kc, ap, bp, i, j, mr, nr, overwrite, last, tmp);
          }
        }
      }
    }
  }
}

size_t cn_gemm_apre_floats(const cn_gemm *g) {
  const long MR = cn_gk.mr;
  return (size_t)((g->M + MR - 1) / MR * MR) * (size_t)(g->K > 0 ? g->K : 1);
}

void cn_gemm_prepack_a(const cn_gemm *g, float *dst) {
  const long MR = cn_gk.mr, KC = cn_gk.kc;
  const long mrows = (g->M + MR - 1) / MR * MR;
  for (long pc = 0; pc < g->K; pc += KC) g->pack_a(g, 0, g->M, pc, g->K - pc < KC ? g->K - pc : KC, dst + mrows * pc, 0);
}

typedef struct {
  const cn_gemm *g;
  long mparts, nparts, mstep, nstep;
} gemm_job;

static void gemm_task(void *ctx, long t, int tid) {
  const gemm_job *J = (const gemm_job *)ctx;
  const long mi = t % J->mparts, ni = t / J->mparts;
  const long m0 = mi * J->mstep, n0 = ni * J->nstep;
  long m1 = m0 + J->mstep, n1 = n0 + J->nstep;
  if (m1 > J->g->M) m1 = J->g->M;
  if (n1 > J->g->N) n1 = J->g->N;
  cn_gemm_serial(J->g, m0, m1, n0, n1, tid);
  if (J->g->post_task) J->g->post_task(J->g, m0, m1, n0, n1);
}

#define PREPACK_MAX_FLOATS (1L << 21) /* 8 MiB of packed B at most */
#define POST_TASK_FLOATS (1L << 17)   /* 512 KiB: a task's output region with post_task */
#define PREPACK_PANELS 16

typedef struct {
  const cn_gemm *g;
  float *pre;
  long npan, chunks;
} prepack_job;

static void prepack_task(void *ctx, long t, int tid) {
  const prepack_job *P = (const prepack_job *)ctx;
  const long NR = cn_gk.nr, KC = cn_gk.kc;
  const long pc = (t / P->chunks) * KC, q0 = (t % P->chunks) * PREPACK_PANELS;
  const long kc = P->g->K - pc < KC ? P->g->K - pc : KC;
  const long j0 = q0 * NR;
  long len = PREPACK_PANELS * NR;
  if (j0 + len > P->g->N) len = P->g->N - j0;
  if (len <= 0) return;
  P->g->pack_b(P->g, j0, len, pc, kc, P->pre + pc * P->npan * NR + q0 * kc * NR, tid);
}

void cn_gemm_parallel(const cn_gemm *g) {
  if (g->M <= 0 || g->N <= 0) return;
  const int T = cn_num_threads();
  const double flops = 2.0 * (double)g->M * (double)g->N * (double)(g->K > 0 ? g->K : 1);
  if (T == 1 || flops < 4.0e5) {
    cn_gemm_serial(g, 0, g->M, 0, g->N, 0);
    if (g->post_task) g->post_task(g, 0, g->M, 0, g->N);
    return;
  }
  const int MR = cn_gk.mr, NR = cn_gk.nr;
  const long NC = cn_gemm_nc(g->K);
  const long mblocks = (g->M + MR - 1) / MR, nblocks = (g->N + NR - 1) / NR;
  long nparts = (g->N + NC - 1) / NC, mparts = 1;
  if (nparts > nblocks) nparts = nblocks;
  const long target = 4L * T;
  while (mparts * nparts < target) {
    const long mper = (mblocks + mparts - 1) / mparts, nper = (nblocks + nparts - 1) / nparts;
    if (mper * MR >= nper * NR && mper >= 2) mparts++;
    else if (nper >= 2) nparts++;
    else if (mper >= 2) mparts++;
    else break;
  }
  gemm_job J;
  J.g = g;
  J.mstep = (mblocks + mparts - 1) / mparts * MR;
  J.nstep = (nblocks + nparts - 1) / nparts * NR;
  if (g->n_align > 1) /* column ranges of whole units (post_task) */
    J.nstep = (J.nstep + g->n_align - 1) / g->n_align * g->n_align;
  if (g->post_task && g->n_align > 1) {
    /* a task's output region within half the L2 (at least one unit), for post_task to find it
     * there: measured on MobileNetV2's 32x32 / 16x16 convolutions with statistics or batch-norm
     * backward partials (tasks of several images read their output back from the L3) */
    long cap = POST_TASK_FLOATS / (J.mstep > 0 ? J.mstep : 1) / g->n_align * g->n_align;
    if (cap < g->n_align) cap = g->n_align;
    if (J.nstep > cap) J.nstep = cap;
  }
  J.mparts = (g->M + J.mstep - 1) / J.mstep;
  J.nparts = (g->N + J.nstep - 1) / J.nstep;
  cn_gemm local;
  /* (a prepacked B is addressed by whole panels: column ranges must start on one) */
  if (J.mparts > 1 && !g->bpre && g->K * nblocks * NR <= PREPACK_MAX_FLOATS && J.nstep % NR == 0) {
    /* Several row tasks would each pack the same B (pointwise convolutions of small planes,
     * where packing gathers 16-byte pieces from every image): pack it once, in parallel. */
    const long npan = nblocks;
    float *pre = cn_gws(CN_GWS_C, (size_t)(g->K * npan * NR));
    if (pre) {
      prepack_job P = {g, pre, npan, (npan + PREPACK_PANELS - 1) / PREPACK_PANELS};
      const long KC = cn_gk.kc, kblocks = (g->K + KC - 1) / KC;
      cn_parallel(kblocks * P.chunks, prepack_task, &P);
      local = *g;
      local.bpre = pre;
      local.bpre_npan = npan;
      J.g = &local;
    }
  }
  cn_parallel(J.mparts * J.nparts, gemm_task, &J);
}
