/* Batch norm, elementwise, depthwise convolution, pooling, dense helpers, softmax and optimiser
 * kernels. The memory-bound inner loops live in kernels_isa.h, compiled once per instruction
 * set (scalar/NEON baseline, AVX2, AVX-512) and selected at run time through the table K; the
 * AVX-512 depthwise fast paths are in dw_avx512.c. This file holds the threading (fixed, thread-
 * count independent chunking wherever something is summed) and the dispatch. */
#include "cn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  float (*sum)(const float *x, long n);
  void (*seg_stats)(const float *x, long hw, float *mean, float *m2);
  void (*dot2)(const float *dy, const float *x, long n, float m, float *sdy, float *sdyx);
  void (*bn_apply)(const float *p, float *q, long hw, float m, float k, float bt);
  void (*bn_bw_apply)(const float *g, const float *x, float *d, long hw, float m, float k, float mdy, float q);
  void (*ew)(int op, const float *a, const float *b, float *y, long n, float s);
  void (*add_inplace)(float *acc, const float *a, long n);
  void (*adam)(float *p, const float *g, float *m, float *v, long n, float b1, float b2, float omb1, float omb2, float wd,
               float step_size, float inv_bc2sqrt, float eps);
  void (*sgd)(float *p, const float *g, float *buf, long n, float lr, float mom, float omd, float wd, int nesterov,
              int first);
  void (*transpose_pack)(const float *const *rows, int nrows, long len, float *dst, int stride);
  void (*make_phases)(const float *x, long H, long W, long sh, long sw, long ph, long pw, long Hq, long Wq,
                      long pstride, float *dst);
  void (*dw_plane)(const float *x, long H, long W, const float *wk, float bias, float *y, long kh, long kw, long sh,
                   long sw, long ph, long pw, long oh, long ow, int accumulate, float *ph_buf, float *tmp);
  void (*dw_wgrad_planes)(const float *dy, long dy_stride, const float *x, long x_stride, long count, long H, long W,
                          long kh, long kw, long sh, long sw, long ph, long pw, long oh, long ow, float *ph_buf,
                          float *dyp, double *acc);
  void (*dw_dgrad_plane)(const float *dy, const float *wk, float *ph_buf, long kh, long kw, long sh, long sw, long oh,
                         long ow, float *dyp);
  int lanes;
} cn_ktab;

#define CN_CAT2(a, b) a##_##b
#define CN_CAT(a, b) CN_CAT2(a, b)
#define FN(name) CN_CAT(name, ISA)

#define ISA scalar
#define ISA_ATTR
#define LANES 8
#include "kernels_isa.h"
#undef ISA
#undef ISA_ATTR
#undef LANES

#if defined(CN_X86)
#include <immintrin.h>
#define ISA_AVX 1
#define ISA avx2
#define ISA_ATTR __attribute__((target("avx2,fma")))
#define LANES 16
#include "kernels_isa.h"
#undef ISA
#undef ISA_ATTR
#undef LANES

#define ISA avx512
#if defined(__clang__)
#define ISA_ATTR __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#else /* GCC: also ask the vectoriser for 512-bit vectors */
#define ISA_ATTR __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")))
#endif
#define LANES 32
#include "kernels_isa.h"
#undef ISA
#undef ISA_ATTR
#undef LANES
#undef ISA_AVX
#endif

static cn_ktab K;
static int K_ready = 0;
static int K_isa = 0; /* 0 scalar, 1 avx2, 2 avx512, 3 neon */

void cn_kernels_select(int isa) {
  K_isa = isa;
  fill_table_scalar(&K);
#if defined(CN_X86)
  if (isa == 1) fill_table_avx2(&K);
  if (isa == 2) fill_table_avx512(&K);
#endif
  (void)isa;
  K_ready = 1;
}

static inline void ensure_k(void) {
  if (!K_ready) cn_isa_name(); /* selects the ISA and fills the table */
}

void cn_transpose_pack(const float *const *rows, int nrows, long len, float *dst, int stride) {
  ensure_k();
  K.transpose_pack(rows, nrows, len, dst, stride);
}

/* ---- chunked parallel loops over flat arrays --------------------------------------------------- */

#define EW_CHUNK 32768L

typedef struct {
  int op;
  const float *a, *b;
  float *y;
  long n;
  float s;
} ew_job;

static void ew_task(void *ctx, long t, int tid) {
  (void)tid;
  const ew_job *J = (const ew_job *)ctx;
  const long i0 = t * EW_CHUNK;
  const long len = J->n - i0 < EW_CHUNK ? J->n - i0 : EW_CHUNK;
  if (J->op == CN_EW_ADD_INPLACE)
    K.add_inplace(J->y + i0, J->a + i0, len);
  else
    K.ew(J->op, J->a + i0, J->b ? J->b + i0 : NULL, J->y + i0, len, J->s);
}

void cn_elementwise(int op, const float *a, const float *b, float *y, long n, float s) {
  ensure_k();
  if (n <= 0) return;
  ew_job J = {op, a, b, y, n, s};
  const long chunks = (n + EW_CHUNK - 1) / EW_CHUNK;
  if (chunks < 4)
    for (long t = 0; t < chunks; t++) ew_task(&J, t, 0);
  else
    cn_parallel(chunks, ew_task, &J);
}

/* ---- batch norm ------------------------------------------------------------------------------
 * Statistics are gathered in memory order: the batch is cut into a fixed number of chunks
 * (independent of the thread count, so results are deterministic), each chunk accumulates
 * per-channel partials in double (Chan's combination of per-plane mean/M2 for the variance),
 * and the chunks are combined in order. The normalisation is a second streaming pass. */

#define BN_MAX_CHUNKS 16

typedef struct {
  const float *x, *dy, *wt, *bs, *mean, *var, *invstd;
  float *y;
  long n, c, hw, nchunks, planes_per_task;
  double *pa, *pb;       /* partials [chunk][c] */
  const float *km, *kk, *kb, *kq; /* per-channel coefficients of the apply pass */
} bn_job;

static long bn_chunk_lo(const bn_job *J, long i) { return i * J->n / J->nchunks; }

static void bn_stats_task(void *ctx, long ch, int tid) {
  (void)tid;
  const bn_job *J = (const bn_job *)ctx;
  double *mean = J->pa + ch * J->c, *m2 = J->pb + ch * J->c;
  const long n0 = bn_chunk_lo(J, ch), n1 = bn_chunk_lo(J, ch + 1);
  for (long ci = 0; ci < J->c; ci++) mean[ci] = m2[ci] = 0.0;
  for (long ni = n0; ni < n1; ni++) {
    const double cnt = (double)(ni - n0) * (double)J->hw, nb = (double)J->hw, tot = cnt + nb;
    const float *p = J->x + ni * J->c * J->hw;
    for (long ci = 0; ci < J->c; ci++, p += J->hw) {
      float sm, sq;
      K.seg_stats(p, J->hw, &sm, &sq);
      const double delta = (double)sm - mean[ci];
      mean[ci] += delta * nb / tot;
      m2[ci] += (double)sq + delta * delta * cnt * nb / tot;
    }
  }
}

static void bn_apply_task(void *ctx, long t, int tid) {
  (void)tid;
  const bn_job *J = (const bn_job *)ctx;
  const long p0 = t * J->planes_per_task;
  long p1 = p0 + J->planes_per_task;
  if (p1 > J->n * J->c) p1 = J->n * J->c;
  for (long pl = p0; pl < p1; pl++) {
    const long ci = pl % J->c;
    K.bn_apply(J->x + pl * J->hw, J->y + pl * J->hw, J->hw, J->km[ci], J->kk[ci], J->kb[ci]);
  }
}

static void bn_bw_stats_task(void *ctx, long ch, int tid) {
  (void)tid;
  const bn_job *J = (const bn_job *)ctx;
  double *sdy = J->pa + ch * J->c, *sdyx = J->pb + ch * J->c;
  const long n0 = bn_chunk_lo(J, ch), n1 = bn_chunk_lo(J, ch + 1);
  for (long ci = 0; ci < J->c; ci++) sdy[ci] = sdyx[ci] = 0.0;
  for (long ni = n0; ni < n1; ni++) {
    const long off = ni * J->c * J->hw;
    for (long ci = 0; ci < J->c; ci++) {
      float a, b;
      K.dot2(J->dy + off + ci * J->hw, J->x + off + ci * J->hw, J->hw, J->mean[ci], &a, &b);
      sdy[ci] += a;
      sdyx[ci] += b;
    }
  }
}

static void bn_bw_apply_task(void *ctx, long t, int tid) {
  (void)tid;
  const bn_job *J = (const bn_job *)ctx;
  const long p0 = t * J->planes_per_task;
  long p1 = p0 + J->planes_per_task;
  if (p1 > J->n * J->c) p1 = J->n * J->c;
  for (long pl = p0; pl < p1; pl++) {
    const long ci = pl % J->c;
    K.bn_bw_apply(J->dy + pl * J->hw, J->x + pl * J->hw, J->y + pl * J->hw, J->hw, J->km[ci], J->kk[ci], J->kb[ci],
                  J->kq[ci]);
  }
}

/* run tasks on the pool, or inline when the tensor is small */
static void run_tasks(long ntasks, cn_task_fn fn, void *ctx, long elements) {
  if (elements < 65536 || ntasks == 1)
    for (long t = 0; t < ntasks; t++) fn(ctx, t, 0);
  else
    cn_parallel(ntasks, fn, ctx);
}

static long apply_planes_per_task(long hw) {
  long p = 16384 / (hw > 0 ? hw : 1);
  return p < 1 ? 1 : p;
}

void cn_bn_train(const float *x, const float *wt, const float *bs, float *y, float *mean, float *var, float *invstd,
                 long n, long c, long hw, double eps) {
  ensure_k();
  bn_job J;
  memset(&J, 0, sizeof(J));
  J.x = x;
  J.y = y;
  J.n = n;
  J.c = c;
  J.hw = hw;
  J.nchunks = n < BN_MAX_CHUNKS ? n : BN_MAX_CHUNKS;
  if (J.nchunks < 1) J.nchunks = 1;
  double *part = (double *)malloc(sizeof(double) * (size_t)(2 * J.nchunks * c + 1));
  float *coef = (float *)malloc(sizeof(float) * (size_t)(3 * c + 1));
  if (!part || !coef) abort();
  J.pa = part;
  J.pb = part + J.nchunks * c;
  run_tasks(J.nchunks, bn_stats_task, &J, n * c * hw);
  for (long ci = 0; ci < c; ci++) {
    double cnt = 0.0, m = 0.0, m2 = 0.0;
    for (long ch = 0; ch < J.nchunks; ch++) {
      const double nb = (double)(bn_chunk_lo(&J, ch + 1) - bn_chunk_lo(&J, ch)) * (double)hw;
      if (nb == 0) continue;
      const double tot = cnt + nb, d = J.pa[ch * c + ci] - m;
      m += d * nb / tot;
      m2 += J.pb[ch * c + ci] + d * d * cnt * nb / tot;
      cnt = tot;
    }
    const double v = cnt > 0 ? m2 / cnt : 0.0;
    const double is = 1.0 / sqrt(v + eps);
    mean[ci] = (float)m;
    var[ci] = (float)v;
    invstd[ci] = (float)is;
    coef[ci] = (float)m;
    coef[c + ci] = (float)is * (wt ? wt[ci] : 1.0f);
    coef[2 * c + ci] = bs ? bs[ci] : 0.0f;
  }
  J.km = coef;
  J.kk = coef + c;
  J.kb = coef + 2 * c;
  J.planes_per_task = apply_planes_per_task(hw);
  run_tasks((n * c + J.planes_per_task - 1) / J.planes_per_task, bn_apply_task, &J, n * c * hw);
  free(part);
  free(coef);
}

void cn_bn_eval(const float *x, const float *mean, const float *var, const float *wt, const float *bs, float *y, long n,
                long c, long hw, double eps) {
  ensure_k();
  bn_job J;
  memset(&J, 0, sizeof(J));
  float *coef = (float *)malloc(sizeof(float) * (size_t)(3 * c + 1));
  if (!coef) abort();
  for (long ci = 0; ci < c; ci++) {
    coef[ci] = mean[ci];
    coef[c + ci] = (float)(1.0 / sqrt((double)var[ci] + eps)) * (wt ? wt[ci] : 1.0f);
    coef[2 * c + ci] = bs ? bs[ci] : 0.0f;
  }
  J.x = x;
  J.y = y;
  J.n = n;
  J.c = c;
  J.hw = hw;
  J.km = coef;
  J.kk = coef + c;
  J.kb = coef + 2 * c;
  J.planes_per_task = apply_planes_per_task(hw);
  run_tasks((n * c + J.planes_per_task - 1) / J.planes_per_task, bn_apply_task, &J, n * c * hw);
  free(coef);
}

void cn_bn_backward(const float *dy, const float *x, const float *mean, const float *invstd, const float *wt,
                    float *dx, float *dw, float *db, long n, long c, long hw) {
  ensure_k();
  bn_job J;
  memset(&J, 0, sizeof(J));
  J.dy = dy;
  J.x = x;
  J.mean = mean;
  J.y = dx;
  J.n = n;
  J.c = c;
  J.hw = hw;
  J.nchunks = n < BN_MAX_CHUNKS ? n : BN_MAX_CHUNKS;
  if (J.nchunks < 1) J.nchunks = 1;
  double *part = (double *)malloc(sizeof(double) * (size_t)(2 * J.nchunks * c + 1));
  float *coef = (float *)malloc(sizeof(float) * (size_t)(4 * c + 1));
  if (!part || !coef) abort();
  J.pa = part;
  J.pb = part + J.nchunks * c;
  run_tasks(J.nchunks, bn_bw_stats_task, &J, 2 * n * c * hw);
  const double cnt = (double)n * (double)hw;
  for (long ci = 0; ci < c; ci++) {
    double sdy = 0.0, sdyx = 0.0;
    for (long ch = 0; ch < J.nchunks; ch++) {
      sdy += J.pa[ch * c + ci];
      sdyx += J.pb[ch * c + ci];
    }
    const double is = invstd[ci];
    sdyx *= is; /* sum dy * xhat */
    dw[ci] = (float)sdyx;
    db[ci] = (float)sdy;
    coef[ci] = mean[ci];
    coef[c + ci] = (wt ? wt[ci] : 1.0f) * (float)is;
    coef[2 * c + ci] = (float)(sdy / cnt);
    coef[3 * c + ci] = (float)(sdyx / cnt * is);
  }
  J.km = coef;
  J.kk = coef + c;
  J.kb = coef + 2 * c;
  J.kq = coef + 3 * c;
  J.planes_per_task = apply_planes_per_task(hw);
  run_tasks((n * c + J.planes_per_task - 1) / J.planes_per_task, bn_bw_apply_task, &J, n * c * hw);
  free(part);
  free(coef);
}

/* ---- depthwise convolution (one input channel per group; kernels_isa.h does the planes) ------- */

typedef struct {
  const float *x, *w, *b;
  float *y;
  const cn_conv_geom *g;
  long mult, planes_per_task, total, nchunks;
  int flip; /* backward input via a stride-1 forward pass with the flipped kernel */
  double *part;
  const cn_dw_plan *plan; /* AVX-512 stride-1 fast path, or NULL */
  int w16;                /* AVX-512 row path for 3x3, pad-1 width, W % 16 == 0 */
} dw_job;

/* the AVX-512 fast path plan for a stride-1 plane geometry, if usable */
static int dw_fast_plan(cn_dw_plan *P, long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh,
                        long ow) {
  if (K_isa != 2 || !cn_dw_s1_applicable(H, W, kh, kw, sh, sw, ph, pw, oh, ow)) return 0;
  return cn_dw_s1_prepare(P, H, W, kh, kw, ph, pw, oh, ow);
}

/* scratch sizes for a plane with output oh x ow */
static long dw_phase_floats(long oh, long ow, long kh, long kw, long sh, long sw) {
  const long Hq = oh + (kh - 1) / sh, Wq = ow + (kw - 1) / sw;
  return sh * sw * (Hq * Wq + K.lanes) + 16;
}
static long dw_row_floats(long oh, long ow, long kh, long kw, long sw) {
  const long Wq = ow + (kw - 1) / sw;
  (void)kh;
  return ((oh - 1) * Wq + ow + K.lanes) + 32;
}

static void dw_fwd_task(void *ctx, long t, int tid) {
  const dw_job *J = (const dw_job *)ctx;
  const cn_conv_geom *g = J->g;
  float *ph = cn_ws(tid, CN_WS_TMP, (size_t)dw_phase_floats(g->oh, g->ow, g->kh, g->kw, g->sh, g->sw));
  float *tmp = cn_ws(tid, CN_WS_TMP2, (size_t)dw_row_floats(g->oh, g->ow, g->kh, g->kw, g->sw));
  if (!ph || !tmp) abort();
  const long khw = g->kh * g->kw;
  const long p0 = t * J->planes_per_task;
  long p1 = p0 + J->planes_per_task;
  if (p1 > J->total) p1 = J->total;
  if (J->w16) {
    for (long pl = p0; pl < p1; pl++) {
      const long n = pl / g->o, oc = pl % g->o, ic = oc / J->mult;
      cn_dw_w16_plane_avx512(J->x + (n * g->c + ic) * g->h * g->w, J->w + oc * khw, J->b ? J->b[oc] : 0.0f,
                             J->y + pl * g->oh * g->ow, g->h, g->w, g->ph, g->oh, 0);
    }
    return;
  }
  if (J->plan) {
    for (long pl = p0; pl < p1; pl++) {
      const long n = pl / g->o, oc = pl % g->o, ic = oc / J->mult;
      cn_dw_s1_plane_avx512(J->x + (n * g->c + ic) * g->h * g->w, J->w + oc * khw, J->b ? J->b[oc] : 0.0f,
                            J->y + pl * g->oh * g->ow, J->plan, 0);
    }
    return;
  }
  for (long pl = p0; pl < p1; pl++) {
    const long n = pl / g->o, oc = pl % g->o, ic = oc / J->mult;
    K.dw_plane(J->x + (n * g->c + ic) * g->h * g->w, g->h, g->w, J->w + oc * khw, J->b ? J->b[oc] : 0.0f,
               J->y + pl * g->oh * g->ow, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow, 0, ph, tmp);
  }
}

static long planes_per_task(long total, long plane_work) {
  const int T = cn_num_threads();
  if (T == 1) return total;
  long per = total / (8L * T);
  const long min_per = 16384 / (plane_work > 0 ? plane_work : 1) + 1;
  if (per < min_per) per = min_per;
  if (per < 1) per = 1;
  return per;
}

void cn_dw_forward(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g) {
  ensure_k();
  dw_job J;
  memset(&J, 0, sizeof(J));
  J.x = x;
  J.w = w;
  J.b = b;
  J.y = y;
  J.g = g;
  J.mult = g->o / g->c;
  J.total = g->n * g->o;
  J.planes_per_task = planes_per_task(J.total, g->oh * g->ow * g->kh * g->kw);
  cn_dw_plan P;
  J.w16 = K_isa == 2 && cn_dw_w16_applicable(g->w, g->kh, g->kw, g->sh, g->sw, g->pw, g->ow);
  if (!J.w16 && dw_fast_plan(&P, g->h, g->w, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow)) J.plan = &P;
  cn_parallel((J.total + J.planes_per_task - 1) / J.planes_per_task, dw_fwd_task, &J);
  if (J.plan) cn_dw_s1_release(&P);
}

/* dx planes (n, ic) for the task's range. */
static void dw_bwd_in_task(void *ctx, long t, int tid) {
  const dw_job *J = (const dw_job *)ctx;
  const cn_conv_geom *g = J->g;
  const long khw = g->kh * g->kw;
  const long p0 = t * J->planes_per_task;
  long p1 = p0 + J->planes_per_task;
  if (p1 > J->total) p1 = J->total;
  if (J->flip) {
    /* dx = sum_m conv_s1(dy plane, flipped kernel, padding k-1-p) */
    const long ph2 = g->kh - 1 - g->ph, pw2 = g->kw - 1 - g->pw;
    float *ph = cn_ws(tid, CN_WS_TMP, (size_t)dw_phase_floats(g->h, g->w, g->kh, g->kw, 1, 1));
    float *tmp = cn_ws(tid, CN_WS_TMP2, (size_t)dw_row_floats(g->h, g->w, g->kh, g->kw, 1));
    float wf[64];
    float *wfl = khw <= 64 ? wf : (float *)malloc(sizeof(float) * (size_t)khw);
    if (!ph || !tmp || !wfl) abort();
    for (long pl = p0; pl < p1; pl++) {
      const long n = pl / g->c, ic = pl % g->c;
      float *dxp = (float *)J->y + pl * g->h * g->w;
      for (long m = 0; m < J->mult; m++) {
        const long oc = ic * J->mult + m;
        const float *wk = J->w + oc * khw;
        for (long q = 0; q < khw; q++) wfl[q] = wk[khw - 1 - q];
        if (J->w16) {
          cn_dw_w16_plane_avx512(J->x + (n * g->o + oc) * g->oh * g->ow, wfl, 0.0f, dxp, g->oh, g->ow,
                                 g->kh - 1 - g->ph, g->h, m > 0);
          continue;
        }
        if (J->plan) {
          cn_dw_s1_plane_avx512(J->x + (n * g->o + oc) * g->oh * g->ow, wfl, 0.0f, dxp, J->plan, m > 0);
          continue;
        }
        K.dw_plane(J->x + (n * g->o + oc) * g->oh * g->ow, g->oh, g->ow, wfl, 0.0f, dxp, g->kh, g->kw, 1, 1, ph2, pw2,
                   g->h, g->w, m > 0, ph, tmp);
      }
    }
    if (wfl != wf) free(wfl);
    return;
  }
  /* any stride: accumulate into the phase planes of the padded input gradient, then extract */
  const long sh = g->sh, sw = g->sw;
  const long Hq = g->oh + (g->kh - 1) / sh, Wq = g->ow + (g->kw - 1) / sw, ps = Hq * Wq + K.lanes;
  float *ph = cn_ws(tid, CN_WS_TMP, (size_t)dw_phase_floats(g->oh, g->ow, g->kh, g->kw, sh, sw));
  float *dyp = cn_ws(tid, CN_WS_TMP2, (size_t)dw_row_floats(g->oh, g->ow, g->kh, g->kw, sw));
  if (!ph || !dyp) abort();
  for (long pl = p0; pl < p1; pl++) {
    const long n = pl / g->c, ic = pl % g->c;
    memset(ph, 0, sizeof(float) * (size_t)(sh * sw * ps));
    for (long m = 0; m < J->mult; m++) {
      const long oc = ic * J->mult + m;
      K.dw_dgrad_plane(J->x + (n * g->o + oc) * g->oh * g->ow, J->w + oc * khw, ph, g->kh, g->kw, sh, sw, g->oh, g->ow,
                       dyp);
    }
    float *dxp = (float *)J->y + pl * g->h * g->w;
    for (long iy = 0; iy < g->h; iy++) {
      float *d = dxp + iy * g->w;
      const long r = iy + g->ph, py = r % sh, rq = r / sh;
      if (rq >= Hq) {
        memset(d, 0, sizeof(float) * (size_t)g->w);
        continue;
      }
      /* ix = cq*sw + px - pw for phase column cq of phase px */
      if (Wq * sw - g->pw < g->w) memset(d, 0, sizeof(float) * (size_t)g->w);
      for (long px = 0; px < sw; px++) {
        const float *srow = ph + (py * sw + px) * ps + rq * Wq;
        long c0 = 0;
        while (c0 * sw + px - g->pw < 0) c0++;
        for (long cq = c0; cq < Wq; cq++) {
          const long ix = cq * sw + px - g->pw;
          if (ix >= g->w) break;
          d[ix] = srow[cq];
        }
      }
    }
  }
}

void cn_dw_backward_input(const float *dy, const float *w, float *dx, const cn_conv_geom *g) {
  ensure_k();
  dw_job J;
  memset(&J, 0, sizeof(J));
  J.x = dy;
  J.w = w;
  J.y = dx;
  J.g = g;
  J.mult = g->o / g->c;
  J.total = g->n * g->c;
  J.flip = (g->sh == 1 && g->sw == 1 && g->ph <= g->kh - 1 && g->pw <= g->kw - 1);
  J.planes_per_task = planes_per_task(J.total, g->oh * g->ow * g->kh * g->kw * J.mult);
  cn_dw_plan P;
  J.w16 = J.flip && K_isa == 2 && cn_dw_w16_applicable(g->ow, g->kh, g->kw, 1, 1, g->kw - 1 - g->pw, g->w);
  if (J.flip && !J.w16 && dw_fast_plan(&P, g->oh, g->ow, g->kh, g->kw, 1, 1, g->kh - 1 - g->ph, g->kw - 1 - g->pw, g->h, g->w))
    J.plan = &P;
  cn_parallel((J.total + J.planes_per_task - 1) / J.planes_per_task, dw_bwd_in_task, &J);
  if (J.plan) cn_dw_s1_release(&P);
}

/* Weight gradient: the batch is cut into a fixed number of chunks (deterministic whatever the
 * thread count); each chunk walks its images in memory order and accumulates per-channel taps
 * in double; the chunks are then added in order. */
#define DW_MAX_CHUNKS 16

static void dw_bwd_w_task(void *ctx, long ch, int tid) {
  const dw_job *J = (const dw_job *)ctx;
  const cn_conv_geom *g = J->g;
  const long khw = g->kh * g->kw;
  float *ph = cn_ws(tid, CN_WS_TMP, (size_t)dw_phase_floats(g->oh, g->ow, g->kh, g->kw, g->sh, g->sw));
  float *dyp = cn_ws(tid, CN_WS_TMP2, (size_t)dw_row_floats(g->oh, g->ow, g->kh, g->kw, g->sw));
  if (!ph || !dyp) abort();
  double *acc = J->part + ch * g->o * khw;
  for (long q = 0; q < g->o * khw; q++) acc[q] = 0.0;
  const long n0 = ch * g->n / J->nchunks, n1 = (ch + 1) * g->n / J->nchunks;
  const long ohw = g->oh * g->ow, hw = g->h * g->w;
  if (J->w16 && ohw >= 256) {
    for (long n = n0; n < n1; n++)
      for (long oc = 0; oc < g->o; oc++)
        cn_dw_w16_wgrad_avx512(J->b + (n * g->o + oc) * ohw, 0, J->x + (n * g->c + oc / J->mult) * hw, 0, 1, g->h,
                               g->w, g->ph, g->oh, acc + oc * khw);
    return;
  }
  if (J->w16) {
    for (long oc = 0; oc < g->o; oc++)
      cn_dw_w16_wgrad_avx512(J->b + (n0 * g->o + oc) * ohw, g->o * ohw, J->x + (n0 * g->c + oc / J->mult) * hw,
                             g->c * hw, n1 - n0, g->h, g->w, g->ph, g->oh, acc + oc * khw);
    return;
  }
  if (J->plan) {
    if (ohw >= 256) {
      for (long n = n0; n < n1; n++)
        for (long oc = 0; oc < g->o; oc++)
          cn_dw_s1_wgrad_avx512(J->b + (n * g->o + oc) * ohw, 0, J->x + (n * g->c + oc / J->mult) * hw, 0, 1, J->plan,
                                acc + oc * khw);
    } else {
      for (long oc = 0; oc < g->o; oc++)
        cn_dw_s1_wgrad_avx512(J->b + (n0 * g->o + oc) * ohw, g->o * ohw, J->x + (n0 * g->c + oc / J->mult) * hw,
                              g->c * hw, n1 - n0, J->plan, acc + oc * khw);
    }
    return;
  }
  if (ohw >= 256) {
    /* large planes: memory order, one plane pair per call */
    for (long n = n0; n < n1; n++)
      for (long oc = 0; oc < g->o; oc++)
        K.dw_wgrad_planes(J->b + (n * g->o + oc) * ohw, 0, J->x + (n * g->c + oc / J->mult) * hw, 0, 1, g->h, g->w,
                          g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow, ph, dyp, acc + oc * khw);
    return;
  }
  /* small planes: per channel over the chunk's images, lanes reduced once */
  for (long oc = 0; oc < g->o; oc++)
    K.dw_wgrad_planes(J->b + (n0 * g->o + oc) * ohw, g->o * ohw, J->x + (n0 * g->c + oc / J->mult) * hw, g->c * hw,
                      n1 - n0, g->h, g->w, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow, ph, dyp,
                      acc + oc * khw);
}

void cn_dw_backward_weight(const float *dy, const float *x, float *dw, const cn_conv_geom *g) {
  ensure_k();
  dw_job J;
  memset(&J, 0, sizeof(J));
  J.x = x;
  J.b = dy;
  J.y = dw;
  J.g = g;
  J.mult = g->o / g->c;
  J.nchunks = g->n < DW_MAX_CHUNKS ? g->n : DW_MAX_CHUNKS;
  const long khw = g->kh * g->kw;
  J.part = (double *)malloc(sizeof(double) * (size_t)(J.nchunks * g->o * khw));
  if (!J.part) abort();
  cn_dw_plan P;
  J.w16 = K_isa == 2 && cn_dw_w16_applicable(g->w, g->kh, g->kw, g->sh, g->sw, g->pw, g->ow);
  if (!J.w16 && dw_fast_plan(&P, g->h, g->w, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow)) J.plan = &P;
  run_tasks(J.nchunks, dw_bwd_w_task, &J, 2 * g->n * g->o * g->oh * g->ow);
  if (J.plan) cn_dw_s1_release(&P);
  for (long q = 0; q < g->o * khw; q++) {
    double s = 0.0;
    for (long ch = 0; ch < J.nchunks; ch++) s += J.part[ch * g->o * khw + q];
    dw[q] = (float)s;
  }
  free(J.part);
}

/* Run fn(ctx, plane) for every plane, several planes per pool task (about 16K floats each). */
typedef struct {
  cn_task_fn fn;
  void *ctx;
  long total, per;
} planes_job;

static void planes_task(void *ctx, long t, int tid) {
  const planes_job *J = (const planes_job *)ctx;
  const long p0 = t * J->per, p1 = p0 + J->per < J->total ? p0 + J->per : J->total;
  for (long p = p0; p < p1; p++) J->fn(J->ctx, p, tid);
}

static void run_planes(long total, long plane_elems, cn_task_fn fn, void *ctx) {
  if (total <= 0) return;
  const int T = cn_num_threads();
  if (T == 1 || total * plane_elems < 65536) {
    for (long p = 0; p < total; p++) fn(ctx, p, 0);
    return;
  }
  long per = 16384 / (plane_elems > 0 ? plane_elems : 1);
  const long balanced = (total + 4L * T - 1) / (4L * T);
  if (per > balanced) per = balanced;
  if (per < 1) per = 1;
  planes_job J = {fn, ctx, total, per};
  cn_parallel((total + per - 1) / per, planes_task, &J);
}

/* ---- pooling ---------------------------------------------------------------------------------- */

typedef struct {
  const float *x;
  const int32_t *am;
  float *y;
  int32_t *argmax;
  const cn_pool_geom *g;
  long n, c, h, w, oh, ow;
} pool_job;

static void maxpool_task(void *ctx, long p, int tid) {
  (void)tid;
  const pool_job *J = (const pool_job *)ctx;
  const cn_pool_geom *g = J->g;
  const float *xp = J->x + p * g->h * g->w;
  float *yp = J->y + p * g->oh * g->ow;
  int32_t *ap = J->argmax + p * g->oh * g->ow;
  for (long oy = 0; oy < g->oh; oy++)
    for (long ox = 0; ox < g->ow; ox++) {
      float best = -INFINITY;
      long bi = -1;
      /* same rule as the reference: first maximum wins; a NaN wins and ends its row */
      for (long ky = 0; ky < g->kh; ky++) {
        const long iy = oy * g->sh - g->ph + ky;
        if (iy < 0 || iy >= g->h) continue;
        for (long kx = 0; kx < g->kw; kx++) {
          const long ix = ox * g->sw - g->pw + kx;
          if (ix < 0 || ix >= g->w) continue;
          const float v = xp[iy * g->w + ix];
          if (v > best || v != v || bi < 0) {
            best = v;
            bi = iy * g->w + ix;
            if (v != v) break;
          }
        }
      }
      yp[oy * g->ow + ox] = best;
      ap[oy * g->ow + ox] = (int32_t)bi;
    }
}

void cn_maxpool(const float *x, float *y, int32_t *argmax, const cn_pool_geom *g) {
  pool_job J;
  memset(&J, 0, sizeof(J));
  J.x = x;
  J.y = y;
  J.argmax = argmax;
  J.g = g;
  run_planes(g->n * g->c, g->h * g->w, maxpool_task, &J);
}

static void maxpool_bw_task(void *ctx, long p, int tid) {
  (void)tid;
  const pool_job *J = (const pool_job *)ctx;
  const cn_pool_geom *g = J->g;
  float *dxp = J->y + p * g->h * g->w;
  const float *dyp = J->x + p * g->oh * g->ow;
  const int32_t *ap = J->am + p * g->oh * g->ow;
  const long hw = g->h * g->w;
  memset(dxp, 0, sizeof(float) * (size_t)hw);
  for (long i = 0; i < g->oh * g->ow; i++) {
    const int32_t a = ap[i];
    if (a >= 0 && a < hw) dxp[a] += dyp[i];
  }
}

void cn_maxpool_backward(const float *dy, const int32_t *argmax, float *dx, const cn_pool_geom *g) {
  pool_job J;
  memset(&J, 0, sizeof(J));
  J.x = dy;
  J.am = argmax;
  J.y = dx;
  J.g = g;
  run_planes(g->n * g->c, g->h * g->w, maxpool_bw_task, &J);
}

static inline long ad_start(long i, long in, long out) { return (i * in) / out; }
static inline long ad_end(long i, long in, long out) { return ((i + 1) * in + out - 1) / out; }

static void avgpool_task(void *ctx, long p, int tid) {
  (void)tid;
  const pool_job *J = (const pool_job *)ctx;
  const float *xp = J->x + p * J->h * J->w;
  float *yp = J->y + p * J->oh * J->ow;
  for (long oy = 0; oy < J->oh; oy++) {
    const long y0 = ad_start(oy, J->h, J->oh), y1 = ad_end(oy, J->h, J->oh);
    for (long ox = 0; ox < J->ow; ox++) {
      const long x0 = ad_start(ox, J->w, J->ow), x1 = ad_end(ox, J->w, J->ow);
      double s = 0.0;
      if (x1 - x0 >= 16) {
        for (long iy = y0; iy < y1; iy++) s += (double)K.sum(xp + iy * J->w + x0, x1 - x0);
      } else {
        for (long iy = y0; iy < y1; iy++)
          for (long ix = x0; ix < x1; ix++) s += xp[iy * J->w + ix];
      }
      yp[oy * J->ow + ox] = (float)(s / (double)((y1 - y0) * (x1 - x0)));
    }
  }
}

void cn_adaptive_avgpool(const float *x, float *y, long n, long c, long h, long w, long oh, long ow) {
  ensure_k();
  pool_job J;
  memset(&J, 0, sizeof(J));
  J.x = x;
  J.y = y;
  J.n = n;
  J.c = c;
  J.h = h;
  J.w = w;
  J.oh = oh;
  J.ow = ow;
  run_planes(n * c, h * w, avgpool_task, &J);
}

static void avgpool_bw_task(void *ctx, long p, int tid) {
  (void)tid;
  const pool_job *J = (const pool_job *)ctx;
  const float *dyp = J->x + p * J->oh * J->ow;
  float *dxp = J->y + p * J->h * J->w;
  memset(dxp, 0, sizeof(float) * (size_t)(J->h * J->w));
  for (long oy = 0; oy < J->oh; oy++) {
    const long y0 = ad_start(oy, J->h, J->oh), y1 = ad_end(oy, J->h, J->oh);
    for (long ox = 0; ox < J->ow; ox++) {
      const long x0 = ad_start(ox, J->w, J->ow), x1 = ad_end(ox, J->w, J->ow);
      const float gv = (float)((double)dyp[oy * J->ow + ox] / (double)((y1 - y0) * (x1 - x0)));
      for (long iy = y0; iy < y1; iy++)
        for (long ix = x0; ix < x1; ix++) dxp[iy * J->w + ix] += gv;
    }
  }
}

void cn_adaptive_avgpool_backward(const float *dy, float *dx, long n, long c, long h, long w, long oh, long ow) {
  pool_job J;
  memset(&J, 0, sizeof(J));
  J.x = dy;
  J.y = dx;
  J.n = n;
  J.c = c;
  J.h = h;
  J.w = w;
  J.oh = oh;
  J.ow = ow;
  run_planes(n * c, h * w, avgpool_bw_task, &J);
}

/* ---- dense ---------------------------------------------------------------------------------------- */

void cn_matmul(const float *a, const float *b, float *c, long m, long n, long k, int ta, int tb) {
  ensure_k();
  cn_gemm G;
  /* A(i, kk) = ta ? a[kk*m + i] : a[i*k + kk];  B(kk, j) = tb ? b[j*k + kk] : b[kk*n + j] */
  cn_gemm_init_strided(&G, m, n, k, a, ta ? 1 : k, ta ? m : 1, b, tb ? 1 : n, tb ? k : 1, c, n);
  cn_gemm_parallel(&G);
}

void cn_add_row_vector(float *y, const float *bias, long rows, long cols) {
  for (long r = 0; r < rows; r++) {
    float *p = y + r * cols;
    for (long j = 0; j < cols; j++) p[j] += bias[j];
  }
}

void cn_sum_rows(const float *x, float *out, long rows, long cols) {
  double *s = (double *)calloc((size_t)(cols > 0 ? cols : 1), sizeof(double));
  if (!s) abort();
  for (long r = 0; r < rows; r++) {
    const float *p = x + r * cols;
    for (long j = 0; j < cols; j++) s[j] += p[j];
  }
  for (long j = 0; j < cols; j++) out[j] = (float)s[j];
  free(s);
}

typedef struct {
  const float *x;
  float *out;
  long n, c, hw;
} sumc_job;

static void sumc_task(void *ctx, long ci, int tid) {
  (void)tid;
  const sumc_job *J = (const sumc_job *)ctx;
  double s = 0.0;
  for (long n = 0; n < J->n; n++) s += (double)K.sum(J->x + (n * J->c + ci) * J->hw, J->hw);
  J->out[ci] = (float)s;
}

void cn_sum_channels(const float *x, float *out, long n, long c, long hw) {
  ensure_k();
  sumc_job J = {x, out, n, c, hw};
  if (n * c * hw < 65536)
    for (long ci = 0; ci < c; ci++) sumc_task(&J, ci, 0);
  else
    cn_parallel(c, sumc_task, &J);
}

/* ---- softmax ----------------------------------------------------------------------------------- */

void cn_log_softmax(const float *x, float *y, long rows, long cols) {
  for (long r = 0; r < rows; r++) {
    const float *p = x + r * cols;
    float *q = y + r * cols;
    float mx = -INFINITY;
    for (long j = 0; j < cols; j++) mx = p[j] > mx ? p[j] : mx;
    double s = 0.0;
    for (long j = 0; j < cols; j++) s += exp((double)p[j] - (double)mx);
    const double lse = (double)mx + log(s);
    for (long j = 0; j < cols; j++) q[j] = (float)((double)p[j] - lse);
  }
}

void cn_log_softmax_backward(const float *dy, const float *y, float *dx, long rows, long cols) {
  for (long r = 0; r < rows; r++) {
    const float *g = dy + r * cols, *p = y + r * cols;
    float *d = dx + r * cols;
    double s = 0.0;
    for (long j = 0; j < cols; j++) s += g[j];
    for (long j = 0; j < cols; j++) d[j] = (float)((double)g[j] - exp((double)p[j]) * s);
  }
}

/* ---- optimisers ------------------------------------------------------------------------------ */

typedef struct {
  float *p, *m, *v;
  const float *g;
  long n;
  float b1, b2, omb1, omb2, wd, step_size, inv_bc2sqrt, eps, lr, mom, omd;
  int nesterov, first;
} opt_job;

static void adam_task(void *ctx, long t, int tid) {
  (void)tid;
  const opt_job *J = (const opt_job *)ctx;
  const long i0 = t * EW_CHUNK, len = J->n - i0 < EW_CHUNK ? J->n - i0 : EW_CHUNK;
  K.adam(J->p + i0, J->g + i0, J->m + i0, J->v + i0, len, J->b1, J->b2, J->omb1, J->omb2, J->wd, J->step_size,
         J->inv_bc2sqrt, J->eps);
}

void cn_adam(float *p, const float *g, float *m, float *v, long n, const cn_adam_hyper *h) {
  ensure_k();
  opt_job J;
  memset(&J, 0, sizeof(J));
  J.p = p;
  J.g = g;
  J.m = m;
  J.v = v;
  J.n = n;
  J.b1 = (float)h->beta1;
  J.b2 = (float)h->beta2;
  J.omb1 = (float)(1.0 - h->beta1);
  J.omb2 = (float)(1.0 - h->beta2);
  J.wd = (float)h->weight_decay;
  const double bc1 = 1.0 - pow(h->beta1, h->step);
  const double bc2sqrt = sqrt(1.0 - pow(h->beta2, h->step));
  J.step_size = (float)(h->lr / bc1);
  J.inv_bc2sqrt = (float)(1.0 / bc2sqrt);
  J.eps = (float)h->eps;
  const long chunks = (n + EW_CHUNK - 1) / EW_CHUNK;
  if (chunks < 4)
    for (long t = 0; t < chunks; t++) adam_task(&J, t, 0);
  else
    cn_parallel(chunks, adam_task, &J);
}

static void sgd_task(void *ctx, long t, int tid) {
  (void)tid;
  const opt_job *J = (const opt_job *)ctx;
  const long i0 = t * EW_CHUNK, len = J->n - i0 < EW_CHUNK ? J->n - i0 : EW_CHUNK;
  K.sgd(J->p + i0, J->g + i0, J->m ? J->m + i0 : NULL, len, J->lr, J->mom, J->omd, J->wd, J->nesterov, J->first);
}

void cn_sgd(float *p, const float *g, float *buf, long n, const cn_sgd_hyper *h) {
  ensure_k();
  opt_job J;
  memset(&J, 0, sizeof(J));
  J.p = p;
  J.g = g;
  J.m = (h->momentum != 0.0) ? buf : NULL;
  J.n = n;
  J.lr = (float)h->lr;
  J.mom = (float)h->momentum;
  J.omd = (float)(1.0 - h->dampening);
  J.wd = (float)h->weight_decay;
  J.nesterov = h->nesterov;
  J.first = h->first_step;
  const long chunks = (n + EW_CHUNK - 1) / EW_CHUNK;
  if (chunks < 4)
    for (long t = 0; t < chunks; t++) sgd_task(&J, t, 0);
  else
    cn_parallel(chunks, sgd_task, &J);
}
