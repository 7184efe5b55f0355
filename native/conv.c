/* Convolution on the packed GEMM (gemm.c), with im2col fused into the packing of B.
 *
 * forward          Y[g] (og x N*P) = W[g] (og x Kg) * col(X)[g] (Kg x N*P): one GEMM over the
 *                  whole batch (column j = (image, output position)); 1x1 stride-1 convs pack X
 *                  directly. Packing walks one input row at a time and prefetches the next channel.
 * backward input   stride 1: a forward convolution of dY with the flipped, transposed kernel;
 *                  otherwise dcol = W^T * dY per chunk of images, then col2im (scatter-add).
 * backward weight  dW[g] (og x Kg) = dY[g] (og x N*P) * col(X)[g]^T with K = N*P; both operands
 *                  are packed with 8x8 SIMD transposes. Small dW is computed per fixed chunk of
 *                  images in parallel and the partials summed in order (deterministic).
 * Depthwise (one input channel per group) uses the direct kernels in kernels.c / dw_avx512.c.
 * Stride-1 "same" convolutions on AVX-512 (the 3x3 layers) go to the direct kernels of
 * conv_direct.c instead (forward, and so the stride-1 input gradient; weight gradient).
 */
#include "cn.h"

#include <stdlib.h>
#include <string.h>

/* ---- im2col rows -------------------------------------------------------------------------------- */

typedef struct {
  const float *x; /* tensor base (N, C, H, W) */
  long C, H, W, HW;
  long c0;        /* first channel of the group */
  long kh, kw, khw, sh, sw, ph, pw, oh, ow, P;
  int pointwise;  /* 1x1, stride 1, no padding: col == x */
  long j_off;     /* added to the column index (image chunking) */
  const cn_intf *tf; /* input transform (pointwise only), or NULL */
} im2col_ctx;

static void im2col_init(im2col_ctx *s, const float *x, long C, long H, long W, long c0, long kh, long kw, long sh,
                        long sw, long ph, long pw, long oh, long ow) {
  s->x = x;
  s->C = C;
  s->H = H;
  s->W = W;
  s->HW = H * W;
  s->c0 = c0;
  s->kh = kh;
  s->kw = kw;
  s->khw = kh * kw;
  s->sh = sh;
  s->sw = sw;
  s->ph = ph;
  s->pw = pw;
  s->oh = oh;
  s->ow = ow;
  s->P = oh * ow;
  s->pointwise = (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0);
  s->j_off = 0;
  s->tf = NULL;
}

static inline void copy_floats(float *CN_RESTRICT d, const float *CN_RESTRICT s, long n) {
  for (long i = 0; i < n; i++) d[i] = s[i];
}
static inline void zero_floats(float *d, long n) {
  for (long i = 0; i < n; i++) d[i] = 0.0f;
}

#if defined(CN_X86)
#include "cn_avx512.h"
#define CONV_A512 CN_A512

static CONV_A512 inline __mmask16 lanes_upto(long n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* The stride-1 im2col row with masked loads and stores: the padding comes from the load mask (no
 * out-of-plane access), no calls, no branches per element. Short runs (small planes) are the
 * common case, where the generic copy loops cost more than the data. */
static CONV_A512 void im2col_row_s1_avx512(const im2col_ctx *s, const float *plane, long ky, long kx, long oy, long ox,
                                           long len, float *dst) {
  const long W = s->W, ow = s->ow;
  while (len > 0) {
    long run = ow - ox;
    if (run > len) run = len;
    const long iy = oy - s->ph + ky;
    if (iy < 0 || iy >= s->H) {
      for (long t = 0; t < run; t += 16) _mm512_mask_storeu_ps(dst + t, lanes_upto(run - t), _mm512_setzero_ps());
    } else {
      const float *row = plane + iy * W;
      const long ix0 = ox - s->pw + kx; /* input column of dst[0] */
      for (long t = 0; t < run; t += 16) {
        const __mmask16 out = lanes_upto(run - t);
        /* valid lanes: 0 <= ix0 + t + l < W */
        const long lo = -(ix0 + t), hi = W - (ix0 + t);
        const __mmask16 valid = out & (__mmask16)(lanes_upto(hi) & ~lanes_upto(lo));
        const __m512 v = _mm512_maskz_loadu_ps(valid, row + ix0 + t);
        if (out == 0xFFFF)
          _mm512_storeu_ps(dst + t, v);
        else
          _mm512_mask_storeu_ps(dst + t, out, v);
      }
    }
    dst += run;
    len -= run;
    ox = 0;
    oy++;
  }
}
#endif

/* dst[0..len) = im2col row (channel plane `plane`, tap (ky, kx)) at output positions starting at
 * (oy, ox), running along rows (all within one image). */
static void im2col_row(const im2col_ctx *s, const float *plane, long ky, long kx, long oy, long ox, long len,
                       float *dst) {
#if defined(CN_X86)
  if (cn_isa_id == 2 && s->sw == 1 && s->sh == 1 && !s->pointwise) {
    im2col_row_s1_avx512(s, plane, ky, kx, oy, ox, len, dst);
    return;
  }
#endif
  if (s->pointwise) {
    copy_floats(dst, plane + oy * s->ow + ox, len);
    return;
  }
  while (len > 0) {
    long run = s->ow - ox;
    if (run > len) run = len;
    const long iy = oy * s->sh - s->ph + ky;
    if (iy < 0 || iy >= s->H) {
      zero_floats(dst, run);
    } else {
      const float *row = plane + iy * s->W;
      const long ix0 = ox * s->sw - s->pw + kx;
      if (s->sw == 1) {
        long lo = -ix0, hi = s->W - ix0; /* valid t in [lo, hi) */
        if (lo < 0) lo = 0;
        if (lo > run) lo = run;
        if (hi > run) hi = run;
        if (hi < lo) hi = lo;
        zero_floats(dst, lo);
        copy_floats(dst + lo, row + ix0 + lo, hi - lo);
        zero_floats(dst + hi, run - hi);
      } else {
        const long sw = s->sw, W = s->W;
        for (long t = 0; t < run; t++) {
          const long ix = ix0 + t * sw;
          dst[t] = (ix >= 0 && ix < W) ? row[ix] : 0.0f;
        }
      }
    }
    dst += run;
    len -= run;
    ox = 0;
    oy++;
  }
}

/* A run of GEMM columns inside one image and one packed panel. */
typedef struct {
  long n, oy, ox, len, dst; /* dst: offset of its first column inside one packed k-row block */
} colseg;

#define MAX_SEGS 256

/* Split columns [j0, j0+len) into per-image, per-panel segments. Returns the count, or -1 if
 * more than MAX_SEGS would be needed. dst offsets assume the layout panel*kc*NR + col. */
static int make_segments(const im2col_ctx *s, long j0, long len, long kc, colseg *seg) {
  const int NR = cn_gk.nr;
  int ns = 0;
  long j = j0 + s->j_off, done = 0;
  while (done < len) {
    const long n = j / s->P, p = j % s->P;
    const long panel = done / NR, col = done % NR;
    long l = s->P - p;
    if (l > len - done) l = len - done;
    if (l > NR - col) l = NR - col;
    if (ns == MAX_SEGS) return -1;
    seg[ns].n = n;
    seg[ns].oy = p / s->ow;
    seg[ns].ox = p % s->ow;
    seg[ns].len = l;
    seg[ns].dst = panel * kc * NR + col;
    ns++;
    done += l;
    j += l;
  }
  return ns;
}

#if defined(CN_X86)
/* pack_b_im2col's k-rows for a pointwise convolution (one channel per k-row), with the input
 * transform if any (its coefficients broadcast once per row, the row segments transformed while
 * copied) */
static CONV_A512 void pack_rows_pw_avx512(const im2col_ctx *s, const colseg *seg, int ns, long c, long kc,
                                          float *d0) {
  const int NR = cn_gk.nr, act = s->tf ? s->tf->act : 0;
  for (long k = 0; k < kc; k++, c++) {
    const long ch = s->c0 + c;
    __m512 m = _mm512_setzero_ps(), kk = m, bt = m;
    if (s->tf) {
      m = _mm512_set1_ps(s->tf->mean[ch]);
      kk = _mm512_set1_ps(s->tf->scale[ch]);
      bt = _mm512_set1_ps(s->tf->shift[ch]);
    }
    const float *cbase = s->x + ch * s->HW;
    if (c + 1 < s->C - s->c0) /* the next channel's rows, as pack_b_im2col */
      for (int q = 0; q < ns; q++) {
        const char *p = (const char *)(cbase + s->HW + seg[q].n * s->C * s->HW + seg[q].oy * s->ow + seg[q].ox);
        for (long b = 0; b < seg[q].len * 4; b += 64) __builtin_prefetch(p + b);
      }
    float *drow = d0 + k * NR;
    for (int q = 0; q < ns; q++) {
      const float *src = cbase + seg[q].n * s->C * s->HW + seg[q].oy * s->ow + seg[q].ox;
      float *dst = drow + seg[q].dst;
      const long len = seg[q].len;
      if (s->tf)
        for (long t = 0; t < len; t += 16) {
          const __mmask16 mk = lanes_upto(len - t);
          _mm512_mask_storeu_ps(dst + t, mk, cn512_tf(_mm512_maskz_loadu_ps(mk, src + t), m, kk, bt, act));
        }
      else
        for (long t = 0; t < len; t += 16) {
          const __mmask16 mk = lanes_upto(len - t);
          _mm512_mask_storeu_ps(dst + t, mk, _mm512_maskz_loadu_ps(mk, src + t));
        }
    }
  }
}

/* the transposed panel rows [0, kc) x lanes [0, nr) of pack_b_im2col_t, transformed in place:
 * lane q is channel ch0 + q */
static CONV_A512 void tf_panel_avx512(const cn_intf *tf, long ch0, int nr, float *d, long kc) {
  const int NR = cn_gk.nr;
  for (int v = 0; v < NR; v += 16) {
    const int n = nr - v < 16 ? nr - v : 16;
    if (n <= 0) break;
    const __mmask16 mk = lanes_upto(n);
    const __m512 m = _mm512_maskz_loadu_ps(mk, tf->mean + ch0 + v), kk = _mm512_maskz_loadu_ps(mk, tf->scale + ch0 + v),
                 bt = _mm512_maskz_loadu_ps(mk, tf->shift + ch0 + v);
    float *p = d + v;
    for (long k = 0; k < kc; k++, p += NR) _mm512_mask_storeu_ps(p, mk, cn512_tf(_mm512_loadu_ps(p), m, kk, bt, tf->act));
  }
}
#endif

/* B(k, j) = col[k = (c, ky, kx)][j = (n, p)]: panels of NR columns, filled k-row by k-row so
 * that each input row is read sequentially across the whole block. */
static void pack_b_im2col(const cn_gemm *g, long j0, long len, long k0, long kc, float *dst, int tid) {
  const im2col_ctx *s = (const im2col_ctx *)g->bctx;
  const int NR = cn_gk.nr;
  colseg seg[MAX_SEGS];
  const long chunk = (long)(MAX_SEGS / 2 - 1) * NR; /* at most 2 segments per panel */
  for (long c0 = 0; c0 < len; c0 += chunk) {
    const long cl = len - c0 < chunk ? len - c0 : chunk;
    const int ns = make_segments(s, j0 + c0, cl, kc, seg);
    if (ns < 0) abort();
    float *d0 = dst + (c0 / NR) * kc * NR;
    long c = k0 / s->khw, r = k0 % s->khw;
    long ky = r / s->kw, kx = r % s->kw;
#if defined(CN_X86)
    if (s->pointwise && cn_isa_id == 2) {
      pack_rows_pw_avx512(s, seg, ns, c, kc, d0);
      goto tail;
    }
#endif
    for (long k = 0; k < kc; k++) {
      float *drow = d0 + k * NR;
      const float *cbase = s->x + (s->c0 + c) * s->HW;
      /* software-prefetch the input rows of the next channel: each channel is a short
       * sequential run the hardware prefetcher only catches late */
      if (c + 1 < s->C - s->c0 && kx == s->kw - 1 && ky == s->kh - 1)
        for (int q = 0; q < ns; q++) {
          const char *p = (const char *)(cbase + s->HW + seg[q].n * s->C * s->HW + seg[q].oy * s->ow + seg[q].ox);
          for (long b = 0; b < seg[q].len * 4; b += 64) __builtin_prefetch(p + b);
        }
      if (s->tf) /* pointwise: the row segments, transformed */
        for (int q = 0; q < ns; q++)
          cn_intf_rows(s->tf, cbase + seg[q].n * s->C * s->HW + seg[q].oy * s->ow + seg[q].ox, 0, drow + seg[q].dst, 0,
                       1, seg[q].len, s->c0 + c, 0);
      else
        for (int q = 0; q < ns; q++)
          im2col_row(s, cbase + seg[q].n * s->C * s->HW, ky, kx, seg[q].oy, seg[q].ox, seg[q].len, drow + seg[q].dst);
      if (++kx == s->kw) {
        kx = 0;
        if (++ky == s->kh) {
          ky = 0;
          c++;
        }
      }
    }
#if defined(CN_X86)
  tail:
#endif
    if (cl % NR) {
      float *last = d0 + (cl / NR) * kc * NR;
      for (long k = 0; k < kc; k++)
        for (long t = cl % NR; t < NR; t++) last[k * NR + t] = 0.0f;
    }
  }
  (void)tid;
}

/* pack_b_im2col's panel read in place: a pointwise convolution's input (and its transform), the
 * panel inside one image */
static int bdirect_pw(const cn_gemm *g, long j, long k0, const float **base, long *stride, const cn_intf **tf,
                      long *ch0) {
  const im2col_ctx *s = (const im2col_ctx *)g->bctx;
  if (!s->pointwise) return 0;
  *tf = s->tf;
  *ch0 = s->c0 + k0;
  const long jj = j + s->j_off, n = jj / s->P, p = jj % s->P;
  if (p + cn_gk.nr > s->P) return 0;
  *base = s->x + (n * s->C + s->c0 + k0) * s->HW + p;
  *stride = s->HW;
  return 1;
}

/* ---- forward ---------------------------------------------------------------------------------- */

typedef struct {
  float *y;
  const float *b;
  long P, O, n;
} bias_job;

static void bias_task(void *ctx, long t, int tid) {
  (void)tid;
  const bias_job *J = (const bias_job *)ctx;
  float *p = J->y + t * J->P;
  const float v = J->b[t % J->O];
  for (long i = 0; i < J->P; i++) p[i] += v;
}

/* G = W (M x K, element (i, k) at w[i * w_rs + k * w_cs]) * col(s) into y (rows P apart, images
 * seg_stride apart): the convolution GEMM with im2col in its B packing */
static void im2col_gemm_init(cn_gemm *G, const im2col_ctx *s, long M, long N, long K, const float *w, long w_rs,
                             long w_cs, float *y, long P, long seg_stride) {
  cn_gemm_init_strided(G, M, N, K, w, w_rs, w_cs, NULL, 0, 0, y, P);
  G->pack_b = pack_b_im2col;
  if (s->pointwise) G->b_direct = bdirect_pw;
  G->bctx = s;
  G->seg_len = P;
  G->seg_stride = seg_stride;
}

/* the batch statistics partials of the output columns a GEMM task computed (whole groups of
 * images: n_align) */
typedef struct {
  float *y, *gs;
  long n, o, P;
} stats_post_ctx;

static void stats_post(const cn_gemm *G, long m0, long m1, long n0, long n1) {
  const stats_post_ctx *S = (const stats_post_ctx *)G->pctx;
  const long span = S->P * cn_bn_group_images(S->P);
  cn_bn_group_stats(S->y, S->n, S->o, S->P, n0 / span, (n1 + span - 1) / span, m0, m1, S->gs);
}

static int conv2d_impl(const float *x, const cn_intf *tf, const float *w, const float *b, float *y,
                       const cn_conv_geom *g, const cn_epilogue *epi, float *gstats) {
  const long cg = g->c / g->groups, og = g->o / g->groups;
  if (tf && !cn_intf_supported(g)) abort(); /* callers check */
  if (cg == 1 && gstats && !b && !epi && g->o == g->c && cn_dw_forward_stats(x, tf, w, y, g, gstats)) return 1;
  if (tf && cg == 1) {
    cn_dw_forward_tf(x, tf, w, b, y, g);
    return 0;
  }
  if (cg == 1) {
    if (epi) {
      /* the bias is part of the depthwise accumulation already */
      cn_epilogue e = *epi;
      e.bias = NULL;
      cn_dw_forward_epi(x, w, b, y, g, &e);
    } else
      cn_dw_forward(x, w, b, y, g);
    return 0;
  }
  if (!tf && cn_conv_direct_applies(g)) {
    cn_conv_direct(x, w, b, y, g, epi);
    return 0;
  }
  const long P = g->oh * g->ow, Kg = cg * g->kh * g->kw;
  /* statistics partials: tasks of whole image groups, at least two of them (else the columns
   * would not be split between threads: small batches read the output again instead); planes
   * of 256 values and more (on 8x8 and 4x4 planes, groups of 16 / 64 images make tasks larger
   * than the L2 and fewer: measured slower than the separate pass, whose input is then still in
   * the L3) */
  const int with_stats = gstats && g->groups == 1 && !b && !epi && P >= 256 && g->n >= 2 * cn_bn_group_images(P);
  for (long gr = 0; gr < g->groups; gr++) {
    im2col_ctx s;
    im2col_init(&s, x, g->c, g->h, g->w, gr * cg, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow);
    s.tf = tf;
    cn_gemm G;
    im2col_gemm_init(&G, &s, og, g->n * P, Kg, w + gr * og * Kg, Kg, 1, y + gr * og * P, P, g->o * P);
    stats_post_ctx S = {y, gstats, g->n, g->o, P};
    if (with_stats) {
      /* the batch statistics partials of whole groups of images, by the task that computed them */
      G.post_task = stats_post;
      G.pctx = &S;
      G.n_align = P * cn_bn_group_images(P);
    }
    cn_epilogue e;
    if (epi) {
      /* the bias goes into the epilogue (added before the normalisation, as the separate pass) */
      e = *epi;
      e.bias = b;
      e.row0 = gr * og;
      G.epi = &e;
    }
    cn_gemm_parallel(&G);
  }
  if (b && !epi) {
    bias_job J = {y, b, P, g->o, g->n};
    cn_parallel(g->n * g->o, bias_task, &J);
  }
  return with_stats;
}

void cn_conv2d(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g) {
  conv2d_impl(x, NULL, w, b, y, g, NULL, NULL);
}

void cn_conv2d_tf(const float *x, const cn_intf *tf, const float *w, const float *b, float *y, const cn_conv_geom *g) {
  conv2d_impl(x, tf, w, b, y, g, NULL, NULL);
}

int cn_conv2d_stats(const float *x, const cn_intf *tf, const float *w, float *y, const cn_conv_geom *g, float *gstats) {
  return conv2d_impl(x, tf, w, NULL, y, g, NULL, gstats);
}

void cn_conv2d_epi(const float *x, const float *w, float *y, const cn_conv_geom *g, const cn_epilogue *epi) {
  conv2d_impl(x, NULL, w, epi->bias, y, g, epi, NULL);
}

/* ---- MobileNetV2's inverted residual block in inference ------------------------------------------- */

int cn_conv_pointwise(const cn_conv_geom *g) {
  return g->groups == 1 && g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

typedef struct {
  const float *x, *w1, *w3;
  float *y;
  const cn_conv_geom *g1, *g2, *g3;
  const cn_epilogue *e1, *e3;
  const cn_dw_prep *dw;
  const float *a1, *a3; /* the packed weights */
} block_job;

/* y (O x P) = W (O x K) * B (K x P), B one image's pointwise input; W packed in apre (or NULL);
 * epilogue e (or none) */
static void pointwise_one(const float *b, long K, long P, const float *w, const float *apre, long O, float *y,
                          const cn_epilogue *e, int tid) {
  im2col_ctx s;
  im2col_init(&s, b, K, P, 1, 0, 1, 1, 1, 1, 0, 0, P, 1);
  cn_gemm G;
  im2col_gemm_init(&G, &s, O, P, K, w, K, 1, y, P, O * P);
  G.epi = e;
  G.apre = apre;
  cn_gemm_serial(&G, 0, O, 0, P, tid);
}

/* the weights (O x K) of a pointwise stage packed once for all images (malloc'd) */
static float *pack_weights(const float *w, long K, long O) {
  cn_gemm G;
  cn_gemm_init_strided(&G, O, 1, K, w, K, 1, NULL, 0, 0, NULL, 1); /* A only: the packing is N-independent */
  float *a = (float *)malloc(sizeof(float) * cn_gemm_apre_floats(&G));
  if (!a) abort();
  cn_gemm_prepack_a(&G, a);
  return a;
}

static void block_task(void *ctx, long n, int tid) {
  const block_job *J = (const block_job *)ctx;
  const cn_conv_geom *g1 = J->g1, *g2 = J->g2, *g3 = J->g3;
  const long P1 = g2->h * g2->w, P2 = g2->oh * g2->ow;
  float *E2 = cn_ws(tid, CN_WS_BLK2, (size_t)(g2->o * P2));
  if (!E2) abort();
  const float *din = J->x + n * g2->c * P1; /* the depthwise input: x, or the expansion of x */
  if (g1) {
    float *E1 = cn_ws(tid, CN_WS_BLK1, (size_t)(g1->o * P1));
    if (!E1) abort();
    cn_epilogue e1 = *J->e1;
    e1.row0 = 0;
    e1.out_base = E1;
    e1.res_base = NULL;
    pointwise_one(J->x + n * g1->c * P1, g1->c, P1, J->w1, J->a1, g1->o, E1, &e1, tid);
    din = E1;
  }
  cn_dw_forward_one(J->dw, din, E2, tid);
  pointwise_one(E2, g3->c, P2, J->w3, J->a3, g3->o, J->y + n * g3->o * P2, J->e3, tid);
}

int cn_block_planes(const cn_conv_geom *gd) {
  const long P = gd->h * gd->w;
  return P >= 256 || (P >= 64 && gd->sh == 1 && gd->sw == 1);
}

int cn_block_infer(const float *x, const cn_conv_geom *g1, const float *w1, const cn_epilogue *e1,
                   const cn_conv_geom *g2, const float *w2, const cn_epilogue *e2, const cn_conv_geom *g3,
                   const float *w3, const cn_epilogue *e3, float *y) {
  if (g1 && (!cn_conv_pointwise(g1) || g2->c != g1->o || g1->n != g2->n || g2->h != g1->oh || g2->w != g1->ow || !e1 ||
             e1->res_base))
    return 0;
  if (!cn_conv_pointwise(g3) || g2->groups != g2->c || g2->o != g2->c || g3->c != g2->o || g2->n != g3->n ||
      g3->h != g2->oh || g3->w != g2->ow || !e2 || e2->res_base || !cn_block_planes(g2))
    return 0;
  cn_epilogue e3l;
  if (e3) {
    e3l = *e3;
    e3l.row0 = 0;
    e3l.out_base = y;
  }
  cn_dw_prep *dw = cn_dw_prepare(g2, w2, e2);
  float *a1 = g1 ? pack_weights(w1, g1->c, g1->o) : NULL;
  float *a3 = pack_weights(w3, g3->c, g3->o);
  block_job J = {x, w1, w3, y, g1, g2, g3, e1, e3 ? &e3l : NULL, dw, a1, a3};
  cn_parallel(g2->n, block_task, &J);
  cn_dw_release(dw);
  free(a1);
  free(a3);
  return 1;
}

/* ---- backward input ------------------------------------------------------------------------- */

typedef struct {
  const float *dy, *w;
  float *dx;
  const cn_conv_geom *g;
  long cg, og, Kg, P, imgs; /* images per task */
  long nchunks;
} col2im_job;

static void col2im_task(void *ctx, long t, int tid) {
  const col2im_job *J = (const col2im_job *)ctx;
  const cn_conv_geom *g = J->g;
  const long gr = t / J->nchunks, chunk = t % J->nchunks;
  const long n0 = chunk * J->imgs;
  long n1 = n0 + J->imgs;
  if (n1 > g->n) n1 = g->n;
  const long cols = (n1 - n0) * J->P;
  float *dcol = cn_ws(tid, CN_WS_TMP, (size_t)J->Kg * (size_t)cols);
  if (!dcol) abort();
  /* dcol (Kg x cols) = W_g^T (Kg x og) * dY_g (og x cols) */
  im2col_ctx s;
  im2col_init(&s, J->dy, g->o, 1, J->P, gr * J->og, 1, 1, 1, 1, 0, 0, 1, J->P);
  s.j_off = n0 * J->P;
  cn_gemm G;
  cn_gemm_init_strided(&G, J->Kg, cols, J->og, J->w + gr * J->og * J->Kg, 1, J->Kg, NULL, 0, 0, dcol, cols);
  G.pack_b = pack_b_im2col;
  G.bctx = &s;
  cn_gemm_serial(&G, 0, J->Kg, 0, cols, tid);
  /* col2im into dx for images [n0, n1), channels of group gr */
  const long H = g->h, W = g->w, kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw, ph = g->ph, pw = g->pw;
  const long oh = g->oh, ow = g->ow;
  for (long n = n0; n < n1; n++) {
    for (long c = 0; c < J->cg; c++) {
      float *plane = J->dx + (n * g->c + gr * J->cg + c) * H * W;
      memset(plane, 0, sizeof(float) * (size_t)(H * W));
      for (long ky = 0; ky < kh; ky++)
        for (long kx = 0; kx < kw; kx++) {
          const float *src = dcol + ((c * kh + ky) * kw + kx) * cols + (n - n0) * J->P;
          for (long oy = 0; oy < oh; oy++) {
            const long iy = oy * sh - ph + ky;
            if (iy < 0 || iy >= H) continue;
            float *drow = plane + iy * W;
            const float *srow = src + oy * ow;
            long ox0 = 0, ox1 = ow; /* valid ox: 0 <= ox*sw - pw + kx < W */
            while (ox0 < ow && ox0 * sw - pw + kx < 0) ox0++;
            while (ox1 > ox0 && (ox1 - 1) * sw - pw + kx >= W) ox1--;
            if (sw == 1) {
              float *dd = drow - pw + kx;
              for (long ox = ox0; ox < ox1; ox++) dd[ox] += srow[ox];
            } else {
              for (long ox = ox0; ox < ox1; ox++) drow[ox * sw - pw + kx] += srow[ox];
            }
          }
        }
    }
  }
}

/* the pointwise input gradient of group gr as one GEMM over n images (dy, dx: the first one's):
 * dX[gr] (cg x n*P) = W[gr]^T (cg x og) * dY[gr] (og x n*P), W^T read in place */
static void pw_input_gemm(cn_gemm *G, im2col_ctx *s, const float *dy, const float *w, float *dx, const cn_conv_geom *g,
                          long gr, long n) {
  const long cg = g->c / g->groups, og = g->o / g->groups, P = g->oh * g->ow;
  im2col_init(s, dy, g->o, g->oh, g->ow, gr * og, 1, 1, 1, 1, 0, 0, g->oh, g->ow);
  im2col_gemm_init(G, s, cg, n * P, og, w + gr * og * cg, 1, cg, dx + gr * cg * P, P, g->c * P);
}

/* the batch norm + activation backward's partials of the input-gradient columns a GEMM task
 * computed (whole groups of images: n_align) */
typedef struct {
  const float *dx, *bx;
  const cn_intf *t;
  float *parts;
  long n, c, P;
} bnbw_post_ctx;

static void bnbw_post(const cn_gemm *G, long m0, long m1, long n0, long n1) {
  const bnbw_post_ctx *S = (const bnbw_post_ctx *)G->pctx;
  const long span = S->P * cn_bn_group_images(S->P);
  cn_bn_bw_group_parts(S->dx, S->bx, S->t, S->n, S->c, S->P, n0 / span, (n1 + span - 1) / span, m0, m1, S->parts);
}

int cn_conv2d_backward_input_bnp(const float *dy, const float *w, float *dx, const cn_conv_geom *g, const cn_intf *t,
                                 const float *bx, float *parts) {
  const long P = g->oh * g->ow;
  /* (as the statistics partials of the forward GEMM: see conv2d_impl; AVX-512, whose reduction
   * kernel sums a group in floats: a group's sums are floats, as the partials) */
  if (cn_isa_id != 2 || !cn_conv_pointwise(g) || g->groups != 1 || !t || !t->act || P < 256 ||
      g->n < 2 * cn_bn_group_images(P)) {
    cn_conv2d_backward_input(dy, w, dx, g);
    return 0;
  }
  im2col_ctx s;
  cn_gemm G;
  pw_input_gemm(&G, &s, dy, w, dx, g, 0, g->n);
  bnbw_post_ctx S = {dx, bx, t, parts, g->n, g->c, P};
  G.post_task = bnbw_post;
  G.pctx = &S;
  G.n_align = P * cn_bn_group_images(P);
  cn_gemm_parallel(&G);
  return 1;
}

void cn_conv2d_backward_input(const float *dy, const float *w, float *dx, const cn_conv_geom *g) {
  const long cg = g->c / g->groups, og = g->o / g->groups;
  if (cg == 1) {
    cn_dw_backward_input(dy, w, dx, g);
    return;
  }
  const long P = g->oh * g->ow, Kg = cg * g->kh * g->kw;
  if (g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0) {
    for (long gr = 0; gr < g->groups; gr++) {
      im2col_ctx s;
      cn_gemm G;
      pw_input_gemm(&G, &s, dy, w, dx, g, gr, g->n);
      cn_gemm_parallel(&G);
    }
    return;
  }
  if (g->sh == 1 && g->sw == 1 && g->ph <= g->kh - 1 && g->pw <= g->kw - 1) {
    /* dx = conv(dy, w'), w'[gr*cg + c][o][ky][kx] = w[gr*og + o][c][kh-1-ky][kw-1-kx], padding k-1-p */
    const long khw = g->kh * g->kw;
    float *wt = cn_gws(CN_GWS_A, (size_t)(g->c * og * khw));
    if (!wt) abort();
    for (long gr = 0; gr < g->groups; gr++)
      for (long o = 0; o < og; o++)
        for (long c = 0; c < cg; c++) {
          const float *src = w + ((gr * og + o) * cg + c) * khw;
          float *dst = wt + ((gr * cg + c) * og + o) * khw;
          for (long t = 0; t < khw; t++) dst[t] = src[khw - 1 - t];
        }
    cn_conv_geom t = *g;
    t.c = g->o;
    t.h = g->oh;
    t.w = g->ow;
    t.o = g->c;
    t.ph = g->kh - 1 - g->ph;
    t.pw = g->kw - 1 - g->pw;
    t.oh = g->h;
    t.ow = g->w;
    cn_conv2d(dy, wt, NULL, dx, &t);
    return;
  }
  col2im_job J;
  J.dy = dy;
  J.w = w;
  J.dx = dx;
  J.g = g;
  J.cg = cg;
  J.og = og;
  J.Kg = Kg;
  J.P = P;
  const int T = cn_num_threads();
  long imgs = (512 + P - 1) / P; /* aim for >= 512 GEMM columns per task */
  const long per_thread = (g->n * g->groups + 2L * T - 1) / (2L * T);
  if (imgs > per_thread) imgs = per_thread;
  if (imgs < 1) imgs = 1;
  J.imgs = imgs;
  J.nchunks = (g->n + imgs - 1) / imgs;
  cn_parallel(g->groups * J.nchunks, col2im_task, &J);
}

/* ---- backward weight -------------------------------------------------------------------------- */

typedef struct {
  const float *dy;
  long O, o0, P;
} dyrows_ctx;

/* Prefetch the next depth block of rows that are read as k-runs: the rows continue in the same
 * image (positions p_next..p_next+len) or, at the end of the image, in the next image. */
static void prefetch_next(const float *const *src, int rows, long p_next, long len, long P, long img_stride) {
  for (int r = 0; r < rows; r++) {
    const float *q = p_next < P ? src[r] + len : src[r] - (p_next - len) + img_stride;
    long n = len;
    if (p_next < P && p_next + n > P) n = P - p_next;
    for (long b = 0; b < n; b += 16) __builtin_prefetch(q + b);
  }
}

/* A(i, k) = dy[(n*O + o0 + i)*P + p] with k = (n, p): MR rows interleaved (transpose). */
static void pack_a_dyrows(const cn_gemm *g, long i0, long len, long k0, long kc, float *dst, int tid) {
  (void)tid;
  const dyrows_ctx *s = (const dyrows_ctx *)g->actx;
  const int MR = cn_gk.mr;
  const float *src[32];
  for (long ip = 0; ip < len; ip += MR) {
    const int rows = (int)(len - ip < MR ? len - ip : MR);
    float *d = dst + (ip / MR) * kc * MR;
    long k = k0, done = 0;
    while (done < kc) {
      const long n = k / s->P, p = k % s->P;
      long l = s->P - p;
      if (l > kc - done) l = kc - done;
      for (int r = 0; r < rows; r++) src[r] = s->dy + (n * s->O + s->o0 + i0 + ip + r) * s->P + p;
      cn_transpose_pack(src, rows, l, d + done * MR, MR);
      prefetch_next(src, rows, p + l, l, s->P, s->O * s->P);
      done += l;
      k += l;
    }
  }
}

/* B(k, j) = col[j = (c, ky, kx)][k = (n, p)]: im2col rows generated then transposed into panels. */
static void pack_b_im2col_t(const cn_gemm *g, long j0, long len, long k0, long kc, float *dst, int tid) {
  const im2col_ctx *s = (const im2col_ctx *)g->bctx;
  const int NR = cn_gk.nr;
  float *tmp = cn_ws(tid, CN_WS_TMP2, (size_t)NR * (size_t)kc);
  if (!tmp) abort();
  const float *src[64];
  /* an input transform (pointwise): applied to each transposed panel, whose lanes are channels */
#if defined(CN_X86)
  const int tf_after = s->tf && cn_isa_id == 2;
#else
  const int tf_after = 0;
#endif
  for (long jp = 0; jp < len; jp += NR) {
    const int nr = (int)(len - jp < NR ? len - jp : NR);
    float *d = dst + (jp / NR) * kc * NR;
    long k = k0, done = 0;
    while (done < kc) {
      const long n = k / s->P, p = k % s->P;
      long l = s->P - p;
      if (l > kc - done) l = kc - done;
      const long jj0 = j0 + jp;
      long c = jj0 / s->khw, r = jj0 % s->khw;
      long ky = r / s->kw, kx = r % s->kw;
      for (int q = 0; q < nr; q++) {
        const float *plane = s->x + (n * s->C + s->c0 + c) * s->HW;
        if (s->tf && !tf_after) { /* pointwise, transformed into the scratch rows */
          float *t = tmp + (long)q * kc;
          cn_intf_rows(s->tf, plane + p, 0, t, 0, 1, l, s->c0 + c, 0);
          src[q] = t;
        } else if (s->pointwise) {
          src[q] = plane + p;
        } else {
          float *t = tmp + (long)q * kc;
          im2col_row(s, plane, ky, kx, p / s->ow, p % s->ow, l, t);
          src[q] = t;
        }
        if (++kx == s->kw) {
          kx = 0;
          if (++ky == s->kh) {
            ky = 0;
            c++;
          }
        }
      }
      cn_transpose_pack(src, nr, l, d + done * NR, NR);
      if (s->pointwise && (!s->tf || tf_after)) prefetch_next(src, nr, p + l, l, s->P, s->C * s->HW);
      done += l;
      k += l;
    }
#if defined(CN_X86)
    if (tf_after) tf_panel_avx512(s->tf, s->c0 + j0 + jp, nr, d, kc);
#endif
  }
}

/* The reduction over the batch (K = N*P) is cut into a fixed number of image chunks when the
 * per-chunk partial dW is small: the chunks run in parallel (each a serial GEMM over its images)
 * and are summed in order. The chunk count depends only on the shape, never on the thread
 * count, so results stay deterministic. Large dW (deep layers) splits the M/N plane instead. */
#define BW_MAX_CHUNKS 8
#define BW_SMALL_DW (1L << 18) /* dW with fewer floats than this is split over the batch */

typedef struct {
  const float *dy, *x;
  float *part;
  const cn_conv_geom *g;
  long gr, cg, og, Kg, P, nchunks;
  const cn_intf *tf;
} bw_job;

static void bw_chunk_task(void *ctx, long ch, int tid) {
  const bw_job *J = (const bw_job *)ctx;
  const cn_conv_geom *g = J->g;
  const long n0 = ch * g->n / J->nchunks, n1 = (ch + 1) * g->n / J->nchunks;
  dyrows_ctx a = {J->dy + n0 * g->o * J->P, g->o, J->gr * J->og, J->P};
  im2col_ctx s;
  im2col_init(&s, J->x + n0 * g->c * g->h * g->w, g->c, g->h, g->w, J->gr * J->cg, g->kh, g->kw, g->sh, g->sw, g->ph,
              g->pw, g->oh, g->ow);
  s.tf = J->tf;
  cn_gemm G;
  cn_gemm_init_strided(&G, J->og, J->Kg, (n1 - n0) * J->P, NULL, 0, 0, NULL, 0, 0, J->part + ch * J->og * J->Kg, J->Kg);
  G.pack_a = pack_a_dyrows;
  G.actx = &a;
  G.pack_b = pack_b_im2col_t;
  G.bctx = &s;
  cn_gemm_serial(&G, 0, J->og, 0, J->Kg, tid);
}

typedef struct {
  const float *part;
  float *out;
  long count, nchunks, per;
} sum_job;

static void sum_chunks_task(void *ctx, long t, int tid) {
  (void)tid;
  const sum_job *J = (const sum_job *)ctx;
  const long i0 = t * J->per;
  const long i1 = i0 + J->per < J->count ? i0 + J->per : J->count;
  for (long i = i0; i < i1; i++) {
    float s = J->part[i];
    for (long ch = 1; ch < J->nchunks; ch++) s += J->part[ch * J->count + i];
    J->out[i] = s;
  }
}

#if defined(CN_X86)
/* ---- pointwise weight gradient as dot products (AVX-512) --------------------------------------
 * dW[o][c] = sum over images n and positions p of dy[n][o][p] * x[n][c][p]. Both operands keep
 * the positions contiguous, so each weight is the dot product of two rows: no transposing
 * (the packed GEMM transposes both operands, 110-220 GFLOP/s on 32x32 planes). Per image, tiles
 * of PWD_R1 rows of dy x PWD_R2 rows of x (24 dot products, 10 loads per 24 FMAs; the dy rows
 * stay in the L1 across the x tiles) run over the image's positions. A tile's vector
 * accumulators persist in per-thread memory across the images of a chunk and are reduced to
 * floats at its end; chunks are summed in order (bw_job's scheme: deterministic). */
#define PWD_R1 6
#define PWD_R2 4
#define PWD_ACC (PWD_R1 * PWD_R2 * 16) /* floats of one tile's accumulators */

/* acc[i][j] += a_i . b_j over P positions (a: PWD_R1 rows, b: PWD_R2 rows, P apart), prefetching
 * pf_n lines from pf (the next block of dy rows) along */
static CONV_A512 void pwd_tile_full(const float *a, const float *b, long P, float *acc, const char *pf, long pf_n) {
  __m512 c[PWD_R1][PWD_R2];
  for (int i = 0; i < PWD_R1; i++)
    for (int j = 0; j < PWD_R2; j++) c[i][j] = _mm512_load_ps(acc + (i * PWD_R2 + j) * 16);
  long p = 0;
  for (; p + 16 <= P; p += 16) { /* plain loads (masked ones measured 2x slower here) */
    if (pf_n > 0) {
      _mm_prefetch(pf, _MM_HINT_T0);
      pf += 64;
      pf_n--;
    }
    __m512 va[PWD_R1];
    for (int i = 0; i < PWD_R1; i++) va[i] = _mm512_loadu_ps(a + i * P + p);
    for (int j = 0; j < PWD_R2; j++) {
      const __m512 vb = _mm512_loadu_ps(b + j * P + p);
      for (int i = 0; i < PWD_R1; i++) c[i][j] = _mm512_fmadd_ps(va[i], vb, c[i][j]);
    }
  }
  if (p < P) {
    const __mmask16 t = lanes_upto(P - p);
    __m512 va[PWD_R1];
    for (int i = 0; i < PWD_R1; i++) va[i] = _mm512_maskz_loadu_ps(t, a + i * P + p);
    for (int j = 0; j < PWD_R2; j++) {
      const __m512 vb = _mm512_maskz_loadu_ps(t, b + j * P + p);
      for (int i = 0; i < PWD_R1; i++) c[i][j] = _mm512_fmadd_ps(va[i], vb, c[i][j]);
    }
  }
  for (; pf_n > 0; pf_n--, pf += 64) _mm_prefetch(pf, _MM_HINT_T0);
  for (int i = 0; i < PWD_R1; i++)
    for (int j = 0; j < PWD_R2; j++) _mm512_store_ps(acc + (i * PWD_R2 + j) * 16, c[i][j]);
}

/* the same for an edge tile of r1 x r2 rows (one dot product at a time) */
static CONV_A512 void pwd_tile_edge(const float *a, const float *b, long P, int r1, int r2, float *acc) {
  for (int i = 0; i < r1; i++)
    for (int j = 0; j < r2; j++) {
      __m512 c = _mm512_load_ps(acc + (i * PWD_R2 + j) * 16);
      for (long p = 0; p < P; p += 16) {
        const __mmask16 t = lanes_upto(P - p);
        c = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(t, a + i * P + p), _mm512_maskz_loadu_ps(t, b + j * P + p), c);
      }
      _mm512_store_ps(acc + (i * PWD_R2 + j) * 16, c);
    }
}

typedef struct {
  const float *dy, *x;
  const cn_intf *tf;
  float *part; /* nchunks x O x C */
  long n, O, C, P, nchunks;
  /* both gradients (cn_conv2d_backward_pw): the input gradient of each image, computed right
   * after its weight-gradient tiles while its dy is in cache; w: the weights, apre: W^T packed */
  float *dx;
  const float *w, *apre;
  const cn_conv_geom *g;
  const cn_bwtf *dt; /* dy computed image by image from a batch norm + activation backward, or NULL */
  float *bnp;        /* the partials of the batch norm + activation backward before (of dx), or NULL */
  long G;            /* their image groups */
} pwd_job;

/* dx_n (C x P) = W^T (C x O) * dy_n (O x P): the pointwise input gradient of one image (the
 * GEMM of cn_conv2d_backward_input on its columns: the same floats) */
static void pwd_input_grad_one(const pwd_job *J, const float *dn, long n, int tid);

static CONV_A512 void pwd_chunk_task(void *ctx, long ch, int tid) {
  const pwd_job *J = (const pwd_job *)ctx;
  const long O = J->O, C = J->C, P = J->P;
  const long n0 = ch * J->n / J->nchunks, n1 = (ch + 1) * J->n / J->nchunks;
  const long to = (O + PWD_R1 - 1) / PWD_R1, tc = (C + PWD_R2 - 1) / PWD_R2;
  float *acc = cn_ws(tid, CN_WS_TMP, (size_t)(to * tc * PWD_ACC));
  float *xs = J->tf ? cn_ws(tid, CN_WS_TMP2, (size_t)(C * P)) : NULL;
  float *ds = J->dt ? cn_ws(tid, CN_WS_BLK1, (size_t)(O * P)) : NULL;
  if (!acc || (J->tf && !xs) || (J->dt && !ds)) abort();
  memset(acc, 0, sizeof(float) * (size_t)(to * tc * PWD_ACC));
  for (long n = n0; n < n1; n++) {
    const float *xn = J->x + n * C * P, *dn = J->dy + n * O * P;
    if (J->dt) dn = ds; /* this image's dy, computed into the L2 block by block below */
    if (J->tf) { /* this image's transformed input, once */
      cn_intf_rows(J->tf, xn, P, xs, P, C, P, 0, 1);
      xn = xs;
    }
    for (long ob = 0; ob < to; ob++) {
      const long o0 = ob * PWD_R1, r1 = O - o0 < PWD_R1 ? O - o0 : PWD_R1;
      /* the next block of dy rows (the next image's first at the end: dy is contiguous),
       * prefetched along this block's tiles; with dt, this block's dy rows are first computed
       * from the gradient and the batch norm's input, and the next block's rows of both are
       * prefetched (memory and compute overlap) */
      if (J->dt) cn_bn_bw_apply_rows(J->dt, n, o0, o0 + r1, ds + o0 * P);
      const char *next = J->dt ? (const char *)(J->dt->g + (n * O + o0 + PWD_R1) * P)
                               : (const char *)(dn + (o0 + PWD_R1) * P);
      const char *nextx = J->dt ? (const char *)(J->dt->x + (n * O + o0 + PWD_R1) * P) : NULL;
      const long lines = ob + 1 < to || n + 1 < n1 ? PWD_R1 * P / 16 : 0, per_tile = (lines + tc - 1) / tc;
      for (long cb = 0; cb < tc; cb++) {
        const long c0 = cb * PWD_R2, r2 = C - c0 < PWD_R2 ? C - c0 : PWD_R2;
        const long l0 = cb * per_tile, nl = l0 >= lines ? 0 : lines - l0 < per_tile ? lines - l0 : per_tile;
        float *a = acc + (ob * tc + cb) * PWD_ACC;
        if (nextx)
          for (long l = l0; l < l0 + nl; l++) _mm_prefetch(nextx + l * 64, _MM_HINT_T0);
        if (r1 == PWD_R1 && r2 == PWD_R2)
          pwd_tile_full(dn + o0 * P, xn + c0 * P, P, a, next + l0 * 64, nl);
        else
          pwd_tile_edge(dn + o0 * P, xn + c0 * P, P, (int)r1, (int)r2, a);
      }
    }
    if (J->dx) pwd_input_grad_one(J, dn, n, tid);
    if (J->bnp && ((n + 1) % J->G == 0 || n + 1 == J->n)) /* the image group's dx and x, in cache */
      cn_bn_bw_group_parts(J->dx, J->x, J->tf, J->n, C, P, n / J->G, n / J->G + 1, 0, C, J->bnp);
  }
  float *out = J->part + ch * O * C;
  for (long ob = 0; ob < to; ob++)
    for (long cb = 0; cb < tc; cb++) {
      const long o0 = ob * PWD_R1, c0 = cb * PWD_R2;
      const float *a = acc + (ob * tc + cb) * PWD_ACC;
      for (long i = 0; i < PWD_R1 && o0 + i < O; i++)
        for (long j = 0; j < PWD_R2 && c0 + j < C; j++)
          out[(o0 + i) * C + c0 + j] = _mm512_reduce_add_ps(_mm512_load_ps(a + (i * PWD_R2 + j) * 16));
    }
}

/* whether the dot-product kernel takes this weight gradient: AVX-512, pointwise, one group,
 * planes of 16x16 and more, at most 8192 weights (a thread's tile accumulators, 64 bytes per
 * weight, stay within half the L2). Measured in MobileNetV1/V2 training against the packed
 * GEMM: 32x32 planes 1.4-2x faster, 16x16 1.1-1.25x; slower on 8x8 (2x) and with 128x128
 * weights (1 MB of accumulators). */
#define PWD_MIN_P 256
#define PWD_MAX_WEIGHTS 8192
static int pwd_applies(const cn_conv_geom *g) {
  static int off = -1; /* CONVNETS_PW_DOT=0: the packed GEMM instead (for comparisons) */
  if (off < 0) {
    const char *e = getenv("CONVNETS_PW_DOT");
    off = e && !strcmp(e, "0");
  }
  return !off && cn_isa_id == 2 && g->groups == 1 && cn_conv_pointwise(g) && g->oh * g->ow >= PWD_MIN_P &&
         g->o * g->c <= PWD_MAX_WEIGHTS;
}

static void pwd_input_grad_one(const pwd_job *J, const float *dn, long n, int tid) {
  im2col_ctx s;
  cn_gemm G;
  pw_input_gemm(&G, &s, dn, J->w, J->dx + n * J->C * J->P, J->g, 0, 1);
  G.apre = J->apre;
  cn_gemm_serial(&G, 0, J->C, 0, J->P, tid);
}

static long pwd_chunks(const cn_conv_geom *g) {
  long nchunks = 1; /* a power of two, at most the batch (depends on the shape only) */
  while (nchunks * 2 <= BW_MAX_CHUNKS && nchunks * 2 <= g->n) nchunks *= 2;
  return nchunks;
}

static void pwd_backward(const float *dy, const float *x, const cn_intf *tf, float *dw, const cn_conv_geom *g,
                         const float *w, float *dx, const cn_bwtf *dt, float *bnp) {
  const long nchunks = pwd_chunks(g);
  const long count = g->o * g->c;
  float *part = cn_gws(CN_GWS_B, (size_t)(nchunks * count));
  if (!part) abort();
  pwd_job J = {dy, x, tf, part, g->n, g->o, g->c, g->oh * g->ow, nchunks, dx, w, NULL, g, dt, bnp,
               cn_bn_group_images(g->oh * g->ow)};
  float *apre = NULL;
  if (dx) { /* W^T packed once for every image's GEMM */
    im2col_ctx s;
    cn_gemm G;
    pw_input_gemm(&G, &s, dy, w, dx, g, 0, g->n);
    apre = cn_gws(CN_GWS_A, cn_gemm_apre_floats(&G));
    if (!apre) abort();
    cn_gemm_prepack_a(&G, apre);
    J.apre = apre;
  }
  cn_parallel(nchunks, pwd_chunk_task, &J);
  sum_job S = {part, dw, count, nchunks, 16384};
  cn_parallel((S.count + S.per - 1) / S.per, sum_chunks_task, &S);
}
#endif

int cn_conv2d_backward_pw(const float *dy, const float *x, const cn_intf *tf, const float *w, float *dx, float *dw,
                          const cn_conv_geom *g, const cn_bwtf *dt, float *bnp) {
#if defined(CN_X86)
  if (tf && !cn_intf_supported(g)) abort(); /* callers check */
  /* (one input channel: the separate kernels take the depthwise path; fewer image chunks than
   * threads: the separate input gradient uses every thread) */
  if (!pwd_applies(g) || g->c < 2 || (g->n < BW_MAX_CHUNKS && g->n < cn_num_threads())) return 0;
  /* the partials when asked for, with an activation in the transform, and every image group
   * inside one chunk of images */
  if (!(tf && tf->act) || !cn_bn_groups_in_chunks(g->n, pwd_chunks(g), g->oh * g->ow)) bnp = NULL;
  /* more than 64 input channels (MobileNetV2's projections): only for the partials, which then
   * read x while it is in cache for the weight gradient (apart, the input gradient is faster) */
  if (g->c > 64 && !bnp) return 0;
  pwd_backward(dy, x, tf, dw, g, w, dx, dt, bnp);
  return bnp ? 2 : 1;
#else
  (void)dy, (void)x, (void)tf, (void)w, (void)dx, (void)dw, (void)g, (void)dt, (void)bnp;
  return 0;
#endif
}

void cn_conv2d_backward_weight(const float *dy, const float *x, float *dw, const cn_conv_geom *g) {
  cn_conv2d_backward_weight_tf(dy, x, NULL, dw, g);
}

void cn_conv2d_backward_weight_tf(const float *dy, const float *x, const cn_intf *tf, float *dw,
                                  const cn_conv_geom *g) {
  const long cg = g->c / g->groups, og = g->o / g->groups;
  if (tf && !cn_intf_supported(g)) abort(); /* callers check */
  if (cg == 1) {
    cn_dw_backward_weight_tf(dy, x, tf, dw, g);
    return;
  }
  if (!tf && cn_conv_direct_bw_applies(g)) {
    cn_conv_direct_backward_weight(dy, x, dw, g);
    return;
  }
#if defined(CN_X86)
  if (pwd_applies(g)) {
    pwd_backward(dy, x, tf, dw, g, NULL, NULL, NULL, NULL);
    return;
  }
#endif
  const long P = g->oh * g->ow, Kg = cg * g->kh * g->kw;
  /* a power of two (balanced on 2 or 4 threads), at most the batch size */
  long nchunks = 1;
  if (og * Kg < BW_SMALL_DW && 2.0 * (double)og * (double)Kg * (double)(g->n * P) >= 4.0e6)
    while (nchunks * 2 <= BW_MAX_CHUNKS && nchunks * 2 <= g->n) nchunks *= 2;
  for (long gr = 0; gr < g->groups; gr++) {
    if (nchunks >= 2) {
      float *part = cn_gws(CN_GWS_B, (size_t)(nchunks * og * Kg));
      if (!part) abort();
      bw_job J = {dy, x, part, g, gr, cg, og, Kg, P, nchunks, tf};
      cn_parallel(nchunks, bw_chunk_task, &J);
      sum_job S = {part, dw + gr * og * Kg, og * Kg, nchunks, 16384};
      cn_parallel((S.count + S.per - 1) / S.per, sum_chunks_task, &S);
      continue;
    }
    dyrows_ctx a = {dy, g->o, gr * og, P};
    im2col_ctx s;
    im2col_init(&s, x, g->c, g->h, g->w, gr * cg, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow);
    s.tf = tf;
    cn_gemm G;
    cn_gemm_init_strided(&G, og, Kg, g->n * P, NULL, 0, 0, NULL, 0, 0, dw + gr * og * Kg, Kg);
    G.pack_a = pack_a_dyrows;
    G.actx = &a;
    G.pack_b = pack_b_im2col_t;
    G.bctx = &s;
    cn_gemm_parallel(&G);
  }
}
