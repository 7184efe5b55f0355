/* Direct ("implicit GEMM") stride-1 convolution with "same" padding on AVX-512, NCHW, no im2col.
 *
 *   y: (N, O, H, W) = conv(x: (N, C, H, W), w: (O, C, kh, kw)), stride 1, 2*ph == kh-1, 2*pw == kw-1
 *
 * Because the output plane has the input's shape, output position p and tap t = (ky, kx) read
 * input position p + delta[t] with delta[t] = (ky-ph)*W + (kx-pw): sixteen consecutive output
 * positions read sixteen consecutive input floats, zero-masked where the tap leaves the plane
 * (top/bottom rows, left/right columns; the mask also drops lanes that would wrap into the
 * neighbouring row). So the GEMM operand B (the im2col matrix) is never built: the micro-kernel
 * loads it straight from x with one masked load per vector, which is what im2col packing cost
 * (a fifth of the convolution time for ResNet18's 3x3 layers).
 *
 * Register tile: 8 output channels x 2 vectors of 16 positions (16 zmm accumulators, as the
 * packed GEMM's 8x32 kernel). The two vectors are consecutive 16-position runs of the flattened
 * (image, position) axis; P = H*W must be a multiple of 16 so that a run never crosses images
 * (4x4 planes: one image per vector). Weights are packed once per call as [O/8][C][taps][8].
 * Each C element is one chain of fused multiply-adds over (c, tap) in order: the result does not
 * depend on the number of threads. Used for the forward pass (with the inference epilogue and
 * the bias) and, through the flipped kernel, for the stride-1 input gradient (conv.c).
 */
#include "cn.h"

#include <stdlib.h>
#include <string.h>

#if defined(CN_X86)
#include <immintrin.h>
#define DC_A512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))

#define DC_MAX_TAPS 49
#define DC_GROUP 4 /* tiles per task: their inputs stay in L1/L2 while all output channels run */

typedef struct {
  const float *x, *wp, *bias;
  float *y;
  const cn_epilogue *epi; /* epi->row0 is 0 here (groups == 1) */
  const uint16_t *masks;  /* [P/16][taps] */
  long delta[DC_MAX_TAPS];
  long C, O, P, taps, nvec, ntiles;
  long halo; /* positions read beyond a run: ph*W + pw */
  long cb; /* channels per block (the inputs of a block stay in L1) */
} dc_job;

/* One 8 x 32 tile: acc[r][h] = sum over (c, t) of a[c][t][r] * x_h[c*P + delta[t] + lane]. */
DC_A512 static inline __attribute__((always_inline)) void dc_tile_body(
    const dc_job *J, const float *CN_RESTRICT a, const float *x0, const float *x1, const uint16_t *m0,
    const uint16_t *m1, float *y0, float *y1, long o0, int two, long c0, long c1, int first, int last,
    const long taps) {
  const long P = J->P;
  const long rows = J->O - o0 < 8 ? J->O - o0 : 8;
  /* a later channel block continues the chains from the partial sums stored in y */
#define DC_LD(r, yb) (first || (r) >= rows ? _mm512_setzero_ps() : _mm512_loadu_ps((yb) + (r)*P))
  __m512 c00 = DC_LD(0, y0), c01 = two ? DC_LD(0, y1) : _mm512_setzero_ps();
  __m512 c10 = DC_LD(1, y0), c11 = two ? DC_LD(1, y1) : _mm512_setzero_ps();
  __m512 c20 = DC_LD(2, y0), c21 = two ? DC_LD(2, y1) : _mm512_setzero_ps();
  __m512 c30 = DC_LD(3, y0), c31 = two ? DC_LD(3, y1) : _mm512_setzero_ps();
  __m512 c40 = DC_LD(4, y0), c41 = two ? DC_LD(4, y1) : _mm512_setzero_ps();
  __m512 c50 = DC_LD(5, y0), c51 = two ? DC_LD(5, y1) : _mm512_setzero_ps();
  __m512 c60 = DC_LD(6, y0), c61 = two ? DC_LD(6, y1) : _mm512_setzero_ps();
  __m512 c70 = DC_LD(7, y0), c71 = two ? DC_LD(7, y1) : _mm512_setzero_ps();
#undef DC_LD
  const long *delta = J->delta;
  a += c0 * taps * 8;
  for (long c = c0; c < c1; c++) {
    const float *xc0 = x0 + c * P, *xc1 = x1 + c * P;
    for (long t = 0; t < taps; t++) {
      const __m512 b0 = _mm512_maskz_loadu_ps((__mmask16)m0[t], xc0 + delta[t]);
      const __m512 b1 = _mm512_maskz_loadu_ps((__mmask16)m1[t], xc1 + delta[t]);
      __m512 av;
      av = _mm512_set1_ps(a[0]); c00 = _mm512_fmadd_ps(av, b0, c00); c01 = _mm512_fmadd_ps(av, b1, c01);
      av = _mm512_set1_ps(a[1]); c10 = _mm512_fmadd_ps(av, b0, c10); c11 = _mm512_fmadd_ps(av, b1, c11);
      av = _mm512_set1_ps(a[2]); c20 = _mm512_fmadd_ps(av, b0, c20); c21 = _mm512_fmadd_ps(av, b1, c21);
      av = _mm512_set1_ps(a[3]); c30 = _mm512_fmadd_ps(av, b0, c30); c31 = _mm512_fmadd_ps(av, b1, c31);
      av = _mm512_set1_ps(a[4]); c40 = _mm512_fmadd_ps(av, b0, c40); c41 = _mm512_fmadd_ps(av, b1, c41);
      av = _mm512_set1_ps(a[5]); c50 = _mm512_fmadd_ps(av, b0, c50); c51 = _mm512_fmadd_ps(av, b1, c51);
      av = _mm512_set1_ps(a[6]); c60 = _mm512_fmadd_ps(av, b0, c60); c61 = _mm512_fmadd_ps(av, b1, c61);
      av = _mm512_set1_ps(a[7]); c70 = _mm512_fmadd_ps(av, b0, c70); c71 = _mm512_fmadd_ps(av, b1, c71);
      a += 8;
    }
  }
  /* store rows o0 + r < O: v (+ bias) (epilogue: BN, residual, activation), as the GEMM's */
  const cn_epilogue *e = J->epi;
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
#define DC_ST(r, v, yb)                                                                                                \
  do {                                                                                                                 \
    if ((r) < rows) {                                                                                                  \
      __m512 t_ = v;                                                                                                   \
      float *dst_ = (yb) + (r)*P;                                                                                      \
      if (!last) {                                                                                                     \
        _mm512_storeu_ps(dst_, t_);                                                                                    \
        break;                                                                                                         \
      }                                                                                                                \
      if (J->bias) t_ = _mm512_add_ps(t_, _mm512_set1_ps(J->bias[o0 + (r)]));                                         \
      if (e) {                                                                                                         \
        t_ = _mm512_fmadd_ps(_mm512_sub_ps(t_, _mm512_set1_ps(e->mean[o0 + (r)])),                                     \
                             _mm512_set1_ps(e->scale[o0 + (r)]), _mm512_set1_ps(e->shift[o0 + (r)]));                \
        if (e->res_base) t_ = _mm512_add_ps(_mm512_loadu_ps(e->res_base + (dst_ - e->out_base)), t_);                  \
        if (e->act) {                                                                                                  \
          const __mmask16 k_ = _mm512_cmp_ps_mask(t_, zero, _CMP_GT_OQ) | _mm512_cmp_ps_mask(t_, t_, _CMP_UNORD_Q);    \
          t_ = _mm512_maskz_mov_ps(k_, e->act == 2 ? _mm512_min_ps(six, t_) : t_);                                     \
        }                                                                                                              \
      }                                                                                                                \
      _mm512_storeu_ps(dst_, t_);                                                                                      \
    }                                                                                                                  \
  } while (0)
  DC_ST(0, c00, y0); DC_ST(1, c10, y0); DC_ST(2, c20, y0); DC_ST(3, c30, y0);
  DC_ST(4, c40, y0); DC_ST(5, c50, y0); DC_ST(6, c60, y0); DC_ST(7, c70, y0);
  if (two) {
    DC_ST(0, c01, y1); DC_ST(1, c11, y1); DC_ST(2, c21, y1); DC_ST(3, c31, y1);
    DC_ST(4, c41, y1); DC_ST(5, c51, y1); DC_ST(6, c61, y1); DC_ST(7, c71, y1);
  }
#undef DC_ST
}

DC_A512 __attribute__((noinline)) static void dc_tile_9(const dc_job *J, const float *a, const float *x0,
                                                        const float *x1, const uint16_t *m0, const uint16_t *m1,
                                                        float *y0, float *y1, long o0, int two, long c0, long c1,
    int first, int last) {
  dc_tile_body(J, a, x0, x1, m0, m1, y0, y1, o0, two, c0, c1, first, last, 9);
}
DC_A512 __attribute__((noinline)) static void dc_tile_any(const dc_job *J, const float *a, const float *x0,
                                                          const float *x1, const uint16_t *m0, const uint16_t *m1,
                                                          float *y0, float *y1, long o0, int two, long c0, long c1,
    int first, int last) {
  dc_tile_body(J, a, x0, x1, m0, m1, y0, y1, o0, two, c0, c1, first, last, J->taps);
}

/* Task: DC_GROUP consecutive tiles (pairs of 16-position vectors), all output-channel blocks. */
static void dc_task(void *ctx, long task, int tid) {
  (void)tid;
  const dc_job *J = (const dc_job *)ctx;
  const long t0 = task * DC_GROUP, t1 = t0 + DC_GROUP < J->ntiles ? t0 + DC_GROUP : J->ntiles;
  const long vpp = J->P / 16; /* vectors per plane */
  const long K = J->C * J->taps;
  void (*tile)(const dc_job *, const float *, const float *, const float *, const uint16_t *, const uint16_t *,
               float *, float *, long, int, long, long, int, int) = J->taps == 9 ? dc_tile_9 : dc_tile_any;
  /* Large planes: a group reads a band of rows in every channel, each band in a different page,
   * too many streams for the hardware prefetcher; fetch the next channel block's bands (or the
   * first block of the group the thread is likely to take next) while this block computes. */
  const int pf = J->P >= 128 && J->P % (32 * DC_GROUP) == 0;
  const long halo = J->halo;
  for (long c0 = 0; c0 < J->C; c0 += J->cb) {
   const long c1 = c0 + J->cb < J->C ? c0 + J->cb : J->C;
   if (pf) {
     long pt = t0, pc0 = c1, pc1 = c1 + J->cb;
     if (c1 >= J->C) pt = t0 + (long)cn_num_threads() * DC_GROUP, pc0 = 0, pc1 = J->cb;
     if (pt < J->ntiles) {
       if (pc1 > J->C) pc1 = J->C;
       const long v = 2 * pt, n = v / vpp, p0 = (v % vpp) * 16;
       long lo = p0 - halo, hi = p0 + 32 * DC_GROUP + halo;
       if (lo < 0) lo = 0;
       if (hi > J->P) hi = J->P;
       for (long c = pc0; c < pc1; c++) {
         const char *base = (const char *)(J->x + (n * J->C + c) * J->P);
         for (long b = lo * 4; b < hi * 4; b += 64) _mm_prefetch(base + b, _MM_HINT_T0);
       }
     }
   }
   for (long o0 = 0; o0 < J->O; o0 += 8) {
    const float *a = J->wp + (o0 / 8) * K * 8;
    for (long t = t0; t < t1; t++) {
      const long v0 = 2 * t, v1 = v0 + 1;
      const int two = v1 < J->nvec;
      const long n0 = v0 / vpp, q0 = v0 % vpp;
      const long n1 = two ? v1 / vpp : n0, q1 = two ? v1 % vpp : q0;
      const float *x0 = J->x + n0 * J->C * J->P + q0 * 16, *x1 = J->x + n1 * J->C * J->P + q1 * 16;
      float *y0 = J->y + (n0 * J->O + o0) * J->P + q0 * 16, *y1 = J->y + (n1 * J->O + o0) * J->P + q1 * 16;
      tile(J, a, x0, x1, J->masks + q0 * J->taps, J->masks + q1 * J->taps, y0, y1, o0, two, c0, c1, c0 == 0,
           c1 == J->C);
    }
   }
  }
}

typedef struct {
  const float *w;
  float *wp;
  long O, K;
} dc_pack_job;

/* wp[ob][k][r] = w[ob*8 + r][k] (rows past O are zero) */
static void dc_pack_task(void *ctx, long ob, int tid) {
  (void)tid;
  const dc_pack_job *J = (const dc_pack_job *)ctx;
  float *d = J->wp + ob * J->K * 8;
  for (long k = 0; k < J->K; k++)
    for (long r = 0; r < 8; r++) {
      const long o = ob * 8 + r;
      d[k * 8 + r] = o < J->O ? J->w[o * J->K + k] : 0.0f;
    }
}

int cn_conv_direct_applies(const cn_conv_geom *g) {
  static int disabled = -1;
  if (disabled < 0) {
    const char *e = getenv("CONVNETS_DIRECT_CONV");
    disabled = e && !strcmp(e, "0");
  }
  if (disabled || cn_isa_id != 2) return 0;
  const long P = g->oh * g->ow;
  /* (1x1 convolutions stay on the packed GEMM: measured faster for MobileNet's pointwise layers,
   * whose few input channels leave too little work per loaded vector) */
  return g->groups == 1 && g->c > 1 && g->sh == 1 && g->sw == 1 && 2 * g->ph == g->kh - 1 && 2 * g->pw == g->kw - 1 &&
         g->oh == g->h && g->ow == g->w && P % 16 == 0 && g->kh * g->kw > 1 && g->kh * g->kw <= DC_MAX_TAPS;
}

void cn_conv_direct(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g,
                    const cn_epilogue *epi) {
  dc_job J;
  memset(&J, 0, sizeof(J));
  J.C = g->c;
  J.O = g->o;
  J.P = g->oh * g->ow;
  J.taps = g->kh * g->kw;
  J.nvec = g->n * J.P / 16;
  J.ntiles = (J.nvec + 1) / 2;
  {
    const char *e = getenv("CONVNETS_DIRECT_CB");
    /* large planes: channel c's rows alias channel c+1's in L1 sets (4 KiB apart), so run
     * blocks of channels over all output-channel blocks; small planes: no blocking */
    J.cb = e && atol(e) > 0 ? atol(e) : J.P >= 1024 ? 32 : J.C;
  }
  const long K = J.C * J.taps, ob = (J.O + 7) / 8, vpp = J.P / 16;
  /* packed weights, then the masks (uint16) in the same process-wide buffer */
  const size_t wfloats = (size_t)(ob * K * 8);
  const size_t mfloats = ((size_t)(vpp * J.taps) * sizeof(uint16_t) + sizeof(float) - 1) / sizeof(float);
  float *buf = cn_gws(CN_GWS_B, wfloats + mfloats);
  if (!buf) abort();
  dc_pack_job PJ = {w, buf, J.O, K};
  cn_parallel(ob, dc_pack_task, &PJ);
  uint16_t *masks = (uint16_t *)(buf + wfloats);
  for (long q = 0; q < vpp; q++)
    for (long ky = 0; ky < g->kh; ky++)
      for (long kx = 0; kx < g->kw; kx++) {
        unsigned m = 0;
        for (long l = 0; l < 16; l++) {
          const long p = q * 16 + l, oy = p / g->ow, ox = p % g->ow;
          const long iy = oy + ky - g->ph, ix = ox + kx - g->pw;
          if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w) m |= 1u << l;
        }
        masks[q * J.taps + ky * g->kw + kx] = (uint16_t)m;
      }
  for (long ky = 0; ky < g->kh; ky++)
    for (long kx = 0; kx < g->kw; kx++) J.delta[ky * g->kw + kx] = (ky - g->ph) * g->w + (kx - g->pw);
  J.halo = g->ph * g->w + g->pw;
  J.x = x;
  J.wp = buf;
  J.bias = b;
  J.y = y;
  J.epi = epi;
  J.masks = masks;
  cn_parallel((J.ntiles + DC_GROUP - 1) / DC_GROUP, dc_task, &J);
}

#else
int cn_conv_direct_applies(const cn_conv_geom *g) {
  (void)g;
  return 0;
}
void cn_conv_direct(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g,
                    const cn_epilogue *epi) {
  (void)x, (void)w, (void)b, (void)y, (void)g, (void)epi;
  abort();
}
#endif
