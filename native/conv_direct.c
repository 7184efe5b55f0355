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
#include "cn_avx512.h"
#define DC_A512 CN_A512

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
  long osplit; /* output-channel ranges per tile group (small batches: enough tasks for the threads) */
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
        t_ = cn512_bn(t_, _mm512_set1_ps(e->mean[o0 + (r)]), _mm512_set1_ps(e->scale[o0 + (r)]),                     \
                      _mm512_set1_ps(e->shift[o0 + (r)]));                                                            \
        if (e->res_base) t_ = _mm512_add_ps(_mm512_loadu_ps(e->res_base + (dst_ - e->out_base)), t_);                  \
        t_ = cn512_act(t_, e->act);                                                                                    \
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
  const long grp = task / J->osplit, os = task % J->osplit;
  const long t0 = grp * DC_GROUP, t1 = t0 + DC_GROUP < J->ntiles ? t0 + DC_GROUP : J->ntiles;
  const long nob = (J->O + 7) / 8, obs = (nob + J->osplit - 1) / J->osplit;
  const long oa = os * obs * 8, oz = (os + 1) * obs * 8 < J->O ? (os + 1) * obs * 8 : J->O;
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
   for (long o0 = oa; o0 < oz; o0 += 8) {
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

/* masks[q][t]: lanes of the 16 positions from q*16 whose tap t = (ky, kx) lies inside the plane;
 * delta[t]: the tap's offset in the flattened plane */
static void dc_fill_masks(uint16_t *masks, long *delta, const cn_conv_geom *g) {
  const long vpp = g->oh * g->ow / 16, taps = g->kh * g->kw;
  for (long q = 0; q < vpp; q++)
    for (long ky = 0; ky < g->kh; ky++)
      for (long kx = 0; kx < g->kw; kx++) {
        unsigned m = 0;
        for (long l = 0; l < 16; l++) {
          const long p = q * 16 + l, oy = p / g->ow, ox = p % g->ow;
          const long iy = oy + ky - g->ph, ix = ox + kx - g->pw;
          if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w) m |= 1u << l;
        }
        masks[q * taps + ky * g->kw + kx] = (uint16_t)m;
      }
  for (long ky = 0; ky < g->kh; ky++)
    for (long kx = 0; kx < g->kw; kx++) delta[ky * g->kw + kx] = (ky - g->ph) * g->w + (kx - g->pw);
}

/* ---- weight gradient ---------------------------------------------------------------------------
 *
 *   dw[o][c][ky][kx] = sum over (n, p) of dy[n][o][p] * x[n][c][p + delta(ky, kx)]   (masked)
 *
 * Positions are the vector lanes: 8 output channels x the 3 taps of one kernel row (24
 * accumulators; kernels 3 wide) collect 16 partial sums each over a chunk of images, loading 8 dy
 * vectors and kw shifted, masked x vectors per 16 positions. At the end of a chunk the lanes are
 * summed and added to dw, chunk after chunk in image order: every dw element has one fixed
 * order of additions, whatever the number of threads (tasks own disjoint (o-block, channel)
 * ranges of dw). */

typedef struct {
  const float *dy, *x;
  float *dw;
  const uint16_t *masks; /* [P/16][taps] */
  long delta[DC_MAX_TAPS];
  long N, C, O, P, kh, kw, taps, cimg, cper, cblocks;
  long halo; /* floats read before/after a plane: ph*W + pw (masked) */
} dcw_job;

/* acc: the tile's 24 lane accumulators between chunks (first chunk: start from zero; last
 * chunk: sum the lanes into dw instead of storing them back) */
DC_A512 __attribute__((noinline)) static void dcw_row3(const dcw_job *J, const float *ds, long S, const float *xs,
                                                       long nimg, long o0, long c, long ky, float *acc, int first,
                                                       int last) {
#define DCW_L(r, k) (first ? _mm512_setzero_ps() : _mm512_load_ps(acc + ((r)*3 + (k)) * 16))
  __m512 a00 = DCW_L(0, 0), a01 = DCW_L(0, 1), a02 = DCW_L(0, 2), a10 = DCW_L(1, 0), a11 = DCW_L(1, 1), a12 = DCW_L(1, 2);
  __m512 a20 = DCW_L(2, 0), a21 = DCW_L(2, 1), a22 = DCW_L(2, 2), a30 = DCW_L(3, 0), a31 = DCW_L(3, 1), a32 = DCW_L(3, 2);
  __m512 a40 = DCW_L(4, 0), a41 = DCW_L(4, 1), a42 = DCW_L(4, 2), a50 = DCW_L(5, 0), a51 = DCW_L(5, 1), a52 = DCW_L(5, 2);
  __m512 a60 = DCW_L(6, 0), a61 = DCW_L(6, 1), a62 = DCW_L(6, 2), a70 = DCW_L(7, 0), a71 = DCW_L(7, 1), a72 = DCW_L(7, 2);
#undef DCW_L
  const long P = J->P, vpp = P / 16, taps = J->taps;
  const long d0 = J->delta[ky * 3], d1 = J->delta[ky * 3 + 1], d2 = J->delta[ky * 3 + 2];
  const float *g = ds, *xn = xs;
  for (long n = 0; n < nimg; n++) {
    const uint16_t *m = J->masks + ky * 3;
    for (long q = 0; q < vpp; q++, g += 16, xn += 16, m += taps) {
      const __m512 x0 = _mm512_maskz_loadu_ps((__mmask16)m[0], xn + d0);
      const __m512 x1 = _mm512_maskz_loadu_ps((__mmask16)m[1], xn + d1);
      const __m512 x2 = _mm512_maskz_loadu_ps((__mmask16)m[2], xn + d2);
      __m512 gv;
#define DCW_R(r)                                                                                                       \
  gv = _mm512_load_ps(g + (r)*S);                                                                                      \
  __asm__("" : "+v"(gv)); /* one load, kept in a register (not folded into each of the 3 FMAs) */                    \
  a##r##0 = _mm512_fmadd_ps(gv, x0, a##r##0);                                                                          \
  a##r##1 = _mm512_fmadd_ps(gv, x1, a##r##1);                                                                          \
  a##r##2 = _mm512_fmadd_ps(gv, x2, a##r##2)
      DCW_R(0); DCW_R(1); DCW_R(2); DCW_R(3); DCW_R(4); DCW_R(5); DCW_R(6); DCW_R(7);
#undef DCW_R
    }
  }
  if (!last) {
#define DCW_K(r)                                                                                                       \
  _mm512_store_ps(acc + ((r)*3) * 16, a##r##0);                                                                        \
  _mm512_store_ps(acc + ((r)*3 + 1) * 16, a##r##1);                                                                    \
  _mm512_store_ps(acc + ((r)*3 + 2) * 16, a##r##2)
    DCW_K(0); DCW_K(1); DCW_K(2); DCW_K(3); DCW_K(4); DCW_K(5); DCW_K(6); DCW_K(7);
#undef DCW_K
    return;
  }
  float *dw = J->dw + (o0 * J->C + c) * taps + ky * 3;
  const long rs = J->C * taps;
#define DCW_S(r)                                                                                                       \
  dw[(r)*rs] = _mm512_reduce_add_ps(a##r##0);                                                                          \
  dw[(r)*rs + 1] = _mm512_reduce_add_ps(a##r##1);                                                                      \
  dw[(r)*rs + 2] = _mm512_reduce_add_ps(a##r##2)
  DCW_S(0); DCW_S(1); DCW_S(2); DCW_S(3); DCW_S(4); DCW_S(5); DCW_S(6); DCW_S(7);
#undef DCW_S
}

/* The chunk's operands are first copied to contiguous scratch: dy rows and x planes of
 * consecutive images are 4 KiB multiples apart in the tensors, so they would all map to the
 * same few L1/L2 sets and evict each other between the 3 kernel rows and the 8 output rows that
 * reuse them. dy rows get a stride of a cache line past the chunk (no aliasing); the x planes of
 * the chunk's images are concatenated (lanes that would cross into a neighbouring image are
 * masked off). */
#ifndef DCW_OBG
#define DCW_OBG 2 /* output-channel blocks of 8 per task: they share the copy of each x plane */
#endif
#ifndef DCW_CHUNK
#define DCW_CHUNK 4096 /* positions per chunk: the chunk's dy rows (DCW_OBG * 8 of them) stay in L2 */
#endif

static void dcw_task(void *ctx, long task, int tid) {
  const dcw_job *J = (const dcw_job *)ctx;
  const long nob = J->O / 8, og = task / J->cblocks, cb = task % J->cblocks;
  const long ob0 = og * DCW_OBG, ob1 = ob0 + DCW_OBG < nob ? ob0 + DCW_OBG : nob;
  const long c0 = cb * J->cper, c1 = c0 + J->cper < J->C ? c0 + J->cper : J->C;
  const long P = J->P, S = J->cimg * P + 16, halo = J->halo, rows = (ob1 - ob0) * 8;
  /* lane accumulators of every (output block, channel, kernel row) tile: 24 vectors each */
  const long tiles = (ob1 - ob0) * (c1 - c0) * J->kh;
  float *acc = J->N > J->cimg ? cn_ws(tid, CN_WS_TMP, (size_t)(tiles * 24 * 16)) : NULL;
  float *ds = cn_ws(tid, CN_WS_PACKA, (size_t)(rows * S));
  float *xbuf = cn_ws(tid, CN_WS_PACKB, (size_t)(J->cimg * P + 2 * halo));
  if ((J->N > J->cimg && !acc) || !ds || !xbuf) abort();
  float *xs = xbuf + halo;
  for (long n0 = 0; n0 < J->N; n0 += J->cimg) {
    const long n1 = n0 + J->cimg < J->N ? n0 + J->cimg : J->N;
    for (long r = 0; r < rows; r++)
      for (long n = n0; n < n1; n++)
        memcpy(ds + r * S + (n - n0) * P, J->dy + (n * J->O + ob0 * 8 + r) * P, sizeof(float) * (size_t)P);
    for (long c = c0; c < c1; c++) {
      for (long n = n0; n < n1; n++) memcpy(xs + (n - n0) * P, J->x + (n * J->C + c) * P, sizeof(float) * (size_t)P);
      for (long ob = ob0; ob < ob1; ob++)
        for (long ky = 0; ky < J->kh; ky++) {
          float *ac = acc ? acc + (((ob - ob0) * (c1 - c0) + (c - c0)) * J->kh + ky) * 24 * 16 : NULL;
          dcw_row3(J, ds + (ob - ob0) * 8 * S, S, xs, n1 - n0, ob * 8, c, ky, ac, n0 == 0, n1 == J->N);
        }
    }
  }
}

int cn_conv_direct_bw_applies(const cn_conv_geom *g) {
  /* planes of 8x8 and smaller: the packed GEMM measured faster (ResNet18's 256 8x8 and 512 4x4
   * weight gradients: 26 -> 25 and 30 -> 27 ms at batch 128) */
  return cn_conv_direct_applies(g) && g->o % 8 == 0 && g->kw == 3 && g->oh * g->ow > 64;
}

void cn_conv_direct_backward_weight(const float *dy, const float *x, float *dw, const cn_conv_geom *g) {
  dcw_job J;
  memset(&J, 0, sizeof(J));
  J.dy = dy;
  J.x = x;
  J.dw = dw;
  J.N = g->n;
  J.C = g->c;
  J.O = g->o;
  J.P = g->oh * g->ow;
  J.kh = g->kh;
  J.kw = g->kw;
  J.taps = g->kh * g->kw;
  J.halo = (g->ph * g->w + g->pw + 15) / 16 * 16;
  const long vpp = J.P / 16;
  /* chunks of about DCW_CHUNK positions (all images of 4x4 planes: no accumulators to keep) */
  J.cimg = DCW_CHUNK / J.P > 1 ? DCW_CHUNK / J.P : 1;
  uint16_t *masks = (uint16_t *)cn_gws(CN_GWS_B, ((size_t)(vpp * J.taps) * sizeof(uint16_t) + 3) / 4);
  if (!masks) abort();
  dc_fill_masks(masks, J.delta, g);
  J.masks = masks;
  /* at least 4 tasks per thread where the channels allow it */
  const long ogs = (J.O / 8 + DCW_OBG - 1) / DCW_OBG;
  const int T = cn_num_threads();
  J.cblocks = (4L * T + ogs - 1) / ogs;
  if (J.cblocks > J.C) J.cblocks = J.C;
  if (J.cblocks < 1) J.cblocks = 1;
  J.cper = (J.C + J.cblocks - 1) / J.cblocks;
  J.cblocks = (J.C + J.cper - 1) / J.cper;
  cn_parallel(ogs * J.cblocks, dcw_task, &J);
}

/* ---- a depthwise convolution computed while packing the next pointwise convolution's input ----
 *
 * MobileNet blocks run depthwise 3x3 -> batch norm -> ReLU(6) -> pointwise 1x1. In inference the
 * pointwise GEMM's B operand (channels x positions) is exactly the depthwise output, so the
 * packing callback computes it: for each channel and image, the taps as masked loads of the
 * depthwise input (the stride-1 "same" addressing of the direct kernel), then the batch norm and
 * activation; the depthwise output is never written to memory and read back.
 * 4x4 planes only: there the fusion wins (10-30 % per layer pair, MobileNetV1's five 512-channel
 * blocks, MobileNetV2's 960-channel ones); for 8x8 to 32x32 planes the standalone row kernels
 * compute the depthwise layer faster than the packing can, more than the saved memory traffic
 * (measured on MobileNetV2's layers, then removed). */

typedef struct {
  const float *x, *w, *b;               /* depthwise input (N, C, H, W), weights (C, 1, kh, kw), bias */
  const float *mean, *scale, *shift;    /* its batch norm, as cn_epilogue */
  int act;
  long C, N;
} dwpack_ctx;

/* B(k = channel, j = image) = act(bn(depthwise(x)))[image][channel]: planes of 16 values (4x4), one
 * vector each, 32 columns = 2 images per panel. The taps at the constant offsets and masks of 3x3
 * stride 1 padding 1 on 4x4 planes (CN_W4_*), in tap order as the unfused 4x4 kernel applies
 * them (fwd_4x4_planes4), so the fused and the unfused inference give the same floats; a panel's
 * two images as independent chains. */
DC_A512 static void pack_b_dw(const cn_gemm *g, long j0, long len, long k0, long kc, float *dst, int tid) {
  (void)tid;
  const dwpack_ctx *D = (const dwpack_ctx *)g->bctx;
  const long NR = 32, cols = D->N * 16, end = j0 + len < cols ? j0 + len : cols;
  const long panels = (len + NR - 1) / NR;
  for (long k = 0; k < kc; k++) {
    const long c = k0 + k;
    __m512 w[9];
    for (int q = 0; q < 9; q++) w[q] = _mm512_set1_ps(D->w[c * 9 + q]);
    const __m512 vb = _mm512_set1_ps(D->b ? D->b[c] : 0.0f), vm = _mm512_set1_ps(D->mean[c]);
    const __m512 vk = _mm512_set1_ps(D->scale[c]), vt = _mm512_set1_ps(D->shift[c]);
    for (long t = 0; t < panels; t++) {
      float *d = dst + t * kc * NR + k * NR;
      const long j = j0 + t * NR; /* = image * 16 */
      const int has0 = j < end, has1 = j + 16 < end; /* columns past the end: zeros */
      const float *x0 = D->x + ((j / 16) * D->C + c) * 16, *x1 = has1 ? x0 + D->C * 16 : x0;
      __m512 v0 = vb, v1 = vb;
#define PD(q)                                                                                                          \
  do {                                                                                                                 \
    v0 = _mm512_mask3_fmadd_ps(w[q], _mm512_maskz_loadu_ps(CN_W4_K(q), x0 + CN_W4_OFF(q)), v0, CN_W4_K(q));           \
    v1 = _mm512_mask3_fmadd_ps(w[q], _mm512_maskz_loadu_ps(CN_W4_K(q), x1 + CN_W4_OFF(q)), v1, CN_W4_K(q));           \
  } while (0)
      if (has0) {
        PD(0); PD(1); PD(2); PD(3); PD(4); PD(5); PD(6); PD(7); PD(8);
      }
#undef PD
      _mm512_store_ps(d, has0 ? cn512_act(cn512_bn(v0, vm, vk, vt), D->act) : _mm512_setzero_ps());
      _mm512_store_ps(d + 16, has1 ? cn512_act(cn512_bn(v1, vm, vk, vt), D->act) : _mm512_setzero_ps());
    }
  }
}

int cn_conv2d_dwpw(const float *x, const cn_conv_geom *gd, const float *wd, const float *bd, const float *md,
                   const float *sd, const float *td, int actd, const float *w, float *y, const cn_conv_geom *g,
                   const cn_epilogue *epi) {
  const long P = gd->oh * gd->ow;
  if (cn_block_planes(gd)) { /* larger planes: image by image */
    const cn_epilogue ed = {bd, md, sd, td, NULL, NULL, 0, actd};
    return cn_block_infer(x, NULL, NULL, NULL, gd, wd, &ed, g, w, epi, y);
  }
  if (cn_isa_id != 2 || cn_gk.nr != 32 || gd->groups != gd->c || gd->o != gd->c || gd->sh != 1 || gd->sw != 1 ||
      gd->ph != 1 || gd->pw != 1 || gd->oh != gd->h || gd->ow != gd->w || gd->kh != 3 || gd->kw != 3 || P != 16 || g->kh != 1 || g->kw != 1 || g->sh != 1 || g->sw != 1 || g->ph != 0 ||
      g->pw != 0 || g->groups != 1 || g->c != gd->o || g->n != gd->n || g->h != gd->oh || g->w != gd->ow)
    return 0;
  dwpack_ctx D;
  memset(&D, 0, sizeof(D));
  D.x = x;
  D.w = wd;
  D.b = bd;
  D.mean = md;
  D.scale = sd;
  D.shift = td;
  D.act = actd;
  D.C = gd->c;
  D.N = gd->n;
  cn_gemm G;
  cn_gemm_init_strided(&G, g->o, g->n * P, g->c, w, g->c, 1, NULL, 0, 0, y, P);
  G.pack_b = pack_b_dw;
  G.bctx = &D;
  G.seg_len = P;
  G.seg_stride = g->o * P;
  cn_epilogue e;
  if (epi) {
    e = *epi;
    e.row0 = 0;
    G.epi = &e;
  }
  cn_gemm_parallel(&G);
  return 1;
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
  dc_fill_masks(masks, J.delta, g);
  J.halo = g->ph * g->w + g->pw;
  J.x = x;
  J.wp = buf;
  J.bias = b;
  J.y = y;
  J.epi = epi;
  J.masks = masks;
  const long groups = (J.ntiles + DC_GROUP - 1) / DC_GROUP, T = cn_num_threads();
  J.osplit = 1;
  while (groups * J.osplit < 4 * T && J.osplit * 2 <= ob) J.osplit *= 2;
  cn_parallel(groups * J.osplit, dc_task, &J);
}

#else
int cn_conv_direct_applies(const cn_conv_geom *g) {
  (void)g;
  return 0;
}
int cn_conv_direct_bw_applies(const cn_conv_geom *g) {
  (void)g;
  return 0;
}
int cn_conv2d_dwpw(const float *x, const cn_conv_geom *gd, const float *wd, const float *bd, const float *md,
                   const float *sd, const float *td, int actd, const float *w, float *y, const cn_conv_geom *g,
                   const cn_epilogue *epi) {
  if (cn_block_planes(gd)) {
    const cn_epilogue ed = {bd, md, sd, td, NULL, NULL, 0, actd};
    return cn_block_infer(x, NULL, NULL, NULL, gd, wd, &ed, g, w, epi, y);
  }
  return 0;
}
void cn_conv_direct_backward_weight(const float *dy, const float *x, float *dw, const cn_conv_geom *g) {
  (void)dy, (void)x, (void)dw, (void)g;
  abort();
}
void cn_conv_direct(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g,
                    const cn_epilogue *epi) {
  (void)x, (void)w, (void)b, (void)y, (void)g, (void)epi;
  abort();
}
#endif
