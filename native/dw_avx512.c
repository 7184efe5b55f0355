/* AVX-512 depthwise convolution for stride 1 with "same width" padding (ow == W, e.g. 3x3 pad 1),
 * the shape of nearly every depthwise layer. The output plane is processed flattened, 16
 * outputs per vector; output t = i*W + j reads input t + (ky-ph)*W + (kx-pw) for tap (ky, kx),
 * and a per-(block, tap) lane mask zeroes taps that fall into the padding. Masked loads never
 * touch memory outside the plane, so there is no padded copy and no tail loop. */
#include "cn.h"

#include <stdlib.h>
#include <string.h>

#if defined(CN_X86)
#include "cn_avx512.h"

#define A512 CN_A512

int cn_dw_s1_applicable(long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh, long ow) {
  (void)H;
  (void)ph;
  (void)oh;
  return sh == 1 && sw == 1 && ow == W && kh * kw <= CN_DW_MAX_TAPS && pw <= kw - 1 && pw >= 0;
}

int cn_dw_s1_prepare(cn_dw_plan *P, long H, long W, long kh, long kw, long ph, long pw, long oh, long ow) {
  P->H = H;
  P->W = W;
  P->kh = kh;
  P->kw = kw;
  P->oh = oh;
  P->ow = ow;
  P->ntaps = kh * kw;
  P->T = oh * ow;
  P->nblk = (P->T + 15) / 16;
  P->masks = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)(P->nblk * (P->ntaps + 2)));
  if (!P->masks) return 0;
  for (long ky = 0; ky < kh; ky++)
    for (long kx = 0; kx < kw; kx++) P->off[ky * kw + kx] = (ky - ph) * W + (kx - pw);
  long minoff = 0, maxoff = 0;
  for (long q = 0; q < P->ntaps; q++) {
    if (P->off[q] < minoff) minoff = P->off[q];
    if (P->off[q] > maxoff) maxoff = P->off[q];
  }
  for (long b = 0; b < P->nblk; b++) {
    uint16_t *m = P->masks + b * (P->ntaps + 2);
    memset(m, 0, sizeof(uint16_t) * (size_t)(P->ntaps + 2));
    /* safe: every tap's full 16-float load stays inside the input plane (H*W floats), so it can
     * be an ordinary load with the mask applied in the FMA instead */
    m[P->ntaps + 1] = (b * 16 + minoff >= 0 && b * 16 + 15 + maxoff < H * W && b * 16 + 16 <= P->T) ? 1 : 0;
    for (int l = 0; l < 16; l++) {
      const long t = b * 16 + l;
      if (t >= P->T) break;
      m[P->ntaps] |= (uint16_t)(1u << l); /* valid outputs */
      const long i = t / ow, j = t % ow;
      for (long ky = 0; ky < kh; ky++) {
        const long iy = i + ky - ph;
        if (iy < 0 || iy >= H) continue;
        for (long kx = 0; kx < kw; kx++) {
          const long ix = j + kx - pw;
          if (ix >= 0 && ix < W) m[ky * kw + kx] |= (uint16_t)(1u << l);
        }
      }
    }
  }
  return 1;
}

void cn_dw_s1_release(cn_dw_plan *P) {
  free(P->masks);
  P->masks = NULL;
}

/* address arithmetic that may point outside the plane: only ever used under a lane mask */
static inline const float *at(const float *p, long off) { return (const float *)((intptr_t)p + off * (long)sizeof(float)); }

/* inference fusion: the batch norm (+ residual, activation) epilogue on a finished output vector
 * at plane offset `o` (the arithmetic of the separate passes) */
static A512 inline __m512 pepi(__m512 v, const cn_dw_pepi *pe, long o, __mmask16 valid) {
  v = cn512_bn(v, _mm512_set1_ps(pe->m), _mm512_set1_ps(pe->k), _mm512_set1_ps(pe->bt));
  if (pe->res) v = _mm512_add_ps(_mm512_maskz_loadu_ps(valid, pe->res + o), v);
  return cn512_act(v, pe->act);
}

#define LD(q) _mm512_loadu_ps(at(xb, o##q))
#define MLD(q) _mm512_maskz_loadu_ps(m[q], at(xb, o##q))
/* 8x8 planes, 3x3, padding 1 (MobileNet's 8x8 stages, forward and input gradient): the tap masks
 * are constants (columns 0 / 7 and the first / last row), so no mask is loaded per tap; same
 * accumulation order as the general kernel below (two chains, taps alternating). */
#define DW8_M(kx) ((kx) == 0 ? 0xFEFE : (kx) == 2 ? 0x7F7F : 0xFFFF)
#define DW8_R(b, ky) ((b) == 0 && (ky) == 0 ? 0xFF00 : (b) == 3 && (ky) == 2 ? 0x00FF : 0xFFFF)
#define DW8_LD(b, ky, kx) _mm512_maskz_loadu_ps((__mmask16)(DW8_M(kx) & DW8_R(b, ky)), at(x, (b)*16 + ((ky)-1) * 8 + (kx)-1))
#define DW8_BLOCK(b)                                                                                                   \
  do {                                                                                                                 \
    __m512 acc = accumulate ? _mm512_loadu_ps(y + (b)*16) : vb, acc2 = _mm512_setzero_ps();                            \
    acc = _mm512_fmadd_ps(w0, DW8_LD(b, 0, 0), acc);                                                                   \
    acc2 = _mm512_fmadd_ps(w1, DW8_LD(b, 0, 1), acc2);                                                                 \
    acc = _mm512_fmadd_ps(w2, DW8_LD(b, 0, 2), acc);                                                                   \
    acc2 = _mm512_fmadd_ps(w3, DW8_LD(b, 1, 0), acc2);                                                                 \
    acc = _mm512_fmadd_ps(w4, DW8_LD(b, 1, 1), acc);                                                                   \
    acc2 = _mm512_fmadd_ps(w5, DW8_LD(b, 1, 2), acc2);                                                                 \
    acc = _mm512_fmadd_ps(w6, DW8_LD(b, 2, 0), acc);                                                                   \
    acc2 = _mm512_fmadd_ps(w7, DW8_LD(b, 2, 1), acc2);                                                                 \
    acc = _mm512_fmadd_ps(w8, DW8_LD(b, 2, 2), acc);                                                                   \
    __m512 v = _mm512_add_ps(acc, acc2);                                                                               \
    if (pe) v = pepi(v, pe, (b)*16, (__mmask16)0xFFFF);                                                                \
    _mm512_storeu_ps(y + (b)*16, v);                                                                                   \
  } while (0)
static A512 void dw_plane_8x8(const float *x, const float *wk, float bias, float *y, int accumulate,
                              const cn_dw_pepi *pe) {
  const __m512 w0 = _mm512_set1_ps(wk[0]), w1 = _mm512_set1_ps(wk[1]), w2 = _mm512_set1_ps(wk[2]);
  const __m512 w3 = _mm512_set1_ps(wk[3]), w4 = _mm512_set1_ps(wk[4]), w5 = _mm512_set1_ps(wk[5]);
  const __m512 w6 = _mm512_set1_ps(wk[6]), w7 = _mm512_set1_ps(wk[7]), w8 = _mm512_set1_ps(wk[8]);
  const __m512 vb = _mm512_set1_ps(bias);
  DW8_BLOCK(0);
  DW8_BLOCK(1);
  DW8_BLOCK(2);
  DW8_BLOCK(3);
}
#undef DW8_BLOCK
#undef DW8_LD
#undef DW8_R
#undef DW8_M

A512 void cn_dw_s1_plane_avx512(const float *x, const float *wk, float bias, float *y, const cn_dw_plan *P,
                                int accumulate, const cn_dw_pepi *pe) {
  const long nt = P->ntaps;
  if (nt == 9 && P->H == 8 && P->W == 8 && P->oh == 8 && P->off[0] == -9) {
    dw_plane_8x8(x, wk, bias, y, accumulate, pe);
    return;
  }
  if (nt == 9) {
    const __m512 w0 = _mm512_set1_ps(wk[0]), w1 = _mm512_set1_ps(wk[1]), w2 = _mm512_set1_ps(wk[2]);
    const __m512 w3 = _mm512_set1_ps(wk[3]), w4 = _mm512_set1_ps(wk[4]), w5 = _mm512_set1_ps(wk[5]);
    const __m512 w6 = _mm512_set1_ps(wk[6]), w7 = _mm512_set1_ps(wk[7]), w8 = _mm512_set1_ps(wk[8]);
    const long o0 = P->off[0], o1 = P->off[1], o2 = P->off[2], o3 = P->off[3], o4 = P->off[4], o5 = P->off[5],
               o6 = P->off[6], o7 = P->off[7], o8 = P->off[8];
    const __m512 vb = _mm512_set1_ps(bias);
    for (long b = 0; b < P->nblk; b++) {
      const uint16_t *m = P->masks + b * 11;
      const float *xb = at(x, b * 16);
      __m512 acc, acc2 = _mm512_setzero_ps();
      if (m[10]) {
        acc = accumulate ? _mm512_loadu_ps(y + b * 16) : vb;
        acc = _mm512_mask3_fmadd_ps(w0, LD(0), acc, m[0]);
        acc2 = _mm512_mask3_fmadd_ps(w1, LD(1), acc2, m[1]);
        acc = _mm512_mask3_fmadd_ps(w2, LD(2), acc, m[2]);
        acc2 = _mm512_mask3_fmadd_ps(w3, LD(3), acc2, m[3]);
        acc = _mm512_mask3_fmadd_ps(w4, LD(4), acc, m[4]);
        acc2 = _mm512_mask3_fmadd_ps(w5, LD(5), acc2, m[5]);
        acc = _mm512_mask3_fmadd_ps(w6, LD(6), acc, m[6]);
        acc2 = _mm512_mask3_fmadd_ps(w7, LD(7), acc2, m[7]);
        acc = _mm512_mask3_fmadd_ps(w8, LD(8), acc, m[8]);
        __m512 v = _mm512_add_ps(acc, acc2);
        if (pe) v = pepi(v, pe, b * 16, (__mmask16)0xFFFF);
        _mm512_storeu_ps(y + b * 16, v);
      } else {
        const __mmask16 mo = m[9];
        acc = accumulate ? _mm512_maskz_loadu_ps(mo, y + b * 16) : vb;
        acc = _mm512_fmadd_ps(w0, MLD(0), acc);
        acc2 = _mm512_fmadd_ps(w1, MLD(1), acc2);
        acc = _mm512_fmadd_ps(w2, MLD(2), acc);
        acc2 = _mm512_fmadd_ps(w3, MLD(3), acc2);
        acc = _mm512_fmadd_ps(w4, MLD(4), acc);
        acc2 = _mm512_fmadd_ps(w5, MLD(5), acc2);
        acc = _mm512_fmadd_ps(w6, MLD(6), acc);
        acc2 = _mm512_fmadd_ps(w7, MLD(7), acc2);
        acc = _mm512_fmadd_ps(w8, MLD(8), acc);
        __m512 v = _mm512_add_ps(acc, acc2);
        if (pe) v = pepi(v, pe, b * 16, mo);
        _mm512_mask_storeu_ps(y + b * 16, mo, v);
      }
    }
    return;
  }
  for (long b = 0; b < P->nblk; b++) {
    const uint16_t *m = P->masks + b * (nt + 2);
    const float *xb = at(x, b * 16);
    const __mmask16 mo = m[nt];
    __m512 acc = accumulate ? _mm512_maskz_loadu_ps(mo, y + b * 16) : _mm512_set1_ps(bias);
    for (long q = 0; q < nt; q++)
      if (m[q]) acc = _mm512_fmadd_ps(_mm512_set1_ps(wk[q]), _mm512_maskz_loadu_ps(m[q], at(xb, P->off[q])), acc);
    if (pe) acc = pepi(acc, pe, b * 16, mo);
    _mm512_mask_storeu_ps(y + b * 16, mo, acc);
  }
}

static A512 double hsum512(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v), hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256d a = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(lo)), _mm256_cvtps_pd(_mm256_extractf128_ps(lo, 1)));
  const __m256d b = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(hi)), _mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1)));
  const __m256d s = _mm256_add_pd(a, b);
  const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}

/* 8x8 planes, 3x3, padding 1: a[tap] += dy * x_tap over one plane pair with the tap masks as
 * constants (those of cn_dw_s1_prepare; the same operations as the general loop below) */
#define W8_M(kx) ((kx) == 0 ? 0xFEFE : (kx) == 2 ? 0x7F7F : 0xFFFF)
#define W8_R(b, ky) ((b) == 0 && (ky) == 0 ? 0xFF00 : (b) == 3 && (ky) == 2 ? 0x00FF : 0xFFFF)
#define W8_K(b, q) ((__mmask16)(W8_M((q) % 3) & W8_R(b, (q) / 3)))
#define W8_OFF(q) (((q) / 3 - 1) * 8 + (q) % 3 - 1)
#define W8_EDGE(b, q) a[q] = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(W8_K(b, q), at(xb, W8_OFF(q))), a[q])
#define W8_MID(b, q) a[q] = _mm512_mask3_fmadd_ps(g, _mm512_loadu_ps(xb + W8_OFF(q)), a[q], W8_K(b, q))
#define W8_BLOCK(b, T)                                                                                                 \
  do {                                                                                                                 \
    const __m512 g = _mm512_loadu_ps(gp + (b)*16);                                                                    \
    const float *xb = xp + (b)*16;                                                                                     \
    T(b, 0); T(b, 1); T(b, 2); T(b, 3); T(b, 4); T(b, 5); T(b, 6); T(b, 7); T(b, 8);                                  \
  } while (0)
static A512 inline __attribute__((always_inline)) void wgrad_8x8_plane(const float *gp, const float *xp, __m512 *a) {
  W8_BLOCK(0, W8_EDGE);
  W8_BLOCK(1, W8_MID);
  W8_BLOCK(2, W8_MID);
  W8_BLOCK(3, W8_EDGE);
}
#undef W8_BLOCK
#undef W8_MID
#undef W8_EDGE
#undef W8_OFF
#undef W8_K
#undef W8_R
#undef W8_M

/* acc[tap] += sum over `count` plane pairs of dy * x_tap (dy planes every dy_stride floats, x planes
 * every x_stride). Vector accumulators span all the planes and are reduced once. */
A512 void cn_dw_s1_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                                const cn_dw_plan *P, double *acc) {
  const long nt = P->ntaps;
  if (nt == 9) {
    __m512 a[9];
    for (int q = 0; q < 9; q++) a[q] = _mm512_setzero_ps();
    const int is8x8 = P->H == 8 && P->W == 8 && P->oh == 8 && P->off[0] == -9; /* (as cn_dw_s1_plane_avx512) */
    const long o0 = P->off[0], o1 = P->off[1], o2 = P->off[2], o3 = P->off[3], o4 = P->off[4], o5 = P->off[5],
               o6 = P->off[6], o7 = P->off[7], o8 = P->off[8];
    for (long i = 0; i < count; i++) {
      const float *xp = x + i * x_stride, *gp = dy + i * dy_stride;
      if (is8x8) {
        wgrad_8x8_plane(gp, xp, a);
        continue;
      }
      for (long b = 0; b < P->nblk; b++) {
        const uint16_t *m = P->masks + b * 11;
        const float *xb = at(xp, b * 16);
        if (m[10]) {
          const __m512 g = _mm512_loadu_ps(gp + b * 16);
          a[0] = _mm512_mask3_fmadd_ps(g, LD(0), a[0], m[0]);
          a[1] = _mm512_mask3_fmadd_ps(g, LD(1), a[1], m[1]);
          a[2] = _mm512_mask3_fmadd_ps(g, LD(2), a[2], m[2]);
          a[3] = _mm512_mask3_fmadd_ps(g, LD(3), a[3], m[3]);
          a[4] = _mm512_mask3_fmadd_ps(g, LD(4), a[4], m[4]);
          a[5] = _mm512_mask3_fmadd_ps(g, LD(5), a[5], m[5]);
          a[6] = _mm512_mask3_fmadd_ps(g, LD(6), a[6], m[6]);
          a[7] = _mm512_mask3_fmadd_ps(g, LD(7), a[7], m[7]);
          a[8] = _mm512_mask3_fmadd_ps(g, LD(8), a[8], m[8]);
        } else {
          const __m512 g = _mm512_maskz_loadu_ps(m[9], gp + b * 16);
          a[0] = _mm512_fmadd_ps(g, MLD(0), a[0]);
          a[1] = _mm512_fmadd_ps(g, MLD(1), a[1]);
          a[2] = _mm512_fmadd_ps(g, MLD(2), a[2]);
          a[3] = _mm512_fmadd_ps(g, MLD(3), a[3]);
          a[4] = _mm512_fmadd_ps(g, MLD(4), a[4]);
          a[5] = _mm512_fmadd_ps(g, MLD(5), a[5]);
          a[6] = _mm512_fmadd_ps(g, MLD(6), a[6]);
          a[7] = _mm512_fmadd_ps(g, MLD(7), a[7]);
          a[8] = _mm512_fmadd_ps(g, MLD(8), a[8]);
        }
      }
    }
    for (int q = 0; q < 9; q++) acc[q] += hsum512(a[q]);
    return;
  }
  for (long q = 0; q < nt; q++) {
    __m512 a = _mm512_setzero_ps();
    for (long i = 0; i < count; i++) {
      const float *xp = x + i * x_stride, *gp = dy + i * dy_stride;
      for (long b = 0; b < P->nblk; b++) {
        const uint16_t *m = P->masks + b * (nt + 2);
        if (!m[q]) continue;
        const __m512 g = _mm512_maskz_loadu_ps(m[nt], gp + b * 16);
        a = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m[q], at(at(xp, b * 16), P->off[q])), a);
      }
    }
    acc[q] += hsum512(a);
  }
}

/* ---- rows of 16-multiple width: aligned-in-row loads, neighbours by valignd -------------------
 * For 3x3 kernels with pw == 1 and W % 16 == 0 (32x32, 16x16 planes): each input row is read
 * once per output row as consecutive vectors; the left/right neighbours come from valignd of
 * adjacent vectors (zero beyond the row), which avoids the 9 line-splitting unaligned loads per
 * output vector of the flattened form (2-5x faster on Zen 5). */

int cn_dw_w16_applicable(long W, long kh, long kw, long sh, long sw, long pw, long ow) {
  return kh == 3 && kw == 3 && sh == 1 && sw == 1 && pw == 1 && ow == W && W % 16 == 0 && W >= 16;
}

#define ALIGNR(hi, lo, n) _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), n))

A512 void cn_dw_w16_plane_avx512(const float *x, const float *wk, float bias, float *y, long H, long W, long ph, long oh,
                                 int accumulate, const cn_dw_pepi *pe) {
  const long nb = W / 16;
  const __m512 z = _mm512_setzero_ps();
  __m512 w[9];
  for (int q = 0; q < 9; q++) w[q] = _mm512_set1_ps(wk[q]);
  for (long i = 0; i < oh; i++) {
    float *yr = y + i * W;
    const float *rows[3];
    int valid[3];
    for (int a = 0; a < 3; a++) {
      const long r = i + a - ph;
      valid[a] = (r >= 0 && r < H);
      rows[a] = valid[a] ? x + r * W : x;
    }
    __m512 p0 = z, p1 = z, p2 = z;
    __m512 c0 = valid[0] ? _mm512_loadu_ps(rows[0]) : z;
    __m512 c1 = valid[1] ? _mm512_loadu_ps(rows[1]) : z;
    __m512 c2 = valid[2] ? _mm512_loadu_ps(rows[2]) : z;
    for (long b = 0; b < nb; b++) {
      const int last = (b + 1 == nb);
      const __m512 n0 = (!last && valid[0]) ? _mm512_loadu_ps(rows[0] + 16 * (b + 1)) : z;
      const __m512 n1 = (!last && valid[1]) ? _mm512_loadu_ps(rows[1] + 16 * (b + 1)) : z;
      const __m512 n2 = (!last && valid[2]) ? _mm512_loadu_ps(rows[2] + 16 * (b + 1)) : z;
      __m512 acc = accumulate ? _mm512_loadu_ps(yr + 16 * b) : _mm512_set1_ps(bias);
      __m512 acc2 = _mm512_mul_ps(w[1], c0);
      acc = _mm512_fmadd_ps(w[0], ALIGNR(c0, p0, 15), acc);
      acc2 = _mm512_fmadd_ps(w[2], ALIGNR(n0, c0, 1), acc2);
      acc = _mm512_fmadd_ps(w[3], ALIGNR(c1, p1, 15), acc);
      acc2 = _mm512_fmadd_ps(w[4], c1, acc2);
      acc = _mm512_fmadd_ps(w[5], ALIGNR(n1, c1, 1), acc);
      acc2 = _mm512_fmadd_ps(w[6], ALIGNR(c2, p2, 15), acc2);
      acc = _mm512_fmadd_ps(w[7], c2, acc);
      acc2 = _mm512_fmadd_ps(w[8], ALIGNR(n2, c2, 1), acc2);
      __m512 v = _mm512_add_ps(acc, acc2);
      if (pe) v = pepi(v, pe, i * W + 16 * b, (__mmask16)0xFFFF);
      _mm512_storeu_ps(yr + 16 * b, v);
      p0 = c0;
      p1 = c1;
      p2 = c2;
      c0 = n0;
      c1 = n1;
      c2 = n2;
    }
  }
}

/* acc[9] += taps of dy (oh x W) against x (H x W, 3x3, pw 1), summed over `count` plane pairs */
A512 void cn_dw_w16_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count, long H,
                                 long W, long ph, long oh, double *acc) {
  const long nb = W / 16;
  const __m512 z = _mm512_setzero_ps();
  __m512 a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z, a8 = z;
  for (long q = 0; q < count; q++) {
    const float *xp = x + q * x_stride, *gp = dy + q * dy_stride;
    for (long i = 0; i < oh; i++) {
      const float *gr = gp + i * W;
      const float *rows[3];
      int valid[3];
      for (int a = 0; a < 3; a++) {
        const long r = i + a - ph;
        valid[a] = (r >= 0 && r < H);
        rows[a] = valid[a] ? xp + r * W : xp;
      }
      __m512 p0 = z, p1 = z, p2 = z;
      __m512 c0 = valid[0] ? _mm512_loadu_ps(rows[0]) : z;
      __m512 c1 = valid[1] ? _mm512_loadu_ps(rows[1]) : z;
      __m512 c2 = valid[2] ? _mm512_loadu_ps(rows[2]) : z;
      for (long b = 0; b < nb; b++) {
        const int last = (b + 1 == nb);
        const __m512 n0 = (!last && valid[0]) ? _mm512_loadu_ps(rows[0] + 16 * (b + 1)) : z;
        const __m512 n1 = (!last && valid[1]) ? _mm512_loadu_ps(rows[1] + 16 * (b + 1)) : z;
        const __m512 n2 = (!last && valid[2]) ? _mm512_loadu_ps(rows[2] + 16 * (b + 1)) : z;
        const __m512 g = _mm512_loadu_ps(gr + 16 * b);
        a0 = _mm512_fmadd_ps(g, ALIGNR(c0, p0, 15), a0);
        a1 = _mm512_fmadd_ps(g, c0, a1);
        a2 = _mm512_fmadd_ps(g, ALIGNR(n0, c0, 1), a2);
        a3 = _mm512_fmadd_ps(g, ALIGNR(c1, p1, 15), a3);
        a4 = _mm512_fmadd_ps(g, c1, a4);
        a5 = _mm512_fmadd_ps(g, ALIGNR(n1, c1, 1), a5);
        a6 = _mm512_fmadd_ps(g, ALIGNR(c2, p2, 15), a6);
        a7 = _mm512_fmadd_ps(g, c2, a7);
        a8 = _mm512_fmadd_ps(g, ALIGNR(n2, c2, 1), a8);
        p0 = c0;
        p1 = c1;
        p2 = c2;
        c0 = n0;
        c1 = n1;
        c2 = n2;
      }
    }
  }
  acc[0] += hsum512(a0);
  acc[1] += hsum512(a1);
  acc[2] += hsum512(a2);
  acc[3] += hsum512(a3);
  acc[4] += hsum512(a4);
  acc[5] += hsum512(a5);
  acc[6] += hsum512(a6);
  acc[7] += hsum512(a7);
  acc[8] += hsum512(a8);
}

/* ---- 3x3, stride 2, padding 1, W a multiple of 16 (32x32 -> 16x16, 16x16 -> 8x8) ----------------
 * Each input row is split into its even and odd columns with two vpermt2ps; output column ox
 * reads even[ox] (kx = 1), odd[ox] (kx = 2) and odd[ox - 1] (kx = 0, a valignd with the previous
 * block). The input gradient is the transpose: even dx columns get the kx = 1 taps, odd ones the
 * kx = 0 and kx = 2 taps, then the two are interleaved back. */

int cn_dw_s2_applicable(long H, long W, long kh, long kw, long sh, long sw, long ph, long pw) {
  return kh == 3 && kw == 3 && sh == 2 && sw == 2 && ph == 1 && pw == 1 && W % 16 == 0 && W >= 16 && H % 2 == 0 &&
         H >= 2;
}

static A512 inline void s2_split(const float *row, long b, long W, __m512 *ev, __m512 *od) {
  /* columns [32b, 32b + 32) (the upper half absent when W = 32b + 16) */
  const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  const __m512 lo = _mm512_loadu_ps(row + 32 * b);
  const __m512 hi = 32 * b + 16 < W ? _mm512_loadu_ps(row + 32 * b + 16) : _mm512_setzero_ps();
  *ev = _mm512_permutex2var_ps(lo, ie, hi);
  *od = _mm512_permutex2var_ps(lo, io, hi);
}

/* odd[ox - 1] for the block: lane 0 from the previous block's last odd value */
static A512 inline __m512 s2_left(__m512 od, __m512 prev_od) { return ALIGNR(od, prev_od, 15); }

A512 void cn_dw_s2_plane_avx512(const float *x, const float *wk, float bias, float *y, long H, long W,
                                const cn_dw_pepi *pe) {
  const long oh = H / 2, ow = W / 2, nb = (ow + 15) / 16;
  const __m512 z = _mm512_setzero_ps();
  __m512 w[9];
  for (int q = 0; q < 9; q++) w[q] = _mm512_set1_ps(wk[q]);
  for (long oy = 0; oy < oh; oy++) {
    const long r0 = 2 * oy - 1; /* input rows r0, r0 + 1, r0 + 2 (r0 = -1 is padding) */
    __m512 pod[3] = {z, z, z};
    for (long b = 0; b < nb; b++) {
      __m512 acc = _mm512_set1_ps(bias), acc2 = z;
      for (int ky = 0; ky < 3; ky++) {
        const long r = r0 + ky;
        if (r < 0 || r >= H) continue;
        __m512 ev, od;
        s2_split(x + r * W, b, W, &ev, &od);
        const __m512 left = s2_left(od, pod[ky]);
        pod[ky] = od;
        acc = _mm512_fmadd_ps(w[3 * ky + 0], left, acc);
        acc2 = _mm512_fmadd_ps(w[3 * ky + 1], ev, acc2);
        acc = _mm512_fmadd_ps(w[3 * ky + 2], od, acc);
      }
      __m512 v = _mm512_add_ps(acc, acc2);
      const long o = oy * ow + 16 * b;
      const __mmask16 m = ow - 16 * b >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ow - 16 * b)) - 1u);
      if (pe) v = pepi(v, pe, o, m);
      if (m == 0xFFFF)
        _mm512_storeu_ps(y + o, v);
      else
        _mm512_mask_storeu_ps(y + o, m, v);
    }
  }
}

/* acc[9] += taps of dy (H/2 x W/2) against x (H x W), summed over `count` plane pairs */
A512 void cn_dw_s2_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count, long H,
                                long W, double *acc) {
  const long oh = H / 2, ow = W / 2, nb = (ow + 15) / 16;
  const __m512 z = _mm512_setzero_ps();
  __m512 a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z, a8 = z;
  for (long q = 0; q < count; q++) {
    const float *xp = x + q * x_stride, *gp = dy + q * dy_stride;
    for (long oy = 0; oy < oh; oy++) {
      const long r0 = 2 * oy - 1;
      __m512 pod0 = z, pod1 = z, pod2 = z;
      for (long b = 0; b < nb; b++) {
        const __mmask16 m = ow - 16 * b >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ow - 16 * b)) - 1u);
        const __m512 g = _mm512_maskz_loadu_ps(m, gp + oy * ow + 16 * b);
        __m512 ev, od, left;
        if (r0 >= 0) {
          s2_split(xp + r0 * W, b, W, &ev, &od);
          left = s2_left(od, pod0);
          pod0 = od;
          a0 = _mm512_fmadd_ps(g, left, a0);
          a1 = _mm512_fmadd_ps(g, ev, a1);
          a2 = _mm512_fmadd_ps(g, od, a2);
        }
        s2_split(xp + (r0 + 1) * W, b, W, &ev, &od);
        left = s2_left(od, pod1);
        pod1 = od;
        a3 = _mm512_fmadd_ps(g, left, a3);
        a4 = _mm512_fmadd_ps(g, ev, a4);
        a5 = _mm512_fmadd_ps(g, od, a5);
        if (r0 + 2 < H) {
          s2_split(xp + (r0 + 2) * W, b, W, &ev, &od);
          left = s2_left(od, pod2);
          pod2 = od;
          a6 = _mm512_fmadd_ps(g, left, a6);
          a7 = _mm512_fmadd_ps(g, ev, a7);
          a8 = _mm512_fmadd_ps(g, od, a8);
        }
      }
    }
  }
  acc[0] += hsum512(a0);
  acc[1] += hsum512(a1);
  acc[2] += hsum512(a2);
  acc[3] += hsum512(a3);
  acc[4] += hsum512(a4);
  acc[5] += hsum512(a5);
  acc[6] += hsum512(a6);
  acc[7] += hsum512(a7);
  acc[8] += hsum512(a8);
}

/* dx (H x W) (=|+=) the input gradient of dy (H/2 x W/2) through the 3x3 stride-2 kernel wk */
A512 void cn_dw_s2_dgrad_avx512(const float *dy, const float *wk, float *dx, long H, long W, int accumulate) {
  const long oh = H / 2, ow = W / 2, nb = (ow + 15) / 16;
  const __m512 z = _mm512_setzero_ps();
  /* interleave even (lanes of e) and odd (lanes of o) columns back: dx[2m] = e[m], dx[2m+1] = o[m] */
  const __m512i ilo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i ihi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (long iy = 0; iy < H; iy++) {
    /* dy rows and kernel rows feeding input row iy = 2 oy - 1 + ky */
    long oys[2];
    int kys[2], nr = 0;
    for (int ky = 0; ky < 3; ky++) {
      const long t = iy + 1 - ky;
      if (t >= 0 && t % 2 == 0 && t / 2 < oh) {
        oys[nr] = t / 2;
        kys[nr] = ky;
        nr++;
      }
    }
    float *d = dx + iy * W;
    for (long b = 0; b < nb; b++) {
      /* even columns 2m (m = 16b + l): kx = 1 taps of dy[m]; odd columns 2m + 1: kx = 2 taps of
       * dy[m] and kx = 0 taps of dy[m + 1] */
      __m512 e = z, o = z;
      const __mmask16 m = ow - 16 * b >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ow - 16 * b)) - 1u);
      const __mmask16 mn = ow - 16 * b - 1 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ow - 16 * b - 1)) - 1u);
      for (int r = 0; r < nr; r++) {
        const float *gr = dy + oys[r] * ow + 16 * b;
        const __m512 g = _mm512_maskz_loadu_ps(m, gr);
        const __m512 gn = _mm512_maskz_loadu_ps(mn, gr + 1); /* dy[m + 1], zero past the row */
        e = _mm512_fmadd_ps(_mm512_set1_ps(wk[3 * kys[r] + 1]), g, e);
        o = _mm512_fmadd_ps(_mm512_set1_ps(wk[3 * kys[r] + 2]), g, o);
        o = _mm512_fmadd_ps(_mm512_set1_ps(wk[3 * kys[r] + 0]), gn, o);
      }
      const __m512 lo = _mm512_permutex2var_ps(e, ilo, o), hi = _mm512_permutex2var_ps(e, ihi, o);
      float *dp = d + 32 * b;
      if (32 * b + 32 <= W) {
        _mm512_storeu_ps(dp, accumulate ? _mm512_add_ps(_mm512_loadu_ps(dp), lo) : lo);
        _mm512_storeu_ps(dp + 16, accumulate ? _mm512_add_ps(_mm512_loadu_ps(dp + 16), hi) : hi);
      } else { /* W = 32b + 16 */
        _mm512_storeu_ps(dp, accumulate ? _mm512_add_ps(_mm512_loadu_ps(dp), lo) : lo);
      }
    }
  }
}

/* ---- small planes (at most 64 values in and out): taps as register permutes --------------------
 * A plane of up to 64 floats sits in four zmm registers; every output vector of every tap is one
 * (or, above 32 values, two blended) vpermt2ps of them with a precomputed index, and padding or
 * out-of-plane lanes are left out of the FMA by a mask. Any stride and padding, and both the
 * forward mapping (output o reads input o*s - p + k) and the transposed one of the input
 * gradient (dx at i gathers dy at (i + p - k) / s where that divides), so 8x8, 4x4 and 2x2
 * layers of any stride avoid the per-plane setup of the general path. */

int cn_dw_sp_applicable(long in_hw, long out_hw, long ntaps) {
  return in_hw >= 1 && in_hw <= 64 && out_hw >= 1 && out_hw <= 64 && ntaps <= CN_DW_MAX_TAPS;
}

/* transposed = 0: out (OH x OW) from in (H x W) as a convolution; 1: out (H x W) gathers in (OH x OW)
 * as the input gradient. Geometry of the forward convolution in both cases. */
int cn_dw_sp_prepare(cn_dw_sp_plan *P, long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh,
                     long ow, int transposed) {
  const long ih = transposed ? oh : H, iw = transposed ? ow : W; /* the plane read */
  const long rh = transposed ? H : oh, rw = transposed ? W : ow; /* the plane written */
  P->is2x2 = H == 2 && W == 2 && kh == 3 && kw == 3 && sh == 1 && sw == 1 && ph == 1 && pw == 1 && oh == 2 && ow == 2;
  P->transposed = transposed;
  P->is4s2 = H == 4 && W == 4 && kh == 3 && kw == 3 && sh == 2 && sw == 2 && ph == 1 && pw == 1 && oh == 2 && ow == 2;
  P->is8s2 = H == 8 && W == 8 && kh == 3 && kw == 3 && sh == 2 && sw == 2 && ph == 1 && pw == 1 && oh == 4 && ow == 4;
  P->is4x4 = H == 4 && W == 4 && kh == 3 && kw == 3 && sh == 1 && sw == 1 && ph == 1 && pw == 1 && oh == 4 && ow == 4;
  P->in_size = ih * iw;
  P->out_size = rh * rw;
  P->nin = (int)((P->in_size + 15) / 16);
  P->nout = (int)((P->out_size + 15) / 16);
  P->ntaps = (int)(kh * kw);
  const size_t ent = (size_t)P->nout * (size_t)P->ntaps;
  P->idx = (int32_t *)malloc(sizeof(int32_t) * 16 * ent);
  P->mask = (uint16_t *)malloc(sizeof(uint16_t) * ent);
  P->hi = (uint16_t *)malloc(sizeof(uint16_t) * ent);
  if (!P->idx || !P->mask || !P->hi) {
    cn_dw_sp_release(P);
    return 0;
  }
  for (long b = 0; b < P->nout; b++)
    for (long q = 0; q < P->ntaps; q++) {
      const long ky = q / kw, kx = q % kw;
      const size_t e = (size_t)b * (size_t)P->ntaps + (size_t)q;
      uint16_t m = 0, hi = 0;
      for (int l = 0; l < 16; l++) {
        const long o = b * 16 + l;
        long src = -1;
        if (o < P->out_size) {
          const long oy = o / rw, ox = o % rw;
          if (!transposed) {
            const long iy = oy * sh - ph + ky, ix = ox * sw - pw + kx;
            if (iy >= 0 && iy < ih && ix >= 0 && ix < iw) src = iy * iw + ix;
          } else {
            const long ty = oy + ph - ky, tx = ox + pw - kx;
            if (ty >= 0 && tx >= 0 && ty % sh == 0 && tx % sw == 0 && ty / sh < ih && tx / sw < iw)
              src = (ty / sh) * iw + tx / sw;
          }
        }
        P->idx[e * 16 + (size_t)l] = src >= 0 ? (int32_t)(src & 31) : 0;
        if (src >= 0) {
          m |= (uint16_t)(1u << l);
          if (src >= 32) hi |= (uint16_t)(1u << l);
        }
      }
      P->mask[e] = m;
      P->hi[e] = hi;
    }
  return 1;
}

void cn_dw_sp_release(cn_dw_sp_plan *P) {
  free(P->idx);
  free(P->mask);
  free(P->hi);
  P->idx = NULL;
  P->mask = P->hi = NULL;
}

static A512 inline __mmask16 sp_tail(long n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }

/* the plane (size values) in r[0..3], zeros beyond */
static A512 inline void sp_load(const float *p, long size, __m512 *r) {
  for (int v = 0; v < 4; v++) {
    const long left = size - 16 * v;
    r[v] = left > 0 ? _mm512_maskz_loadu_ps(sp_tail(left), p + 16 * v) : _mm512_setzero_ps();
  }
}

/* the tap's values for output block e (lanes outside P->mask are don't-care) */
static A512 inline __m512 sp_tap(const cn_dw_sp_plan *P, size_t e, const __m512 *r) {
  const __m512i ix = _mm512_loadu_si512((const void *)(P->idx + e * 16));
  const __m512 lo = _mm512_permutex2var_ps(r[0], ix, r[1]);
  if (!P->hi[e]) return lo;
  return _mm512_mask_blend_ps(P->hi[e], lo, _mm512_permutex2var_ps(r[2], ix, r[3]));
}

/* ---- 8x8 -> 4x4, 3x3, stride 2, padding 1 (MobileNet's 8x8 -> 4x4 layers): parity sub-planes ------
 * Output lane l = (i, j) of tap q = (ky, kx) reads x(2i + ky - 1, 2j + kx - 1), which is lane
 * l - S8_SHIFT(q) of the parity sub-plane X_ab(i, j) = x(2i + a, 2j + b) with a = ky != 1,
 * b = kx != 1 (one vector each, made by two permutes and a blend), inside where S8_M(q) has l.
 * So the nine tap vectors cost four sub-planes and five lane shifts instead of one or two
 * permutes with loaded indices per tap; each lane sees the small-plane kernels' FMAs in their
 * order (the same floats). */
#define S8_SHIFT(q) (((q) / 3 == 0 ? 4 : 0) + ((q) % 3 == 0 ? 1 : 0))
#define S8_M(q) ((__mmask16)(((q) / 3 == 0 ? 0xFFF0 : 0xFFFF) & ((q) % 3 == 0 ? 0xEEEE : 0xFFFF)))
/* lanes moved up by s (lane l from l - s, zeros below), s a constant 0..15 */
#define S8_UP(v, s) ((s) ? _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v), _mm512_setzero_si512(), 16 - (s))) : (v))
/* lanes moved down by s (lane l from l + s, zeros above) */
#define S8_DOWN(v, s) ((s) ? _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_setzero_si512(), _mm512_castps_si512(v), (s))) : (v))

/* the nine tap vectors of the 8x8 plane x (lanes outside S8_M(q) are don't-care) */
static A512 inline __attribute__((always_inline)) void s8_taps(const float *x, __m512 *t) {
  const __m512 r0 = _mm512_loadu_ps(x), r1 = _mm512_loadu_ps(x + 16), r2 = _mm512_loadu_ps(x + 32),
               r3 = _mm512_loadu_ps(x + 48);
  /* X_ab lane 4i + j = x[(2i + a) * 8 + 2j + b]: rows 0-3 from (r0, r1), rows 4-7 from (r2, r3) */
  const __m512i base = _mm512_set_epi32(22, 20, 18, 16, 6, 4, 2, 0, 22, 20, 18, 16, 6, 4, 2, 0);
  __m512 X[4];
  for (int ab = 0; ab < 4; ab++) {
    const __m512i ix = _mm512_add_epi32(base, _mm512_set1_epi32((ab >> 1) * 8 + (ab & 1)));
    X[ab] = _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(r0, ix, r1), _mm512_permutex2var_ps(r2, ix, r3));
  }
#define S8_T(q) t[q] = S8_UP(X[((q) / 3 != 1) * 2 + ((q) % 3 != 1)], S8_SHIFT(q))
  S8_T(0); S8_T(1); S8_T(2); S8_T(3); S8_T(4); S8_T(5); S8_T(6); S8_T(7); S8_T(8);
#undef S8_T
}

/* cn_dw_sp_plane_avx512's forward plane (no accumulation) */
static A512 void fwd_8x8s2_plane(const float *in, const float *wk, float bias, float *out, const cn_dw_pepi *pe) {
  __m512 t[9];
  s8_taps(in, t);
  __m512 acc = _mm512_set1_ps(bias);
#define F8(q) acc = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[q]), t[q], acc, S8_M(q))
  F8(0); F8(1); F8(2); F8(3); F8(4); F8(5); F8(6); F8(7); F8(8);
#undef F8
  if (pe) acc = pepi(acc, pe, 0, 0xFFFF);
  _mm512_storeu_ps(out, acc);
}

/* cn_dw_sp_wgrad_avx512 for 8x8 -> 4x4 stride 2 */
static A512 void wgrad_8x8s2(const float *dy, long dy_stride, const float *x, long x_stride, long count, double *acc) {
  __m512 a[9];
  for (int q = 0; q < 9; q++) a[q] = _mm512_setzero_ps();
  for (long i = 0; i < count; i++) {
    if (i + 6 < count) {
      for (long o = 0; o < 64; o += 16) _mm_prefetch((const char *)(x + (i + 6) * x_stride + o), _MM_HINT_T0);
      _mm_prefetch((const char *)(dy + (i + 6) * dy_stride), _MM_HINT_T0);
    }
    __m512 t[9];
    s8_taps(x + i * x_stride, t);
    const __m512 g = _mm512_loadu_ps(dy + i * dy_stride);
#define W8S(q) a[q] = _mm512_mask3_fmadd_ps(g, t[q], a[q], S8_M(q))
    W8S(0); W8S(1); W8S(2); W8S(3); W8S(4); W8S(5); W8S(6); W8S(7); W8S(8);
#undef W8S
  }
  for (int q = 0; q < 9; q++) acc[q] += hsum512(a[q]);
}

/* The input gradient of one 8x8 -> 4x4 stride-2 plane (dx: 64 floats from dy: 16, kernel wk):
 * dx(2i + a, 2j + b) gathers dy(i + (a && ky == 0), j + (b && kx == 0)) for the taps with
 * ky == 1 unless a, kx == 1 unless b: the four parity classes as vectors (taps in q order, as
 * the transposed small-plane plan applies them), then interleaved into the plane's rows. */
A512 void cn_dw_dgrad_8x8s2_avx512(const float *dyp, const float *wk, float *dx) {
  const __m512 d = _mm512_loadu_ps(dyp);
  const __m512 d1 = S8_DOWN(d, 1), d4 = S8_DOWN(d, 4), d5 = S8_DOWN(d, 5);
  const __m512 z = _mm512_setzero_ps();
#define WQ(q) _mm512_set1_ps(wk[q])
  const __m512 e00 = _mm512_mask3_fmadd_ps(WQ(4), d, z, 0xFFFF);
  __m512 e01 = _mm512_mask3_fmadd_ps(WQ(3), d1, z, 0x7777);
  e01 = _mm512_mask3_fmadd_ps(WQ(5), d, e01, 0xFFFF);
  __m512 e10 = _mm512_mask3_fmadd_ps(WQ(1), d4, z, 0x0FFF);
  e10 = _mm512_mask3_fmadd_ps(WQ(7), d, e10, 0xFFFF);
  __m512 e11 = _mm512_mask3_fmadd_ps(WQ(0), d5, z, 0x0777);
  e11 = _mm512_mask3_fmadd_ps(WQ(2), d4, e11, 0x0FFF);
  e11 = _mm512_mask3_fmadd_ps(WQ(6), d1, e11, 0x7777);
  e11 = _mm512_mask3_fmadd_ps(WQ(8), d, e11, 0xFFFF);
#undef WQ
  /* rows 2b (e00 / e01 alternating) and 2b + 1 (e10 / e11) of block b */
  const __m512i base = _mm512_set_epi32(19, 3, 18, 2, 17, 1, 16, 0, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int b = 0; b < 4; b++) {
    const __m512i ix = _mm512_add_epi32(base, _mm512_set1_epi32(4 * b));
    _mm512_storeu_ps(dx + 16 * b, _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(e00, ix, e01),
                                                       _mm512_permutex2var_ps(e10, ix, e11)));
  }
}

A512 void cn_dw_sp_plane_avx512(const float *in, const float *wk, float bias, float *out, const cn_dw_sp_plan *P,
                                int accumulate, const cn_dw_pepi *pe) {
  if (P->is8s2 && !P->transposed && !accumulate) {
    fwd_8x8s2_plane(in, wk, bias, out, pe);
    return;
  }
  __m512 r[4];
  sp_load(in, P->in_size, r);
  for (long b = 0; b < P->nout; b++) {
    const __mmask16 mo = sp_tail(P->out_size - 16 * b);
    __m512 acc = accumulate ? _mm512_maskz_loadu_ps(mo, out + 16 * b) : _mm512_set1_ps(bias);
    for (long q = 0; q < P->ntaps; q++) {
      const size_t e = (size_t)b * (size_t)P->ntaps + (size_t)q;
      if (!P->mask[e]) continue;
      acc = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[q]), sp_tap(P, e, r), acc, P->mask[e]);
    }
    if (pe) acc = pepi(acc, pe, 16 * b, mo);
    _mm512_mask_storeu_ps(out + 16 * b, mo, acc);
  }
}

/* 2x2 planes, 3x3, stride 1, padding 1, four adjacent planes in one vector (one 128-bit lane
 * each): tap q = (ky, kx) of output lane l = (oy, ox) reads lane V2_SRC of its own plane where
 * V2_OK (an in-lane permute with a constant selector, V2_IMM, and a constant mask, V2_M); the
 * input gradient's gather of tap q is the forward tap 8 - q. Each plane's lanes see the small-plane
 * kernels' FMAs in their order, so the results are the same floats. */
#define V2_Y(l, ky) (((l) >> 1) + (ky) - 1)
#define V2_X(l, kx) (((l) & 1) + (kx) - 1)
#define V2_OK(l, q) (V2_Y(l, (q) / 3) >= 0 && V2_Y(l, (q) / 3) <= 1 && V2_X(l, (q) % 3) >= 0 && V2_X(l, (q) % 3) <= 1)
#define V2_SRC(l, q) (V2_OK(l, q) ? V2_Y(l, (q) / 3) * 2 + V2_X(l, (q) % 3) : 0)
#define V2_IMM(q) (V2_SRC(0, q) | V2_SRC(1, q) << 2 | V2_SRC(2, q) << 4 | V2_SRC(3, q) << 6)
#define V2_M(q) ((__mmask16)((V2_OK(0, q) | V2_OK(1, q) << 1 | V2_OK(2, q) << 2 | V2_OK(3, q) << 3) * 0x1111))
#define V2_TAP(v, q) _mm512_permute_ps(v, V2_IMM(q))

/* the scalars s[0], s[stride], s[2*stride], s[3*stride], each over its plane's four lanes */
static A512 inline __m512 v2_per_plane(const float *s, long stride) {
  const __m512 a = _mm512_mask_mov_ps(_mm512_set1_ps(s[0]), 0x00F0, _mm512_set1_ps(s[stride]));
  const __m512 b = _mm512_mask_mov_ps(a, 0x0F00, _mm512_set1_ps(s[2 * stride]));
  return _mm512_mask_mov_ps(b, 0xF000, _mm512_set1_ps(s[3 * stride]));
}

static A512 inline void v2_add_sums(const __m512 *a, double *acc);

/* the nine taps' weights of four adjacent channels' kernels (wk, 9 apart), each over its plane */
static A512 inline void v2_weights(const float *wk, __m512 *wq) {
  const __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + 16), w2 = _mm512_maskz_loadu_ps(0x000F, wk + 32);
  for (int q = 0; q < 9; q++) {
    const __m512i ix = _mm512_add_epi32(_mm512_set_epi32(27, 27, 27, 27, 18, 18, 18, 18, 9, 9, 9, 9, 0, 0, 0, 0),
                                        _mm512_set1_epi32(q));
    __m512 v = _mm512_permutex2var_ps(w0, ix, w1); /* indexes below 32 */
    if (q >= 5) v = _mm512_mask_permutexvar_ps(v, 0xF000, _mm512_set1_epi32(27 + q - 32), w2);
    wq[q] = v;
  }
}

/* forward (cn_dw_sp_planes4_avx512 on 2x2 planes, 4 floats apart): four planes of one image */
/* the four planes' outputs (one 128-bit lane each) through their inference epilogues (pepi per
 * plane: its scalars over its lanes, its residual plane's 4 floats), stored at out */
static A512 void v2_store(__m512 a, const cn_dw_pepi *pe, float *out) {
  if (pe) {
    const float m[4] = {pe[0].m, pe[1].m, pe[2].m, pe[3].m}, k[4] = {pe[0].k, pe[1].k, pe[2].k, pe[3].k};
    const float bt[4] = {pe[0].bt, pe[1].bt, pe[2].bt, pe[3].bt};
    a = cn512_bn(a, v2_per_plane(m, 1), v2_per_plane(k, 1), v2_per_plane(bt, 1));
    if (pe[0].res) {
      __m512 r = _mm512_castps128_ps512(_mm_loadu_ps(pe[0].res));
      r = _mm512_insertf32x4(r, _mm_loadu_ps(pe[1].res), 1);
      r = _mm512_insertf32x4(r, _mm_loadu_ps(pe[2].res), 2);
      r = _mm512_insertf32x4(r, _mm_loadu_ps(pe[3].res), 3);
      a = _mm512_add_ps(r, a);
    }
    a = cn512_act(a, pe[0].act);
  }
  _mm512_storeu_ps(out, a);
}

static A512 void fwd_2x2_planes4(const float *in, const float *wk, const float *bias, float *out,
                                 const cn_dw_pepi *pe) {
  __m512 wq[9];
  v2_weights(wk, wq);
  const __m512 x = _mm512_loadu_ps(in);
  __m512 a = bias ? v2_per_plane(bias, 1) : _mm512_setzero_ps();
#define F2(q) a = _mm512_mask3_fmadd_ps(wq[q], V2_TAP(x, q), a, V2_M(q))
  F2(0); F2(1); F2(2); F2(3); F2(4); F2(5); F2(6); F2(7); F2(8);
#undef F2
  v2_store(a, pe, out);
}

/* ---- 4x4 -> 2x2, 3x3, stride 2, padding 1 (MobileNetV1's last stride-2 layer): four channels'
 * outputs in one vector (one 128-bit lane each). Output lane l = (i, j) of tap q = (ky, kx) reads
 * x(2i + ky - 1, 2j + kx - 1) = lane V4_SRC of its channel's input plane (one vector: a permute
 * of two planes per pair of channels, and a blend), inside where V4_M has l. Each plane's lanes
 * see the small-plane kernels' FMAs in their order (the same floats). */
#define V4_Y(l, ky) (2 * ((l) >> 1) + (ky) - 1)
#define V4_X(l, kx) (2 * ((l) & 1) + (kx) - 1)
#define V4_OK(l, q) (V4_Y(l, (q) / 3) >= 0 && V4_X(l, (q) % 3) >= 0)
#define V4_SRC(l, q) (V4_OK(l, q) ? V4_Y(l, (q) / 3) * 4 + V4_X(l, (q) % 3) : 0)
#define V4_M(q) ((__mmask16)((V4_OK(0, q) | V4_OK(1, q) << 1 | V4_OK(2, q) << 2 | V4_OK(3, q) << 3) * 0x1111))
/* the tap's vector from the four input planes r[0..3]: lanes 4j + l from plane j, lane V4_SRC(l) */
#define V4_IX(q) _mm512_set_epi32(16 + V4_SRC(3, q), 16 + V4_SRC(2, q), 16 + V4_SRC(1, q), 16 + V4_SRC(0, q),   \
                                  V4_SRC(3, q), V4_SRC(2, q), V4_SRC(1, q), V4_SRC(0, q),                           \
                                  16 + V4_SRC(3, q), 16 + V4_SRC(2, q), 16 + V4_SRC(1, q), 16 + V4_SRC(0, q),       \
                                  V4_SRC(3, q), V4_SRC(2, q), V4_SRC(1, q), V4_SRC(0, q))
#define V4_TAP(r, q) _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps((r)[0], V4_IX(q), (r)[1]),                   \
                                          _mm512_permutex2var_ps((r)[2], V4_IX(q), (r)[3]))

/* forward (cn_dw_sp_planes4_avx512 on 4x4 -> 2x2 stride 2: inputs 16 floats apart, outputs 4) */
static A512 void fwd_4x4s2_planes4(const float *in, const float *wk, const float *bias, float *out,
                                   const cn_dw_pepi *pe) {
  __m512 wq[9];
  v2_weights(wk, wq);
  const __m512 r[4] = {_mm512_loadu_ps(in), _mm512_loadu_ps(in + 16), _mm512_loadu_ps(in + 32), _mm512_loadu_ps(in + 48)};
  __m512 a = bias ? v2_per_plane(bias, 1) : _mm512_setzero_ps();
#define F4S(q) a = _mm512_mask3_fmadd_ps(wq[q], V4_TAP(r, q), a, V4_M(q))
  F4S(0); F4S(1); F4S(2); F4S(3); F4S(4); F4S(5); F4S(6); F4S(7); F4S(8);
#undef F4S
  v2_store(a, pe, out);
}

/* acc[j * 9 + tap] += the weight gradient of channels c0..c0+3 (4x4 -> 2x2 stride 2) over
 * `count` images: x planes (16 floats, adjacent) every x_stride, through tf (or NULL) per
 * channel; dy planes (4 floats, adjacent) every dy_stride. cn_dw_sp_wgrad_avx512's FMAs and
 * per-plane reductions. */
A512 void cn_dw_wgrad_4x4s2_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                                   const cn_intf *tf, long c0, double *acc) {
  __m512 a[9];
  for (int q = 0; q < 9; q++) a[q] = _mm512_setzero_ps();
  for (long i = 0; i < count; i++) {
    if (i + 4 < count) {
      for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(x + (i + 4) * x_stride + 16 * j), _MM_HINT_T0);
      _mm_prefetch((const char *)(dy + (i + 4) * dy_stride), _MM_HINT_T0);
    }
    __m512 r[4];
    for (int j = 0; j < 4; j++) {
      r[j] = _mm512_loadu_ps(x + i * x_stride + 16 * j);
      if (tf)
        r[j] = cn512_tf(r[j], _mm512_set1_ps(tf->mean[c0 + j]), _mm512_set1_ps(tf->scale[c0 + j]),
                        _mm512_set1_ps(tf->shift[c0 + j]), tf->act);
    }
    const __m512 g = _mm512_loadu_ps(dy + i * dy_stride);
#define W4S(q) a[q] = _mm512_mask3_fmadd_ps(g, V4_TAP(r, q), a[q], V4_M(q))
    W4S(0); W4S(1); W4S(2); W4S(3); W4S(4); W4S(5); W4S(6); W4S(7); W4S(8);
#undef W4S
  }
  v2_add_sums(a, acc);
}

/* The input gradient of 4x4 -> 2x2 stride-2 planes (one channel per group): dx plane p (16
 * floats) from dy plane p (4 floats), kernel of channel p % c, planes p0..p1; four adjacent
 * channels of one image at a time (their dy in one vector; four independent chains), else one
 * by one. Each plane's FMAs are those of the transposed small-plane plan, in its order: dx lane
 * (y, x) gathers dy(i, j) through tap q where y = 2i + ky - 1 and x = 2j + kx - 1. */
#define V4T_IN(t) ((t) >= 0 && (t) % 2 == 0 && (t) / 2 < 2) /* t = 2i: a row (column) of dy */
#define V4T_OK(o, q) (V4T_IN(((o) >> 2) + 1 - (q) / 3) && V4T_IN(((o) & 3) + 1 - (q) % 3))
#define V4T_SRC(o, q) (V4T_OK(o, q) ? ((((o) >> 2) + 1 - (q) / 3) / 2) * 2 + (((o) & 3) + 1 - (q) % 3) / 2 : 0)
#define V4T_IX(q)                                                                                                      \
  _mm512_set_epi32(V4T_SRC(15, q), V4T_SRC(14, q), V4T_SRC(13, q), V4T_SRC(12, q), V4T_SRC(11, q), V4T_SRC(10, q),    \
                   V4T_SRC(9, q), V4T_SRC(8, q), V4T_SRC(7, q), V4T_SRC(6, q), V4T_SRC(5, q), V4T_SRC(4, q),          \
                   V4T_SRC(3, q), V4T_SRC(2, q), V4T_SRC(1, q), V4T_SRC(0, q))
#define V4T_M4(r, q) (V4T_OK(4 * (r), q) | V4T_OK(4 * (r) + 1, q) << 1 | V4T_OK(4 * (r) + 2, q) << 2 | V4T_OK(4 * (r) + 3, q) << 3)
#define V4T_M(q) ((__mmask16)(V4T_M4(0, q) | V4T_M4(1, q) << 4 | V4T_M4(2, q) << 8 | V4T_M4(3, q) << 12))
A512 void cn_dw_dgrad_4x4s2_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx) {
  for (long p = p0; p < p1;) {
    const long ch = p % c;
    const int n4 = ch + 4 <= c && p + 4 <= p1 ? 4 : 1;
    const __m512 d = _mm512_maskz_loadu_ps(n4 == 4 ? 0xFFFF : 0x000F, dy + p * 4);
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
#define T4(q)                                                                                                          \
  do {                                                                                                                 \
    const __m512i ix = V4T_IX(q);                                                                                      \
    for (int j = 0; j < n4; j++)                                                                                       \
      a[j] = _mm512_mask3_fmadd_ps(_mm512_set1_ps(w[(ch + j) * 9 + (q)]),                                              \
                                   _mm512_permutexvar_ps(_mm512_add_epi32(ix, _mm512_set1_epi32(4 * j)), d), a[j],     \
                                   V4T_M(q));                                                                          \
  } while (0)
    T4(0); T4(1); T4(2); T4(3); T4(4); T4(5); T4(6); T4(7); T4(8);
#undef T4
    for (int j = 0; j < n4; j++) _mm512_storeu_ps(dx + (p + j) * 16, a[j]);
    p += n4;
  }
}
#undef V4T_M
#undef V4T_M4
#undef V4T_IX
#undef V4T_SRC
#undef V4T_OK
#undef V4T_IN

/* The input gradient of 2x2 -> 2x2 planes (3x3, stride 1, padding 1, one channel per group):
 * dx plane p from dy plane p (4 floats each, adjacent) with the kernel of channel p % c, planes
 * p0..p1: four at a time where they are four adjacent channels of one image (c0 % 4 == 0), else
 * one by one. The FMAs of the stride-1 path it replaces (cn_dw_s1_plane_avx512 on dy with the
 * flipped kernel: two chains, taps alternating, zero-masked tap values), in its order. */
A512 void cn_dw_dgrad_2x2_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx) {
  for (long p = p0; p < p1;) {
    const long ch = p % c;
    const int four = ch % 4 == 0 && ch + 4 <= c && p + 4 <= p1;
    const __mmask16 lanes = four ? 0xFFFF : 0x000F;
    __m512 wq[9];
    if (four)
      v2_weights(w + ch * 9, wq);
    else
      for (int q = 0; q < 9; q++) wq[q] = _mm512_set1_ps(w[ch * 9 + q]);
    const __m512 g = _mm512_maskz_loadu_ps(lanes, dy + p * 4);
    __m512 a = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
    /* flipped tap f = 8 - q (weight q) on chain f % 2, zeros outside the plane */
#define D2(f, acc) acc = _mm512_fmadd_ps(wq[8 - (f)], _mm512_maskz_permute_ps(V2_M(f), g, V2_IMM(f)), acc)
    D2(0, a); D2(1, a2); D2(2, a); D2(3, a2); D2(4, a); D2(5, a2); D2(6, a); D2(7, a2); D2(8, a);
#undef D2
    _mm512_mask_storeu_ps(dx + p * 4, lanes, _mm512_add_ps(a, a2));
    p += four ? 4 : 1;
  }
}

/* the double sum of one plane's four lanes of v (plane j), as hsum512 adds a vector whose other
 * lanes are zero: ((l0 + l2) + (l1 + l3)) after adding zeros */
static A512 inline double v2_plane_sum(__m512 v, int j) {
  __m128 l;
  switch (j) {
  case 0: l = _mm512_extractf32x4_ps(v, 0); break;
  case 1: l = _mm512_extractf32x4_ps(v, 1); break;
  case 2: l = _mm512_extractf32x4_ps(v, 2); break;
  default: l = _mm512_extractf32x4_ps(v, 3); break;
  }
  const __m256d d = _mm256_add_pd(_mm256_cvtps_pd(l), _mm256_setzero_pd());
  const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
  return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}

/* acc[j * 9 + tap] += the double sum of plane j's lanes of a[tap] (v2_plane_sum) */
static A512 inline void v2_add_sums(const __m512 *a, double *acc) {
  for (int j = 0; j < 4; j++)
    for (int q = 0; q < 9; q++) acc[j * 9 + q] += v2_plane_sum(a[q], j);
}

/* acc[j * 9 + tap] += sum over `count` images of dy * x_tap for the four adjacent 2x2 planes
 * j = 0..3 of channels c0..c0+3 (dy and x: the four planes' 16 floats every dy_stride / x_stride),
 * x through the input transform tf (or NULL) as cn_intf_rows would: cn_dw_sp_wgrad_avx512's FMAs
 * and reductions per plane */
A512 void cn_dw_wgrad_2x2_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                                 const cn_intf *tf, long c0, double *acc) {
  __m512 a[9];
  for (int q = 0; q < 9; q++) a[q] = _mm512_setzero_ps();
  __m512 tm = _mm512_setzero_ps(), tk = tm, tb = tm;
  if (tf) {
    tm = v2_per_plane(tf->mean + c0, 1);
    tk = v2_per_plane(tf->scale + c0, 1);
    tb = v2_per_plane(tf->shift + c0, 1);
  }
  for (long i = 0; i < count; i++) {
    if (i + 6 < count) {
      _mm_prefetch((const char *)(x + (i + 6) * x_stride), _MM_HINT_T0);
      _mm_prefetch((const char *)(dy + (i + 6) * dy_stride), _MM_HINT_T0);
    }
    __m512 xv = _mm512_loadu_ps(x + i * x_stride);
    if (tf) xv = cn512_tf(xv, tm, tk, tb, tf->act);
    const __m512 g = _mm512_loadu_ps(dy + i * dy_stride);
#define W2(q) a[q] = _mm512_mask3_fmadd_ps(g, V2_TAP(xv, q), a[q], V2_M(q))
    W2(0); W2(1); W2(2); W2(3); W2(4); W2(5); W2(6); W2(7); W2(8);
#undef W2
  }
  v2_add_sums(a, acc);
}

/* 4x4 planes, 3x3, stride 1, padding 1: tap q = (ky, kx) of output lane o = (oy, ox) reads input
 * lane o + W4_OFF(q) where W4_K(q) has o (inside the plane); the input gradient's gather of tap q
 * reads dy lane o - W4_OFF(q), inside where W4_K(8 - q) has o. Masked loads at these constant
 * offsets give the small-plane kernels' tap values on their lanes without the per-tap index and
 * mask loads and permutes. */
#define W4_K CN_W4_K
#define W4_OFF CN_W4_OFF

/* cn_dw_sp_planes4_avx512 for 4x4 -> 4x4 (P->is4x4): the same FMAs in the same order */
#define F4_TAP(q)                                                                                                      \
  do {                                                                                                                 \
    a0 = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[q]), _mm512_maskz_loadu_ps(W4_K(q), at(in, W4_OFF(q))), a0, W4_K(q)); \
    a1 = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[wk_stride + q]), _mm512_maskz_loadu_ps(W4_K(q), at(in1, W4_OFF(q))), \
                               a1, W4_K(q));                                                                           \
    a2 = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[2 * wk_stride + q]),                                                 \
                               _mm512_maskz_loadu_ps(W4_K(q), at(in2, W4_OFF(q))), a2, W4_K(q));                       \
    a3 = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[3 * wk_stride + q]),                                                 \
                               _mm512_maskz_loadu_ps(W4_K(q), at(in3, W4_OFF(q))), a3, W4_K(q));                       \
  } while (0)
static A512 void fwd_4x4_planes4(const float *in, long in_stride, const float *wk, long wk_stride, const float *bias,
                                 float *out, long out_stride, const cn_dw_pepi *pe) {
  const float *in1 = in + in_stride, *in2 = in + 2 * in_stride, *in3 = in + 3 * in_stride;
  __m512 a0 = _mm512_set1_ps(bias ? bias[0] : 0.0f), a1 = _mm512_set1_ps(bias ? bias[1] : 0.0f);
  __m512 a2 = _mm512_set1_ps(bias ? bias[2] : 0.0f), a3 = _mm512_set1_ps(bias ? bias[3] : 0.0f);
  F4_TAP(0); F4_TAP(1); F4_TAP(2); F4_TAP(3); F4_TAP(4); F4_TAP(5); F4_TAP(6); F4_TAP(7); F4_TAP(8);
  if (pe) {
    a0 = pepi(a0, &pe[0], 0, 0xFFFF);
    a1 = pepi(a1, &pe[1], 0, 0xFFFF);
    a2 = pepi(a2, &pe[2], 0, 0xFFFF);
    a3 = pepi(a3, &pe[3], 0, 0xFFFF);
  }
  _mm512_storeu_ps(out, a0);
  _mm512_storeu_ps(out + out_stride, a1);
  _mm512_storeu_ps(out + 2 * out_stride, a2);
  _mm512_storeu_ps(out + 3 * out_stride, a3);
}
#undef F4_TAP

/* The input gradient of 4x4 -> 4x4 planes (3x3, stride 1, padding 1, one channel per group):
 * dx plane p (16 floats, adjacent) from dy plane p with the kernel of channel p % c, for planes
 * p0..p1; four planes at a time (independent FMA chains), else one. Each plane's FMAs are those
 * of cn_dw_sp_plane_avx512 with the transposed plan, in the same order (bias 0, no accumulation). */
#define D4_TAP(j, q) d##j = _mm512_mask3_fmadd_ps(_mm512_set1_ps(w##j[q]), _mm512_maskz_loadu_ps(W4_K(8 - (q)), at(g##j, -W4_OFF(q))), d##j, W4_K(8 - (q)))
#define D4_TAPS(j) do { D4_TAP(j, 0); D4_TAP(j, 1); D4_TAP(j, 2); D4_TAP(j, 3); D4_TAP(j, 4); D4_TAP(j, 5); D4_TAP(j, 6); D4_TAP(j, 7); D4_TAP(j, 8); } while (0)
A512 void cn_dw_dgrad_4x4_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx) {
  long p = p0;
  for (; p + 4 <= p1; p += 4) {
    const float *g0 = dy + p * 16, *g1 = g0 + 16, *g2 = g0 + 32, *g3 = g0 + 48;
    const float *w0 = w + (p % c) * 9, *w1 = w + ((p + 1) % c) * 9, *w2 = w + ((p + 2) % c) * 9,
                *w3 = w + ((p + 3) % c) * 9;
    __m512 d0 = _mm512_setzero_ps(), d1 = d0, d2 = d0, d3 = d0;
    D4_TAPS(0); /* (four independent chains: the compiler interleaves them) */
    D4_TAPS(1);
    D4_TAPS(2);
    D4_TAPS(3);
    _mm512_storeu_ps(dx + p * 16, d0);
    _mm512_storeu_ps(dx + p * 16 + 16, d1);
    _mm512_storeu_ps(dx + p * 16 + 32, d2);
    _mm512_storeu_ps(dx + p * 16 + 48, d3);
  }
  for (; p < p1; p++) {
    const float *g0 = dy + p * 16, *w0 = w + (p % c) * 9;
    __m512 d0 = _mm512_setzero_ps();
    D4_TAPS(0);
    _mm512_storeu_ps(dx + p * 16, d0);
  }
}
#undef D4_TAPS
#undef D4_TAP

/* Four planes at once (planes of at most 16 values in and out: one vector each), so that four
 * independent accumulator chains hide the FMA latency that bounds a single small plane. Plane q
 * reads in + q * in_stride with the weights wk + q * wk_stride; each plane's arithmetic is that of
 * cn_dw_sp_plane_avx512. */
A512 void cn_dw_sp_planes4_avx512(const float *in, long in_stride, const float *wk, long wk_stride, const float *bias,
                                  float *out, long out_stride, const cn_dw_sp_plan *P, const cn_dw_pepi *pe) {
  if (P->is4x4) {
    fwd_4x4_planes4(in, in_stride, wk, wk_stride, bias, out, out_stride, pe);
    return;
  }
  if (P->is2x2 && in_stride == 4 && out_stride == 4 && wk_stride == 9) {
    fwd_2x2_planes4(in, wk, bias, out, pe);
    return;
  }
  if (P->is4s2 && !P->transposed && in_stride == 16 && out_stride == 4 && wk_stride == 9) {
    fwd_4x4s2_planes4(in, wk, bias, out, pe);
    return;
  }
  const __mmask16 mi = sp_tail(P->in_size), mo = sp_tail(P->out_size);
  const __m512 r0 = _mm512_maskz_loadu_ps(mi, in), r1 = _mm512_maskz_loadu_ps(mi, in + in_stride);
  const __m512 r2 = _mm512_maskz_loadu_ps(mi, in + 2 * in_stride), r3 = _mm512_maskz_loadu_ps(mi, in + 3 * in_stride);
  const __m512 z = _mm512_setzero_ps();
  __m512 a0 = _mm512_set1_ps(bias ? bias[0] : 0.0f), a1 = _mm512_set1_ps(bias ? bias[1] : 0.0f);
  __m512 a2 = _mm512_set1_ps(bias ? bias[2] : 0.0f), a3 = _mm512_set1_ps(bias ? bias[3] : 0.0f);
  for (long q = 0; q < P->ntaps; q++) {
    const __mmask16 m = (__mmask16)P->mask[q];
    if (!m) continue;
    const __m512i ix = _mm512_loadu_si512((const void *)(P->idx + (size_t)q * 16));
    a0 = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[q]), _mm512_permutex2var_ps(r0, ix, z), a0, m);
    a1 = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[wk_stride + q]), _mm512_permutex2var_ps(r1, ix, z), a1, m);
    a2 = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[2 * wk_stride + q]), _mm512_permutex2var_ps(r2, ix, z), a2, m);
    a3 = _mm512_mask3_fmadd_ps(_mm512_set1_ps(wk[3 * wk_stride + q]), _mm512_permutex2var_ps(r3, ix, z), a3, m);
  }
  if (pe) {
    a0 = pepi(a0, &pe[0], 0, mo);
    a1 = pepi(a1, &pe[1], 0, mo);
    a2 = pepi(a2, &pe[2], 0, mo);
    a3 = pepi(a3, &pe[3], 0, mo);
  }
  _mm512_mask_storeu_ps(out, mo, a0);
  _mm512_mask_storeu_ps(out + out_stride, mo, a1);
  _mm512_mask_storeu_ps(out + 2 * out_stride, mo, a2);
  _mm512_mask_storeu_ps(out + 3 * out_stride, mo, a3);
}

/* 4x4 planes, 3x3, stride 1, padding 1 (one vector per plane): a[tap] += dy * x_tap over `count`
 * plane pairs with the taps as masked loads at constant offsets (the lanes and the order of the
 * permute kernel below, without its per-tap index and mask loads) */
#define W4_TAP(q) a[q] = _mm512_mask3_fmadd_ps(g, _mm512_maskz_loadu_ps(W4_K(q), at(xp, W4_OFF(q))), a[q], W4_K(q))
static A512 void wgrad_4x4(const float *dy, long dy_stride, const float *x, long x_stride, long count, double *acc) {
  __m512 a[9];
  for (int q = 0; q < 9; q++) a[q] = _mm512_setzero_ps();
  for (long i = 0; i < count; i++) {
    if (i + 6 < count) {
      _mm_prefetch((const char *)(x + (i + 6) * x_stride), _MM_HINT_T0);
      _mm_prefetch((const char *)(dy + (i + 6) * dy_stride), _MM_HINT_T0);
    }
    const float *xp = x + i * x_stride;
    const __m512 g = _mm512_loadu_ps(dy + i * dy_stride);
    W4_TAP(0); W4_TAP(1); W4_TAP(2); W4_TAP(3); W4_TAP(4); W4_TAP(5); W4_TAP(6); W4_TAP(7); W4_TAP(8);
  }
  for (int q = 0; q < 9; q++) acc[q] += hsum512(a[q]);
}
#undef W4_TAP
#undef W4_OFF
#undef W4_K

/* acc[tap] += sum over `count` plane pairs (dy planes every dy_stride floats, x planes every
 * x_stride) of dy * x_tap, with the forward plan (dy = its output, x = its input) */
A512 void cn_dw_sp_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                                const cn_dw_sp_plan *P, double *acc) {
  const long nt = P->ntaps;
  if (P->is4x4) {
    wgrad_4x4(dy, dy_stride, x, x_stride, count, acc);
    return;
  }
  if (P->is8s2 && !P->transposed) {
    wgrad_8x8s2(dy, dy_stride, x, x_stride, count, acc);
    return;
  }
  for (long q0 = 0; q0 < nt; q0 += 9) {
    const long q1 = q0 + 9 < nt ? q0 + 9 : nt;
    __m512 a[9];
    for (int j = 0; j < 9; j++) a[j] = _mm512_setzero_ps();
    for (long i = 0; i < count; i++) {
      /* the planes are a page or more apart (one channel of consecutive images): fetch ahead */
      if (i + 6 < count) {
        for (long o = 0; o < P->in_size; o += 16) _mm_prefetch((const char *)(x + (i + 6) * x_stride + o), _MM_HINT_T0);
        for (long o = 0; o < P->out_size; o += 16) _mm_prefetch((const char *)(dy + (i + 6) * dy_stride + o), _MM_HINT_T0);
      }
      __m512 r[4];
      sp_load(x + i * x_stride, P->in_size, r);
      const float *gp = dy + i * dy_stride;
      for (long b = 0; b < P->nout; b++) {
        const __m512 g = _mm512_maskz_loadu_ps(sp_tail(P->out_size - 16 * b), gp + 16 * b);
        for (long q = q0; q < q1; q++) {
          const size_t e = (size_t)b * (size_t)nt + (size_t)q;
          if (!P->mask[e]) continue;
          a[q - q0] = _mm512_mask3_fmadd_ps(g, sp_tap(P, e, r), a[q - q0], P->mask[e]);
        }
      }
    }
    for (long q = q0; q < q1; q++) acc[q] += hsum512(a[q - q0]);
  }
}

/* ---- input transform (training fusion): act(fma(x - m, k, bt)) per row (cn512_tf) ------------ */
A512 void cn_intf_rows_avx512(const cn_intf *tf, const float *src, long src_stride, float *dst, long dst_stride,
                              long rows, long len, long ch0, long ch_step) {
  const int act = tf->act;
  for (long r = 0; r < rows; r++) {
    const long ch = ch0 + r * ch_step;
    const __m512 m = _mm512_set1_ps(tf->mean[ch]), k = _mm512_set1_ps(tf->scale[ch]), bt = _mm512_set1_ps(tf->shift[ch]);
    const float *s = src + r * src_stride;
    float *d = dst + r * dst_stride;
    long i = 0;
    for (; i + 16 <= len; i += 16) _mm512_storeu_ps(d + i, cn512_tf(_mm512_loadu_ps(s + i), m, k, bt, act));
    if (i < len) {
      const __mmask16 t = (__mmask16)((1u << (len - i)) - 1u);
      _mm512_mask_storeu_ps(d + i, t, cn512_tf(_mm512_maskz_loadu_ps(t, s + i), m, k, bt, act));
    }
  }
}

#else /* not x86-64: never selected */
void cn_intf_rows_avx512(const cn_intf *tf, const float *src, long src_stride, float *dst, long dst_stride,
                         long rows, long len, long ch0, long ch_step) {
  (void)tf, (void)src, (void)src_stride, (void)dst, (void)dst_stride, (void)rows, (void)len, (void)ch0, (void)ch_step;
  abort();
}
int cn_dw_s2_applicable(long H, long W, long kh, long kw, long sh, long sw, long ph, long pw) {
  (void)H, (void)W, (void)kh, (void)kw, (void)sh, (void)sw, (void)ph, (void)pw;
  return 0;
}
void cn_dw_s2_plane_avx512(const float *x, const float *wk, float bias, float *y, long H, long W,
                           const cn_dw_pepi *pe) {
  (void)x, (void)wk, (void)bias, (void)y, (void)H, (void)W, (void)pe;
}
void cn_dw_s2_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count, long H, long W,
                           double *acc) {
  (void)dy, (void)dy_stride, (void)x, (void)x_stride, (void)count, (void)H, (void)W, (void)acc;
}
void cn_dw_s2_dgrad_avx512(const float *dy, const float *wk, float *dx, long H, long W, int accumulate) {
  (void)dy, (void)wk, (void)dx, (void)H, (void)W, (void)accumulate;
}
int cn_dw_sp_applicable(long in_hw, long out_hw, long ntaps) {
  (void)in_hw, (void)out_hw, (void)ntaps;
  return 0;
}
int cn_dw_sp_prepare(cn_dw_sp_plan *P, long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh,
                     long ow, int transposed) {
  (void)P, (void)H, (void)W, (void)kh, (void)kw, (void)sh, (void)sw, (void)ph, (void)pw, (void)oh, (void)ow;
  (void)transposed;
  return 0;
}
void cn_dw_sp_release(cn_dw_sp_plan *P) { (void)P; }
void cn_dw_sp_planes4_avx512(const float *in, long in_stride, const float *wk, long wk_stride, const float *bias,
                             float *out, long out_stride, const cn_dw_sp_plan *P, const cn_dw_pepi *pe) {
  (void)in, (void)in_stride, (void)wk, (void)wk_stride, (void)bias, (void)out, (void)out_stride, (void)P, (void)pe;
}
void cn_dw_dgrad_4x4_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx) {
  (void)dy, (void)w, (void)c, (void)p0, (void)p1, (void)dx;
}
void cn_dw_dgrad_2x2_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx) {
  (void)dy, (void)w, (void)c, (void)p0, (void)p1, (void)dx;
}
void cn_dw_dgrad_8x8s2_avx512(const float *dyp, const float *wk, float *dx) { (void)dyp, (void)wk, (void)dx; }
void cn_dw_dgrad_4x4s2_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx) {
  (void)dy, (void)w, (void)c, (void)p0, (void)p1, (void)dx;
}
void cn_dw_wgrad_4x4s2_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                              const cn_intf *tf, long c0, double *acc) {
  (void)dy, (void)dy_stride, (void)x, (void)x_stride, (void)count, (void)tf, (void)c0, (void)acc;
}
void cn_dw_wgrad_2x2_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                            const cn_intf *tf, long c0, double *acc) {
  (void)dy, (void)dy_stride, (void)x, (void)x_stride, (void)count, (void)tf, (void)c0, (void)acc;
}
void cn_dw_sp_plane_avx512(const float *in, const float *wk, float bias, float *out, const cn_dw_sp_plan *P,
                           int accumulate, const cn_dw_pepi *pe) {
  (void)in, (void)wk, (void)bias, (void)out, (void)P, (void)accumulate, (void)pe;
}
void cn_dw_sp_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                           const cn_dw_sp_plan *P, double *acc) {
  (void)dy, (void)dy_stride, (void)x, (void)x_stride, (void)count, (void)P, (void)acc;
}
int cn_dw_s1_applicable(long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh, long ow) {
  (void)H, (void)W, (void)kh, (void)kw, (void)sh, (void)sw, (void)ph, (void)pw, (void)oh, (void)ow;
  return 0;
}
int cn_dw_s1_prepare(cn_dw_plan *P, long H, long W, long kh, long kw, long ph, long pw, long oh, long ow) {
  (void)P, (void)H, (void)W, (void)kh, (void)kw, (void)ph, (void)pw, (void)oh, (void)ow;
  return 0;
}
void cn_dw_s1_release(cn_dw_plan *P) { (void)P; }
int cn_dw_w16_applicable(long W, long kh, long kw, long sh, long sw, long pw, long ow) {
  (void)W, (void)kh, (void)kw, (void)sh, (void)sw, (void)pw, (void)ow;
  return 0;
}
void cn_dw_w16_plane_avx512(const float *x, const float *wk, float bias, float *y, long H, long W, long ph, long oh,
                            int accumulate, const cn_dw_pepi *pe) {
  (void)x, (void)wk, (void)bias, (void)y, (void)H, (void)W, (void)ph, (void)oh, (void)accumulate, (void)pe;
}
void cn_dw_w16_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count, long H, long W,
                            long ph, long oh, double *acc) {
  (void)dy, (void)dy_stride, (void)x, (void)x_stride, (void)count, (void)H, (void)W, (void)ph, (void)oh, (void)acc;
}
void cn_dw_s1_plane_avx512(const float *x, const float *wk, float bias, float *y, const cn_dw_plan *P, int accumulate,
                           const cn_dw_pepi *pe) {
  (void)x, (void)wk, (void)bias, (void)y, (void)P, (void)accumulate, (void)pe;
}
void cn_dw_s1_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                           const cn_dw_plan *P, double *acc) {
  (void)dy, (void)dy_stride, (void)x, (void)x_stride, (void)count, (void)P, (void)acc;
}
#endif
