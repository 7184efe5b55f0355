/* Batch norm, elementwise, depthwise convolution, pooling, dense helpers, softmax and optimiser
 * kernels. The memory-bound inner loops live in kernels_isa.h, compiled once per instruction
 * set (scalar/NEON baseline, AVX2, AVX-512) and selected at run time through the table K; the
 * AVX-512 depthwise fast paths are in dw_avx512.c. This file holds the threading (fixed, thread-
 * count independent chunking wherever something is summed) and the dispatch. */
#include "cn.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

typedef struct {
  float (*sum)(const float *x, long n);
  void (*seg_stats)(const float *x, long hw, float *mean, float *m2);
  void (*dot2)(const float *dy, const float *x, long n, float m, float *sdy, float *sdyx);
  void (*bn_apply)(const float *p, float *q, long hw, float m, float k, float bt);
  void (*bn_bw_apply)(const float *g, const float *x, float *d, long hw, float m, float k, float mdy, float q);
  void (*bn_apply_act)(const float *p, const float *r, float *q, long hw, float m, float k, float bt, int act);
  /* AVX-512 only (NULL otherwise) */
  void (*bn_bw_apply_act_v)(const float *dy, const float *x, float *d, long len, const float *m, const float *kb,
                            const float *mdy, const float *q, const float *ka, const float *bt, int act);
  void (*bn_apply_act_v)(const float *p, const float *r, float *q, long len, const float *m, const float *k,
                         const float *bt, int act);
  void (*epi_rows)(float *y, const float *res, long ldc, long rows, long n, long ch0, const float *bias,
                   const float *mean, const float *scale, const float *shift, int act);
  void (*stats_planes)(const float *x, long hw, long count, long stride, double *cnt, double *mean, double *m2);
  void (*group_stats)(const float *x, long hw, long np, long stride, int more, float *sm, float *sq);
  void (*chan_merge)(double *cnt, double *mean, double *m2, double nb, float sm, float sq);
  void (*stats_block)(const float *x, long hw, long np, long img_stride, long nch, int more, double *cnt, double *mean,
                      double *m2); /* NULL: per channel */
  void (*dot2_block)(const float *dy, const float *x, long hw, long np, long img_stride, long nch, int more,
                     const float *m, const float *k, const float *bt, int act, double *sdy, double *sdyx); /* NULL: per channel */
  void (*dot2_planes)(const float *dy, const float *x, long hw, long count, long stride, float m, float k, float bt,
                      int act, double *sdy, double *sdyx);
  /* AVX-512 only (NULL otherwise): dot2_planes one plane at a time (kernels_isa.h) */
  void (*dot2_acc)(const float *dy, const float *x, long hw, float m, float k, float bt, int act, float *acc);
  void (*dot2_fin)(const float *acc, float *sdy, float *sdyx);
  void (*dot2_act)(const float *dy, const float *x, long n, float m, float k, float bt, int act, float *sdy,
                   float *sdyx);
  void (*bn_bw_apply_act)(const float *dy, const float *x, float *d, long hw, float m, float kb, float mdy, float q,
                          float ka, float bt, int act, int nt);
  void (*bn_bw_apply_row)(const float *dy, const float *x, float *d, long hw, long nch, const float *m, const float *kb,
                          const float *mdy, const float *q, const float *ka, const float *bt, int act);
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

void cn_epi_rows(const cn_epilogue *e, float *y, long ldc, long rows, long len, long ch0) {
  const float *r = e->res_base ? e->res_base + (y - e->out_base) : NULL;
  K.epi_rows(y, r, ldc, rows, len, ch0, e->bias, e->mean, e->scale, e->shift, e->act);
}

void cn_intf_rows(const cn_intf *tf, const float *src, long src_stride, float *dst, long dst_stride, long rows,
                  long len, long ch0, long ch_step) {
  ensure_k();
  if (K_isa == 2) {
    cn_intf_rows_avx512(tf, src, src_stride, dst, dst_stride, rows, len, ch0, ch_step);
    return;
  }
  for (long r = 0; r < rows; r++) {
    const long ch = ch0 + r * ch_step;
    K.bn_apply_act(src + r * src_stride, NULL, dst + r * dst_stride, len, tf->mean[ch], tf->scale[ch], tf->shift[ch],
                   tf->act);
  }
}

int cn_intf_supported(const cn_conv_geom *g) {
  return cn_conv_pointwise(g) || (g->groups == g->c && g->o % g->c == 0);
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
 * Statistics are gathered per channel (a task per group of channels), walking the channel's
 * planes in image order; per-group mean/M2 are combined in double (Chan), so results are
 * deterministic whatever the thread count (kernels_isa.h: stats_planes, dot2_planes). The
 * normalisation (optionally fused with a residual add and ReLU/ReLU6) is a streaming pass over
 * planes; the backward does its reduction and its apply pass per channel group while the
 * channel's planes are in L2. */

typedef struct {
  const float *x, *dy, *wt, *bs, *mean, *var, *invstd;
  float *y;
  long n, c, hw, planes_per_task;
  double *pa, *pb;       /* per-channel results of the statistics pass */
  const float *km, *kk, *kb, *kq; /* per-channel coefficients of the apply pass */
  const float *res;               /* residual added before the activation (apply), or NULL */
  const float *ka, *kt;           /* forward scale and shift (fused activation backward) */
  int act;                        /* 0 none, 1 ReLU, 2 ReLU6 */
  float *dw, *db;                 /* parameter gradients (backward) */
  long cpt;                       /* channels per task (per-channel backward) */
  int expanded;                   /* km/kk/kb hold c*hw per-element coefficients (small planes) */
  int nt;                         /* backward: stream dx past the caches (larger than the LLC) */
} bn_job;

/* whether an output of this many bytes is larger than the last-level cache (then streamed:
 * its consumer reads it from memory anyway, and non-temporal stores skip the read for ownership) */
static int larger_than_llc(double bytes) {
  static long llc = -1;
  if (llc < 0) {
    /* Linux's view of this CPU's L3 (sysconf reports the host's under some hypervisors) */
    long v = -1;
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    if (f) {
      char unit = 0;
      if (fscanf(f, "%ld%c", &v, &unit) >= 1) v *= unit == 'K' ? 1024L : unit == 'M' ? 1048576L : 1L;
      fclose(f);
    }
    llc = v > 0 ? v : 32L << 20;
  }
  return bytes > (double)llc;
}

static void bn_apply_task(void *ctx, long t, int tid) {
  (void)tid;
  const bn_job *J = (const bn_job *)ctx;
  const long p0 = t * J->planes_per_task;
  long p1 = p0 + J->planes_per_task;
  if (p1 > J->n * J->c) p1 = J->n * J->c;
  if (J->expanded) {
    /* runs of consecutive planes inside one image */
    for (long pl = p0; pl < p1;) {
      const long ci = pl % J->c;
      const long end = pl - ci + J->c < p1 ? pl - ci + J->c : p1;
      const long off = ci * J->hw, len = (end - pl) * J->hw;
      K.bn_apply_act_v(J->x + pl * J->hw, J->res ? J->res + pl * J->hw : NULL, J->y + pl * J->hw, len, J->km + off,
                       J->kk + off, J->kb + off, J->act);
      pl = end;
    }
    return;
  }
  if (J->act == 0 && !J->res) {
    for (long pl = p0; pl < p1; pl++) {
      const long ci = pl % J->c;
      K.bn_apply(J->x + pl * J->hw, J->y + pl * J->hw, J->hw, J->km[ci], J->kk[ci], J->kb[ci]);
    }
    return;
  }
  for (long pl = p0; pl < p1; pl++) {
    const long ci = pl % J->c;
    K.bn_apply_act(J->x + pl * J->hw, J->res ? J->res + pl * J->hw : NULL, J->y + pl * J->hw, J->hw, J->km[ci],
                   J->kk[ci], J->kb[ci], J->act);
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

/* Planes smaller than this are walked a block of channels at a time (stats, backward). */
#define BN_SMALL_PLANE 256
#define BN_BLOCK 64
#if defined(CN_X86)
_Static_assert(BN_BLOCK <= CN_STATS_BLOCK_MAX, "stats_block holds a block's accumulators");
#endif
/* the per-channel kernels' grouping of planes (kernels_isa.h bn_group): block walks call them
 * one group at a time, which gives the same arithmetic */
static long bn_group_planes(long hw) { return hw >= 1024 ? 1 : 1024 / (hw > 0 ? hw : 1); }
/* channels per block walk: BN_BLOCK small planes, or of larger planes a row of about 32 KB per
 * image (prefetched a row ahead; measured against 8/16/64 KB rows and the per-channel walk,
 * which read 32x32 planes at 23-25 GB/s: 29-33 GB/s) */
#define BN_ROW_BYTES 32768
static long bn_block_channels(long hw) {
  if (hw < BN_SMALL_PLANE) return BN_BLOCK;
  const long b = BN_ROW_BYTES / (hw * (long)sizeof(float));
  return b < 1 ? 1 : b > BN_BLOCK ? BN_BLOCK : b;
}

/* batch statistics: mean, biased variance and invstd per channel. One task per group of
 * channels, each walking its channels' planes in image order (deterministic). */
static void bn_stats_chan_task(void *ctx, long t, int tid) {
  (void)tid;
  const bn_job *J = (const bn_job *)ctx;
  const long c0 = t * J->cpt, c1 = c0 + J->cpt < J->c ? c0 + J->cpt : J->c;
  if (J->hw < BN_SMALL_PLANE || K.stats_block) {
    /* walk a block of channels image group by image group, so that neighbouring channels'
     * planes are read together (contiguous rows, the next one prefetched) instead of one
     * strided plane or line per image per channel; same groups, same arithmetic as the
     * per-channel walk */
    const long G = bn_group_planes(J->hw), B = bn_block_channels(J->hw);
    for (long b0 = c0; b0 < c1; b0 += B) {
      const long b1 = b0 + B < c1 ? b0 + B : c1;
      double cnt[BN_BLOCK] = {0}, m[BN_BLOCK] = {0}, m2[BN_BLOCK] = {0};
      for (long p0 = 0; p0 < J->n; p0 += G) {
        const long np = J->n - p0 < G ? J->n - p0 : G;
        if (K.stats_block) /* image by image over the block (same arithmetic) */
          K.stats_block(J->x + (p0 * J->c + b0) * J->hw, J->hw, np, J->c * J->hw, b1 - b0, p0 + np < J->n, cnt, m,
                        m2);
        else
          for (long ci = b0; ci < b1; ci++)
            K.stats_planes(J->x + (p0 * J->c + ci) * J->hw, J->hw, np, J->c * J->hw, &cnt[ci - b0], &m[ci - b0],
                           &m2[ci - b0]);
      }
      for (long ci = b0; ci < b1; ci++) {
        J->pa[ci] = m[ci - b0];
        J->pb[ci] = cnt[ci - b0] > 0 ? m2[ci - b0] / cnt[ci - b0] : 0.0;
      }
    }
    return;
  }
  for (long ci = c0; ci < c1; ci++) {
    double cnt = 0.0, m = 0.0, m2 = 0.0;
    K.stats_planes(J->x + ci * J->hw, J->hw, J->n, J->c * J->hw, &cnt, &m, &m2);
    J->pa[ci] = m;
    J->pb[ci] = cnt > 0 ? m2 / cnt : 0.0;
  }
}

void cn_bn_stats(const float *x, float *mean, float *var, float *invstd, long n, long c, long hw, double eps) {
  ensure_k();
  bn_job J;
  memset(&J, 0, sizeof(J));
  J.x = x;
  J.n = n;
  J.c = c;
  J.hw = hw;
  double *part = (double *)malloc(sizeof(double) * (size_t)(2 * c + 1));
  if (!part) abort();
  J.pa = part;
  J.pb = part + c;
  const int T = cn_num_threads();
  J.cpt = (c + 4L * T - 1) / (4L * T);
  if (J.cpt < 1) J.cpt = 1;
  run_tasks((c + J.cpt - 1) / J.cpt, bn_stats_chan_task, &J, n * c * hw);
  for (long ci = 0; ci < c; ci++) {
    const double v = J.pb[ci];
    mean[ci] = (float)J.pa[ci];
    var[ci] = (float)v;
    invstd[ci] = (float)(1.0 / sqrt(v + eps));
  }
  free(part);
}

/* ---- batch statistics from partials computed by the convolution that produced the tensor ---- */

long cn_bn_group_images(long hw) { return bn_group_planes(hw); }

int cn_bn_groups_in_chunks(long n, long nchunks, long hw) {
  const long G = bn_group_planes(hw);
  for (long ch = 1; ch < nchunks; ch++)
    if ((ch * n / nchunks) % G != 0) return 0;
  return 1;
}

/* the mean and squared deviations of groups [g0, g1) of cn_bn_group_images(hw) images (the last
 * group of the batch partial), channels [c0, c1) of y (n, c, hw), as the statistics kernels
 * compute them per group: gs[(grp * c + ci) * 2 + 0 / 1] */
void cn_bn_group_stats(const float *y, long n, long c, long hw, long g0, long g1, long c0, long c1, float *gs) {
  ensure_k();
  const long G = bn_group_planes(hw);
  for (long grp = g0; grp < g1; grp++) {
    const long p0 = grp * G, np = n - p0 < G ? n - p0 : G;
    for (long ci = c0; ci < c1; ci++)
      K.group_stats(y + (p0 * c + ci) * hw, hw, np, c * hw, 0, &gs[(grp * c + ci) * 2], &gs[(grp * c + ci) * 2 + 1]);
  }
}

/* cn_bn_stats from the group partials of the whole batch: merged per channel in group order, as
 * the statistics kernels merge them (the same values) */
void cn_bn_stats_from_groups(const float *gs, long n, long c, long hw, double eps, float *mean, float *var,
                             float *invstd) {
  ensure_k();
  const long G = bn_group_planes(hw), ng = (n + G - 1) / G;
  for (long ci = 0; ci < c; ci++) {
    double cnt = 0.0, m = 0.0, m2 = 0.0;
    for (long grp = 0; grp < ng; grp++) {
      const long np = n - grp * G < G ? n - grp * G : G;
      K.chan_merge(&cnt, &m, &m2, (double)np * (double)hw, gs[(grp * c + ci) * 2], gs[(grp * c + ci) * 2 + 1]);
    }
    const double v = cnt > 0 ? m2 / cnt : 0.0;
    mean[ci] = (float)m;
    var[ci] = (float)v;
    invstd[ci] = (float)(1.0 / sqrt(v + eps));
  }
}

/* y = act((x - mean) * scale + shift (+ res)) per channel */
void cn_bn_apply(const float *x, const float *mean, const float *scale, const float *shift, const float *res, float *y,
                 long n, long c, long hw, int act) {
  ensure_k();
  bn_job J;
  memset(&J, 0, sizeof(J));
  J.x = x;
  J.y = y;
  J.n = n;
  J.c = c;
  J.hw = hw;
  J.km = mean;
  J.kk = scale;
  J.kb = shift;
  J.res = res;
  J.act = act;
  J.planes_per_task = apply_planes_per_task(hw);
  float *ex = NULL;
  if (hw < 64) {
    /* small planes (4x4, 2x2): a call per plane costs more than its data; expand the
     * coefficients to one per element of an image instead */
    ex = (float *)malloc(sizeof(float) * (size_t)(3 * c * hw));
    if (!ex) abort();
    for (long ci = 0; ci < c; ci++)
      for (long i = 0; i < hw; i++) {
        ex[ci * hw + i] = mean[ci];
        ex[(c + ci) * hw + i] = scale[ci];
        ex[(2 * c + ci) * hw + i] = shift[ci];
      }
    J.km = ex;
    J.kk = ex + c * hw;
    J.kb = ex + 2 * c * hw;
    J.expanded = 1;
  }
  run_tasks((n * c + J.planes_per_task - 1) / J.planes_per_task, bn_apply_task, &J, n * c * hw);
  free(ex);
}

void cn_bn_train(const float *x, const float *wt, const float *bs, float *y, float *mean, float *var, float *invstd,
                 long n, long c, long hw, double eps) {
  cn_bn_stats(x, mean, var, invstd, n, c, hw, eps);
  float *coef = (float *)malloc(sizeof(float) * (size_t)(2 * c + 1));
  if (!coef) abort();
  for (long ci = 0; ci < c; ci++) {
    coef[ci] = invstd[ci] * (wt ? wt[ci] : 1.0f);
    coef[c + ci] = bs ? bs[ci] : 0.0f;
  }
  cn_bn_apply(x, mean, coef, coef + c, NULL, y, n, c, hw, 0);
  free(coef);
}

void cn_bn_eval(const float *x, const float *mean, const float *var, const float *wt, const float *bs, float *y, long n,
                long c, long hw, double eps) {
  float *coef = (float *)malloc(sizeof(float) * (size_t)(2 * c + 1));
  if (!coef) abort();
  for (long ci = 0; ci < c; ci++) {
    coef[ci] = (float)(1.0 / sqrt((double)var[ci] + eps)) * (wt ? wt[ci] : 1.0f);
    coef[c + ci] = bs ? bs[ci] : 0.0f;
  }
  cn_bn_apply(x, mean, coef, coef + c, NULL, y, n, c, hw, 0);
  free(coef);
}

/* Training-mode backward; act != 0: dy is the gradient of act(y) and the activation's mask is
 * recomputed from x with the forward's scale/shift (ka, kt).
 * One task per group of channels: the reduction over a channel's planes (sums of dy and
 * dy * (x - mean), accumulated in double in image order, so deterministic whatever the thread
 * count), then at once the apply pass over the same planes, which then come from the core's L2
 * instead of memory: three memory streams (dy, x, dx) instead of five. */
/* bytes of dy + x per task: half the 1 MB L2, so that the apply pass finds them there next to
 * the dx it writes (1 MB measured 10-20 % slower on 8x8 planes, where a task is a block of
 * channels read in both passes) */
#define BN_BW_L2_BUDGET (1L << 19)

/* channel ci's parameter gradients (into J) and apply coefficients from its sums of dy and
 * dy * (x - mean) (cnt values) */
static void bn_bw_coefs(const bn_job *J, long ci, double sdy, double sdyx, double cnt, float *kk, float *mdy,
                        float *q) {
  const double is = J->invstd[ci];
  const double sx = sdyx * is; /* sum dy * xhat */
  J->dw[ci] = (float)sx;
  J->db[ci] = (float)sdy;
  *kk = (J->wt ? J->wt[ci] : 1.0f) * (float)is;
  *mdy = (float)(sdy / cnt);
  *q = (float)(sx / cnt * is);
}

static void bn_bw_chan_task(void *ctx, long t, int tid) {
  (void)tid;
  const bn_job *J = (const bn_job *)ctx;
  const long c0 = t * J->cpt, c1 = c0 + J->cpt < J->c ? c0 + J->cpt : J->c;
  const long n = J->n, c = J->c, hw = J->hw;
  const double cnt = (double)n * (double)hw;
  if (hw < BN_SMALL_PLANE) {
    /* small planes: the block's reductions group by group of images (as in the statistics),
     * then the apply pass image by image over the block (contiguous runs of planes) */
    const long G = bn_group_planes(hw);
    for (long b0 = c0; b0 < c1; b0 += BN_BLOCK) {
      const long b1 = b0 + BN_BLOCK < c1 ? b0 + BN_BLOCK : c1;
      double sdy[BN_BLOCK] = {0}, sdyx[BN_BLOCK] = {0};
      float kk[BN_BLOCK], mdy[BN_BLOCK], q[BN_BLOCK];
      for (long p0 = 0; p0 < n; p0 += G) {
        const long np = n - p0 < G ? n - p0 : G;
        if (K.dot2_block) /* image by image over the block (same arithmetic) */
          K.dot2_block(J->dy + (p0 * c + b0) * hw, J->x + (p0 * c + b0) * hw, hw, np, c * hw, b1 - b0, p0 + np < n,
                       J->mean + b0,
                       J->act ? J->ka + b0 : NULL, J->act ? J->kt + b0 : NULL, J->act, sdy, sdyx);
        else
          for (long ci = b0; ci < b1; ci++)
            K.dot2_planes(J->dy + (p0 * c + ci) * hw, J->x + (p0 * c + ci) * hw, hw, np, c * hw, J->mean[ci],
                          J->act ? J->ka[ci] : 0.0f, J->act ? J->kt[ci] : 0.0f, J->act, &sdy[ci - b0],
                          &sdyx[ci - b0]);
      }
      for (long ci = b0; ci < b1; ci++)
        bn_bw_coefs(J, ci, sdy[ci - b0], sdyx[ci - b0], cnt, &kk[ci - b0], &mdy[ci - b0], &q[ci - b0]);
      if (J->act && K.bn_bw_apply_act_v && hw < 16) {
        /* per-element coefficients over the block's planes: one vector loop per image */
        const long bl = (b1 - b0) * hw;
        float coef[6][BN_BLOCK * 16];
        for (long ci = b0; ci < b1; ci++)
          for (long i = 0; i < hw; i++) {
            const long e = (ci - b0) * hw + i, k = ci - b0;
            coef[0][e] = J->mean[ci];
            coef[1][e] = kk[k];
            coef[2][e] = mdy[k];
            coef[3][e] = q[k];
            coef[4][e] = J->ka[ci];
            coef[5][e] = J->kt[ci];
          }
        for (long ni = 0; ni < n; ni++) {
          const long off = (ni * c + b0) * hw;
          K.bn_bw_apply_act_v(J->dy + off, J->x + off, J->y + off, bl, coef[0], coef[1], coef[2], coef[3], coef[4],
                              coef[5], J->act);
        }
        continue;
      }
      for (long ni = 0; ni < n; ni++) {
        const long off = (ni * c + b0) * hw;
        K.bn_bw_apply_row(J->dy + off, J->x + off, J->y + off, hw, b1 - b0, J->mean + b0, kk, mdy, q,
                          J->act ? J->ka + b0 : NULL, J->act ? J->kt + b0 : NULL, J->act);
      }
    }
    return;
  }
  for (long ci = c0; ci < c1; ci++) {
    const float m = J->mean[ci];
    double sdy = 0.0, sdyx = 0.0;
    K.dot2_planes(J->dy + ci * hw, J->x + ci * hw, hw, n, c * hw, m, J->act ? J->ka[ci] : 0.0f,
                  J->act ? J->kt[ci] : 0.0f, J->act, &sdy, &sdyx);
    float kk, mdy, q;
    bn_bw_coefs(J, ci, sdy, sdyx, cnt, &kk, &mdy, &q);
    for (long ni = 0; ni < n; ni++) {
      const long off = (ni * c + ci) * hw;
      if (ni + 1 < n) {
        /* the next plane (a page or more away): prefetch it, the hardware does not cross pages */
        const char *pd = (const char *)(J->dy + off + c * hw), *px = (const char *)(J->x + off + c * hw);
        for (long b = 0; b < hw * (long)sizeof(float); b += 64) {
          __builtin_prefetch(pd + b);
          __builtin_prefetch(px + b);
        }
      }
      if (J->act)
        K.bn_bw_apply_act(J->dy + off, J->x + off, J->y + off, hw, m, kk, mdy, q, J->ka[ci], J->kt[ci], J->act, J->nt);
      else
        K.bn_bw_apply(J->dy + off, J->x + off, J->y + off, hw, m, kk, mdy, q);
    }
  }
}

void cn_bn_backward_act(const float *dy, const float *x, const float *mean, const float *invstd, const float *wt,
                        const float *ka, const float *kt, float *dx, float *dw, float *db, long n, long c, long hw,
                        int act) {
  ensure_k();
  bn_job J;
  memset(&J, 0, sizeof(J));
  J.dy = dy;
  J.x = x;
  J.mean = mean;
  J.invstd = invstd;
  J.wt = wt;
  J.y = dx;
  J.dw = dw;
  J.db = db;
  J.n = n;
  J.c = c;
  J.hw = hw;
  J.act = act;
  J.nt = larger_than_llc(4.0 * (double)n * (double)c * (double)hw);
  J.ka = ka;
  J.kt = kt;
  const long per_channel = 2L * n * hw * (long)sizeof(float);
  long cpt = BN_BW_L2_BUDGET / (per_channel > 0 ? per_channel : 1);
  const long balanced = (c + 4L * cn_num_threads() - 1) / (4L * cn_num_threads());
  if (cpt > balanced) cpt = balanced;
  if (cpt < 1) cpt = 1;
  J.cpt = cpt;
  run_tasks((c + cpt - 1) / cpt, bn_bw_chan_task, &J, 2 * n * c * hw);
}

/* ---- the backward with its reductions done by the kernel that produced dy --------------------
 * parts[(grp * c + ci) * 2 + 0 / 1]: the sums of g and g * (x - mean) over image group grp
 * (cn_bn_group_images(hw) images) of channel ci, as the reduction kernels compute them per group
 * (the both-gradients passes, cn_bn_bw_group_parts); from them the parameter gradients and the
 * apply pass's coefficients
 * (cn_bn_bw_coefs), then the apply pass, a stream over the planes (cn_bn_bw_apply), or image by
 * image inside the kernel that consumes dx (cn_bn_bw_apply_rows). */
void cn_bn_bw_coefs(const float *parts, const float *invstd, const float *wt, float *dw, float *db, float *coef,
                    long n, long c, long hw) {
  bn_job J;
  memset(&J, 0, sizeof(J));
  J.invstd = invstd;
  J.wt = wt;
  J.dw = dw;
  J.db = db;
  const long G = bn_group_planes(hw), ng = (n + G - 1) / G;
  const double cnt = (double)n * (double)hw;
  for (long ci = 0; ci < c; ci++) {
    double sdy = 0.0, sdyx = 0.0; /* in group order, as dot2_planes adds them */
    for (long grp = 0; grp < ng; grp++) {
      sdy += (double)parts[(grp * c + ci) * 2];
      sdyx += (double)parts[(grp * c + ci) * 2 + 1];
    }
    bn_bw_coefs(&J, ci, sdy, sdyx, cnt, &coef[ci], &coef[c + ci], &coef[2 * c + ci]);
  }
}

void cn_bn_bw_group_parts(const float *g, const float *x, const cn_intf *t, long n, long c, long hw, long g0, long g1,
                          long c0, long c1, float *parts) {
  ensure_k();
  const long G = bn_group_planes(hw);
  for (long grp = g0; grp < g1; grp++) {
    const long p0 = grp * G, np = n - p0 < G ? n - p0 : G;
    for (long ci = c0; ci < c1; ci++) {
      double sdy = 0.0, sdyx = 0.0; /* one group of dot2_planes: the float sums it adds */
      K.dot2_planes(g + (p0 * c + ci) * hw, x + (p0 * c + ci) * hw, hw, np, c * hw, t->mean[ci], t->scale[ci],
                    t->shift[ci], t->act, &sdy, &sdyx);
      parts[(grp * c + ci) * 2] = (float)sdy;
      parts[(grp * c + ci) * 2 + 1] = (float)sdyx;
    }
  }
}

/* planes [p0, p1) of image n's c planes into d (hw apart) */
static void bn_bw_apply_planes(const cn_bwtf *t, long n, long p0, long p1, float *d, int nt) {
  const long c = t->c, hw = t->hw;
  for (long ci = p0; ci < p1; ci++) {
    const long off = (n * c + ci) * hw;
    K.bn_bw_apply_act(t->g + off, t->x + off, d + (ci - p0) * hw, hw, t->mean[ci], t->coef[ci], t->coef[c + ci],
                      t->coef[2 * c + ci], t->ka[ci], t->kt[ci], t->act, nt);
  }
}

void cn_bn_bw_apply_rows(const cn_bwtf *t, long n, long c0, long c1, float *dst) {
  ensure_k();
  bn_bw_apply_planes(t, n, c0, c1, dst, 0);
}

typedef struct {
  const cn_bwtf *t;
  float *dx;
  long per, total;
  int nt;
} bn_bw_apply_job;

static void bn_bw_apply_task(void *ctx, long k, int tid) {
  (void)tid;
  const bn_bw_apply_job *A = (const bn_bw_apply_job *)ctx;
  const long c = A->t->c;
  const long p0 = k * A->per, p1 = p0 + A->per < A->total ? p0 + A->per : A->total;
  for (long pl = p0; pl < p1;) { /* runs of planes inside one image */
    const long n = pl / c, ci = pl % c, end = (n + 1) * c < p1 ? (n + 1) * c : p1;
    bn_bw_apply_planes(A->t, n, ci, ci + end - pl, A->dx + pl * A->t->hw, A->nt);
    pl = end;
  }
}

void cn_bn_bw_apply(const cn_bwtf *t, float *dx, long n) {
  ensure_k();
  const long total = n * t->c;
  bn_bw_apply_job A = {t, dx, apply_planes_per_task(t->hw), total,
                       larger_than_llc(4.0 * (double)total * (double)t->hw)};
  run_tasks((total + A.per - 1) / A.per, bn_bw_apply_task, &A, total * t->hw);
}

void cn_bn_backward(const float *dy, const float *x, const float *mean, const float *invstd, const float *wt,
                    float *dx, float *dw, float *db, long n, long c, long hw) {
  cn_bn_backward_act(dy, x, mean, invstd, wt, NULL, NULL, dx, dw, db, n, c, hw, 0);
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
  const cn_dw_sp_plan *sp; /* AVX-512 small-plane path (any stride), or NULL */
  int s2;                  /* AVX-512 3x3 stride-2 row path */
  const cn_epilogue *epi;  /* forward: applied to each output plane (bias already in it), or NULL */
  const cn_intf *tf;       /* forward, weight gradient: the input transform, or NULL */
  float *gs;               /* forward: batch statistics partials of each output plane, or NULL */
} dw_job;

/* Input planes of channel ic for images n0..n0+count, dw_xs(J) floats apart: x itself, or with
 * an input transform, the transformed planes in the thread's scratch (then hw apart). */
static long dw_xs(const dw_job *J) { return (J->tf ? 1 : J->g->c) * J->g->h * J->g->w; }

static const float *dw_in(const dw_job *J, long n0, long count, long ic, int tid) {
  const cn_conv_geom *g = J->g;
  const long hw = g->h * g->w;
  const float *src = J->x + (n0 * g->c + ic) * hw;
  if (!J->tf) return src;
  float *scr = cn_ws(tid, CN_WS_TILE, (size_t)(count * hw + 16));
  if (!scr) abort();
  cn_intf_rows(J->tf, src, g->c * hw, scr, hw, count, hw, ic, 0);
  return scr;
}

/* Channels ic..ic+chans of image n (adjacent planes, hw apart): x itself, or with an input
 * transform, from a run of transformed planes (~8 KB: small planes are transformed many per
 * call; larger runs, or prefetching the next run, measured slower) in the thread's scratch,
 * made when a request falls outside the current run: channels ic.. of image n, at most `limit`
 * (what the caller will still read of this image). */
typedef struct {
  long n, ic0, cnt;
  float *buf;
} dw_run;
#define DW_RUN_FLOATS 2048

static const float *dw_in_run(const dw_job *J, dw_run *R, long n, long ic, long chans, long limit, int tid) {
  const cn_conv_geom *g = J->g;
  const long hw = g->h * g->w;
  const float *src = J->x + (n * g->c + ic) * hw;
  if (!J->tf) return src;
  if (R->cnt && R->n == n && ic >= R->ic0 && ic + chans <= R->ic0 + R->cnt) return R->buf + (ic - R->ic0) * hw;
  long cnt = DW_RUN_FLOATS / hw;
  if (cnt > limit) cnt = limit;
  if (cnt < chans) cnt = chans;
  R->buf = cn_ws(tid, CN_WS_TILE, (size_t)(cnt * hw + 16));
  if (!R->buf) abort();
  cn_intf_rows(J->tf, src, hw, R->buf, hw, cnt, hw, ic, 1);
  R->n = n;
  R->ic0 = ic;
  R->cnt = cnt;
  return R->buf;
}

/* the AVX-512 3x3 stride-2 row path, if usable */
static int dw_s2(const cn_conv_geom *g) {
  return K_isa == 2 && cn_dw_s2_applicable(g->h, g->w, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw) &&
         g->oh == g->h / 2 && g->ow == g->w / 2;
}

/* the AVX-512 small-plane plan, if usable and the faster choice (transposed: for the input
 * gradient). Measured on Zen: it wins for strided layers (where the general path builds phase
 * planes) and for the 4x4 input gradient; the stride-1 masked-load paths win elsewhere. */
static int dw_sp_plan(cn_dw_sp_plan *P, const cn_conv_geom *g, int transposed) {
  const long in_hw = transposed ? g->oh * g->ow : g->h * g->w, out_hw = transposed ? g->h * g->w : g->oh * g->ow;
  if (K_isa != 2 || !cn_dw_sp_applicable(in_hw, out_hw, g->kh * g->kw)) return 0;
  const int strided = g->sh != 1 || g->sw != 1;
  /* stride 1: the input gradient of small planes, and forward planes of one vector (4x4, 2x2: four
   * planes at a time, cn_dw_sp_planes4_avx512) */
  /* (the transposed 2x2 plan only marks the geometry for cn_dw_dgrad_2x2_avx512: one channel per group) */
  const int t2x2 = transposed && g->h == 2 && g->w == 2 && g->kh == 3 && g->kw == 3 && g->ph == 1 && g->pw == 1 &&
                   g->o == g->c;
  if (!strided && !(transposed && g->h * g->w > 8 && g->h * g->w <= 32) && !t2x2 &&
      !(!transposed && in_hw <= 16 && out_hw <= 16))
    return 0;
  return cn_dw_sp_prepare(P, g->h, g->w, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow, transposed);
}

/* the AVX-512 fast path plan for a stride-1 plane geometry, if usable */
static int dw_fast_plan(cn_dw_plan *P, long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh,
                        long ow) {
  if (K_isa != 2 || !cn_dw_s1_applicable(H, W, kh, kw, sh, sw, ph, pw, oh, ow)) return 0;
  return cn_dw_s1_prepare(P, H, W, kh, kw, ph, pw, oh, ow);
}

/* the plans of a job that walks output planes from input planes (forward, weight gradient): the
 * AVX-512 small-plane, stride-2, 16-wide row or stride-1 path, whichever applies first (kept in
 * P / SP, released by dw_job_release) */
static void dw_fwd_plans(dw_job *J, const cn_conv_geom *g, cn_dw_plan *P, cn_dw_sp_plan *SP) {
  if (dw_sp_plan(SP, g, 0)) J->sp = SP;
  J->s2 = !J->sp && dw_s2(g);
  J->w16 = !J->sp && !J->s2 && K_isa == 2 && cn_dw_w16_applicable(g->w, g->kh, g->kw, g->sh, g->sw, g->pw, g->ow);
  if (!J->sp && !J->s2 && !J->w16 &&
      dw_fast_plan(P, g->h, g->w, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow))
    J->plan = P;
}

static void dw_job_release(dw_job *J) {
  if (J->plan) cn_dw_s1_release((cn_dw_plan *)J->plan);
  if (J->sp) cn_dw_sp_release((cn_dw_sp_plan *)J->sp);
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

/* inference fusion: the epilogue on output plane pl while it is in L1 */
#define DW_EPI(pl)                                                                                                     \
  do {                                                                                                                 \
    if (J->epi) {                                                                                                      \
      const long ohw_ = g->oh * g->ow;                                                                                 \
      if ((pl) + 1 < p1) /* own the next plane's lines before its stores, so the epilogue's reads do not wait */      \
        for (long b_ = 0; b_ < ohw_ * (long)sizeof(float); b_ += 64)                                                   \
          __builtin_prefetch((const char *)(J->y + ((pl) + 1) * ohw_) + b_, 1);                                        \
      cn_epi_rows(J->epi, J->y + (pl) * ohw_, ohw_, 1, ohw_, (pl) % g->o);                                             \
    }                                                                                                                  \
  } while (0)

/* the per-plane epilogue of the AVX-512 plane kernels for output plane pl (NULL without fusion) */
static const cn_dw_pepi *dw_pepi(const dw_job *J, long pl, cn_dw_pepi *pe) {
  if (!J->epi) return NULL;
  const long ch = pl % J->g->o, ohw = J->g->oh * J->g->ow;
  pe->m = J->epi->mean[ch];
  pe->k = J->epi->scale[ch];
  pe->bt = J->epi->shift[ch];
  pe->res = J->epi->res_base ? J->epi->res_base + pl * ohw : NULL;
  pe->act = J->epi->act;
  return pe;
}

/* forward task (inference fusion: the epilogue, if any, on each plane as it is computed) */
static void dw_fwd_task_planes(void *ctx, long t, int tid);

/* dw_fwd_task_planes, then (statistics fusion) the partials of the planes it computed, which are
 * still in cache: one group per plane (cn_bn_group_images is 1 for these planes) */
static void dw_fwd_task(void *ctx, long t, int tid) {
  dw_fwd_task_planes(ctx, t, tid);
  const dw_job *J = (const dw_job *)ctx;
  if (!J->gs) return;
  const long ohw = J->g->oh * J->g->ow, p0 = t * J->planes_per_task;
  const long p1 = p0 + J->planes_per_task < J->total ? p0 + J->planes_per_task : J->total;
  for (long pl = p0; pl < p1; pl++) K.group_stats(J->y + pl * ohw, ohw, 1, ohw, 0, &J->gs[pl * 2], &J->gs[pl * 2 + 1]);
}

static void dw_fwd_task_planes(void *ctx, long t, int tid) {
  const dw_job *J = (const dw_job *)ctx;
  const cn_conv_geom *g = J->g;
  cn_dw_pepi pe;
  float *ph = cn_ws(tid, CN_WS_TMP, (size_t)dw_phase_floats(g->oh, g->ow, g->kh, g->kw, g->sh, g->sw));
  float *tmp = cn_ws(tid, CN_WS_TMP2, (size_t)dw_row_floats(g->oh, g->ow, g->kh, g->kw, g->sw));
  if (!ph || !tmp) abort();
  const long khw = g->kh * g->kw;
  dw_run R = {0, 0, 0, NULL};
/* input channels this task still reads of image n from plane pl on (ic up to the channel of its
 * last plane, or of the image's last plane) */
#define DW_LIMIT                                                                                                       \
  (g->c - ic < ((pl % g->o) + (p1 - pl) - 1) / J->mult - ic + 1 ? g->c - ic                                           \
                                                                 : ((pl % g->o) + (p1 - pl) - 1) / J->mult - ic + 1)
  const long p0 = t * J->planes_per_task;
  long p1 = p0 + J->planes_per_task;
  if (p1 > J->total) p1 = J->total;
  if (J->sp) {
    const int four = J->sp->nin == 1 && J->sp->nout == 1 && J->mult == 1;
    for (long pl = p0; pl < p1;) {
      const long n = pl / g->o, oc = pl % g->o, ic = oc / J->mult;
      if (four && pl + 4 <= p1 && oc + 4 <= g->o) {
        /* four channels of one image: adjacent planes, independent FMA chains */
        cn_dw_pepi pe4[4];
        const cn_dw_pepi *pp = NULL;
        if (J->epi) {
          for (int q = 0; q < 4; q++) dw_pepi(J, pl + q, &pe4[q]);
          pp = pe4;
        }
        cn_dw_sp_planes4_avx512(dw_in_run(J, &R, n, ic, 4, DW_LIMIT, tid), g->h * g->w, J->w + oc * khw, khw,
                                J->b ? J->b + oc : NULL, J->y + pl * g->oh * g->ow, g->oh * g->ow, J->sp, pp);
        pl += 4;
        continue;
      }
      cn_dw_sp_plane_avx512(dw_in_run(J, &R, n, ic, 1, DW_LIMIT, tid), J->w + oc * khw, J->b ? J->b[oc] : 0.0f,
                            J->y + pl * g->oh * g->ow, J->sp, 0, dw_pepi(J, pl, &pe));
      pl++;
    }
    return;
  }
  if (J->s2) {
    for (long pl = p0; pl < p1; pl++) {
      const long n = pl / g->o, oc = pl % g->o, ic = oc / J->mult;
      cn_dw_s2_plane_avx512(dw_in_run(J, &R, n, ic, 1, DW_LIMIT, tid), J->w + oc * khw, J->b ? J->b[oc] : 0.0f,
                            J->y + pl * g->oh * g->ow, g->h, g->w, dw_pepi(J, pl, &pe));
    }
    return;
  }
  if (J->w16) {
    for (long pl = p0; pl < p1; pl++) {
      const long n = pl / g->o, oc = pl % g->o, ic = oc / J->mult;
      cn_dw_w16_plane_avx512(dw_in_run(J, &R, n, ic, 1, DW_LIMIT, tid), J->w + oc * khw, J->b ? J->b[oc] : 0.0f,
                             J->y + pl * g->oh * g->ow, g->h, g->w, g->ph, g->oh, 0, dw_pepi(J, pl, &pe));
    }
    return;
  }
  if (J->plan) {
    for (long pl = p0; pl < p1; pl++) {
      const long n = pl / g->o, oc = pl % g->o, ic = oc / J->mult;
      cn_dw_s1_plane_avx512(dw_in_run(J, &R, n, ic, 1, DW_LIMIT, tid), J->w + oc * khw, J->b ? J->b[oc] : 0.0f,
                            J->y + pl * g->oh * g->ow, J->plan, 0, dw_pepi(J, pl, &pe));
    }
    return;
  }
  for (long pl = p0; pl < p1; pl++) {
    const long n = pl / g->o, oc = pl % g->o, ic = oc / J->mult;
    K.dw_plane(dw_in_run(J, &R, n, ic, 1, DW_LIMIT, tid), g->h, g->w, J->w + oc * khw, J->b ? J->b[oc] : 0.0f,
               J->y + pl * g->oh * g->ow, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow, 0, ph, tmp);
    DW_EPI(pl);
  }
}
#undef DW_LIMIT

/* planes per task when the statistics partials follow each task, so that its planes are still
 * in the L2 (the default split gave ~1,150 planes of 4 KB per task at 32x32: the partials then
 * cost half the separate statistics pass; 64-256 planes: a quarter) */
#define DW_STATS_PLANES 64

static long planes_per_task(long total, long plane_work) {
  const int T = cn_num_threads();
  if (T == 1) return total;
  long per = total / (8L * T);
  const long min_per = 16384 / (plane_work > 0 ? plane_work : 1) + 1;
  if (per < min_per) per = min_per;
  if (per < 1) per = 1;
  return per;
}

static void cn_dw_forward_tfe(const float *x, const cn_intf *tf, const float *w, const float *b, float *y,
                              const cn_conv_geom *g, const cn_epilogue *epi, float *gs);

int cn_dw_forward_stats(const float *x, const cn_intf *tf, const float *w, float *y, const cn_conv_geom *g, float *gs) {
  if (bn_group_planes(g->oh * g->ow) != 1) return 0; /* groups of several images span tasks */
  cn_dw_forward_tfe(x, tf, w, NULL, y, g, NULL, gs);
  return 1;
}

void cn_dw_forward(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g) {
  cn_dw_forward_tfe(x, NULL, w, b, y, g, NULL, NULL);
}

void cn_dw_forward_tf(const float *x, const cn_intf *tf, const float *w, const float *b, float *y,
                      const cn_conv_geom *g) {
  cn_dw_forward_tfe(x, tf, w, b, y, g, NULL, NULL);
}

void cn_dw_forward_epi(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g,
                       const cn_epilogue *epi) {
  cn_dw_forward_tfe(x, NULL, w, b, y, g, epi, NULL);
}

static void cn_dw_forward_tfe(const float *x, const cn_intf *tf, const float *w, const float *b, float *y,
                              const cn_conv_geom *g, const cn_epilogue *epi, float *gs) {
  ensure_k();
  dw_job J;
  memset(&J, 0, sizeof(J));
  J.epi = epi;
  J.gs = gs;
  J.tf = tf;
  J.x = x;
  J.w = w;
  J.b = b;
  J.y = y;
  J.g = g;
  J.mult = g->o / g->c;
  J.total = g->n * g->o;
  J.planes_per_task = planes_per_task(J.total, g->oh * g->ow * g->kh * g->kw);
  if (gs && J.planes_per_task > DW_STATS_PLANES) J.planes_per_task = DW_STATS_PLANES;
  cn_dw_plan P;
  cn_dw_sp_plan SP;
  dw_fwd_plans(&J, g, &P, &SP);
  cn_parallel((J.total + J.planes_per_task - 1) / J.planes_per_task, dw_fwd_task, &J);
  dw_job_release(&J);
}

struct cn_dw_prep {
  dw_job J;
  cn_conv_geom g1;
  cn_epilogue e;
  cn_dw_plan P;
  cn_dw_sp_plan SP;
};

cn_dw_prep *cn_dw_prepare(const cn_conv_geom *g, const float *w, const cn_epilogue *epi) {
  ensure_k();
  cn_dw_prep *p = (cn_dw_prep *)calloc(1, sizeof(cn_dw_prep));
  if (!p) abort();
  p->g1 = *g;
  p->g1.n = 1;
  const cn_conv_geom *g1 = &p->g1;
  dw_job *J = &p->J;
  J->g = g1;
  J->w = w;
  J->b = epi ? epi->bias : NULL; /* the bias is part of the depthwise accumulation */
  if (epi) {
    p->e = *epi;
    p->e.bias = NULL;
    J->epi = &p->e;
  }
  J->mult = g1->o / g1->c;
  J->total = g1->o;
  J->planes_per_task = J->total;
  dw_fwd_plans(J, g1, &p->P, &p->SP);
  return p;
}

void cn_dw_forward_one(const cn_dw_prep *p, const float *x, float *y, int tid) {
  dw_job J = p->J;
  J.x = x;
  J.y = y;
  dw_fwd_task(&J, 0, tid);
}

void cn_dw_release(cn_dw_prep *p) {
  dw_job_release(&p->J);
  free(p);
}

/* dx planes (n, ic) for the task's range. */
static void dw_bwd_in_task(void *ctx, long t, int tid) {
  const dw_job *J = (const dw_job *)ctx;
  const cn_conv_geom *g = J->g;
  const long khw = g->kh * g->kw;
  const long p0 = t * J->planes_per_task;
  long p1 = p0 + J->planes_per_task;
  if (p1 > J->total) p1 = J->total;
  if (J->s2) {
    for (long pl = p0; pl < p1; pl++) {
      const long n = pl / g->c, ic = pl % g->c;
      float *dxp = (float *)J->y + pl * g->h * g->w;
      for (long m = 0; m < J->mult; m++) {
        const long oc = ic * J->mult + m;
        cn_dw_s2_dgrad_avx512(J->x + (n * g->o + oc) * g->oh * g->ow, J->w + oc * khw, dxp, g->h, g->w, m > 0);
      }
    }
    return;
  }
  if (J->sp && J->sp->is4x4 && J->sp->transposed && J->mult == 1) {
    cn_dw_dgrad_4x4_avx512(J->x, J->w, g->c, p0, p1, (float *)J->y);
    return;
  }
  if (J->sp && J->sp->is2x2 && J->sp->transposed && J->mult == 1) {
    cn_dw_dgrad_2x2_avx512(J->x, J->w, g->c, p0, p1, (float *)J->y);
    return;
  }
  if (J->sp && J->sp->is4s2 && J->sp->transposed && J->mult == 1) {
    cn_dw_dgrad_4x4s2_avx512(J->x, J->w, g->c, p0, p1, (float *)J->y);
    return;
  }
  if (J->sp && J->sp->is8s2 && J->sp->transposed && J->mult == 1) {
    for (long pl = p0; pl < p1; pl++)
      cn_dw_dgrad_8x8s2_avx512(J->x + pl * 16, J->w + (pl % g->c) * khw, (float *)J->y + pl * 64);
    return;
  }
  if (J->sp) {
    /* dx = sum_m of dy planes gathered through the transposed plan */
    for (long pl = p0; pl < p1; pl++) {
      const long n = pl / g->c, ic = pl % g->c;
      float *dxp = (float *)J->y + pl * g->h * g->w;
      for (long m = 0; m < J->mult; m++) {
        const long oc = ic * J->mult + m;
        cn_dw_sp_plane_avx512(J->x + (n * g->o + oc) * g->oh * g->ow, J->w + oc * khw, 0.0f, dxp, J->sp, m > 0, NULL);
      }
    }
    return;
  }
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
                                 g->kh - 1 - g->ph, g->h, m > 0, NULL);
          continue;
        }
        if (J->plan) {
          cn_dw_s1_plane_avx512(J->x + (n * g->o + oc) * g->oh * g->ow, wfl, 0.0f, dxp, J->plan, m > 0, NULL);
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

/* the input-gradient job (its plans in P / SP, released by dw_job_release) */
static void dw_bwd_in_setup(dw_job *J, const float *dy, const float *w, float *dx, const cn_conv_geom *g,
                            cn_dw_plan *P, cn_dw_sp_plan *SP) {
  ensure_k();
  memset(J, 0, sizeof(*J));
  J->x = dy;
  J->w = w;
  J->y = dx;
  J->g = g;
  J->mult = g->o / g->c;
  J->total = g->n * g->c;
  J->flip = (g->sh == 1 && g->sw == 1 && g->ph <= g->kh - 1 && g->pw <= g->kw - 1);
  J->planes_per_task = planes_per_task(J->total, g->oh * g->ow * g->kh * g->kw * J->mult);
  if (dw_sp_plan(SP, g, 1)) J->sp = SP;
  J->s2 = !J->sp && dw_s2(g);
  J->w16 = !J->sp && J->flip && K_isa == 2 && cn_dw_w16_applicable(g->ow, g->kh, g->kw, 1, 1, g->kw - 1 - g->pw, g->w);
  if (!J->sp && J->flip && !J->w16 &&
      dw_fast_plan(P, g->oh, g->ow, g->kh, g->kw, 1, 1, g->kh - 1 - g->ph, g->kw - 1 - g->pw, g->h, g->w))
    J->plan = P;
}

void cn_dw_backward_input(const float *dy, const float *w, float *dx, const cn_conv_geom *g) {
  dw_job J;
  cn_dw_plan P;
  cn_dw_sp_plan SP;
  dw_bwd_in_setup(&J, dy, w, dx, g, &P, &SP);
  cn_parallel((J.total + J.planes_per_task - 1) / J.planes_per_task, dw_bwd_in_task, &J);
  dw_job_release(&J);
}

/* Weight gradient: the batch is cut into a fixed number of chunks (deterministic whatever the
 * thread count); each chunk walks its images in memory order and accumulates per-channel taps
 * in double; the chunks are then added in order. */
#define DW_MAX_CHUNKS 16
#define DW_PREFETCH_CHANNELS 4 /* (2 and 8 measured the same) */

/* the weight gradient of the plane pair (image n, output channel oc) into acc: large planes
 * (>= 256 outputs), one call per pair, in memory order */
static void dw_wgrad_one(const dw_job *J, dw_run *R, const float *dy, long n, long oc, double *acc, int tid) {
  const cn_conv_geom *g = J->g;
  const long ic = oc / J->mult;
  const float *x = dw_in_run(J, R, n, ic, 1, g->c - ic, tid);
  if (J->s2) {
    cn_dw_s2_wgrad_avx512(dy, 0, x, 0, 1, g->h, g->w, acc);
  } else if (J->w16) {
    cn_dw_w16_wgrad_avx512(dy, 0, x, 0, 1, g->h, g->w, g->ph, g->oh, acc);
  } else if (J->plan) {
    cn_dw_s1_wgrad_avx512(dy, 0, x, 0, 1, J->plan, acc);
  } else {
    float *ph = cn_ws(tid, CN_WS_TMP, (size_t)dw_phase_floats(g->oh, g->ow, g->kh, g->kw, g->sh, g->sw));
    float *dyp = cn_ws(tid, CN_WS_TMP2, (size_t)dw_row_floats(g->oh, g->ow, g->kh, g->kw, g->sw));
    if (!ph || !dyp) abort();
    K.dw_wgrad_planes(dy, 0, x, 0, 1, g->h, g->w, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh, g->ow, ph, dyp,
                      acc);
  }
}

static void dw_bwd_w_task(void *ctx, long ch, int tid) {
  const dw_job *J = (const dw_job *)ctx;
  const cn_conv_geom *g = J->g;
  const long khw = g->kh * g->kw;
  double *acc = J->part + ch * g->o * khw;
  for (long q = 0; q < g->o * khw; q++) acc[q] = 0.0;
  const long n0 = ch * g->n / J->nchunks, n1 = (ch + 1) * g->n / J->nchunks;
  const long ohw = g->oh * g->ow, xs = dw_xs(J);
  if (ohw >= 256) {
    dw_run R = {0, 0, 0, NULL};
    for (long n = n0; n < n1; n++)
      for (long oc = 0; oc < g->o; oc++) dw_wgrad_one(J, &R, J->b + (n * g->o + oc) * ohw, n, oc, acc + oc * khw, tid);
    return;
  }
  /* small planes: per channel over the chunk's images, lanes reduced once; the planes of the
   * channel DW_PREFETCH_CHANNELS ahead prefetched (each image's plane is a page or more from the
   * next: one line or a few per plane, which the hardware prefetcher does not follow) */
  float *ph = NULL, *dyp = NULL;
  if (!J->s2 && !J->sp && !J->w16 && !J->plan) {
    ph = cn_ws(tid, CN_WS_TMP, (size_t)dw_phase_floats(g->oh, g->ow, g->kh, g->kw, g->sh, g->sw));
    dyp = cn_ws(tid, CN_WS_TMP2, (size_t)dw_row_floats(g->oh, g->ow, g->kh, g->kw, g->sw));
    if (!ph || !dyp) abort();
  }
  const long hw = g->h * g->w;
  long oc0 = 0;
  const int four = J->sp && (J->sp->is2x2 || J->sp->is4s2) && J->mult == 1;
  if (four) /* four channels at a time (their dy in one vector per image), the rest below */
    for (; oc0 + 4 <= g->o; oc0 += 4) {
      if (oc0 + 8 < g->o)
        for (long n = n0; n < n1; n++) {
          for (long b = 0; b < 4 * hw; b += 16) __builtin_prefetch(J->x + (n * g->c + oc0 + 8) * hw + b);
          __builtin_prefetch(J->b + (n * g->o + oc0 + 8) * ohw);
        }
      const float *dy = J->b + (n0 * g->o + oc0) * ohw, *x = J->x + (n0 * g->c + oc0) * hw;
      if (J->sp->is2x2)
        cn_dw_wgrad_2x2_avx512(dy, g->o * ohw, x, g->c * hw, n1 - n0, J->tf, oc0, acc + oc0 * khw);
      else
        cn_dw_wgrad_4x4s2_avx512(dy, g->o * ohw, x, g->c * hw, n1 - n0, J->tf, oc0, acc + oc0 * khw);
    }
  for (long oc = oc0; oc < g->o; oc++) {
    if (oc + DW_PREFETCH_CHANNELS < g->o) {
      const long pc = oc + DW_PREFETCH_CHANNELS, pic = pc / J->mult;
      for (long n = n0; n < n1; n++) {
        const char *px = (const char *)(J->x + (n * g->c + pic) * hw), *pd = (const char *)(J->b + (n * g->o + pc) * ohw);
        for (long b = 0; b < hw * (long)sizeof(float); b += 64) __builtin_prefetch(px + b);
        for (long b = 0; b < ohw * (long)sizeof(float); b += 64) __builtin_prefetch(pd + b);
      }
    }
    const float *dy = J->b + (n0 * g->o + oc) * ohw, *x = dw_in(J, n0, n1 - n0, oc / J->mult, tid);
    double *a = acc + oc * khw;
    if (J->s2)
      cn_dw_s2_wgrad_avx512(dy, g->o * ohw, x, xs, n1 - n0, g->h, g->w, a);
    else if (J->sp)
      cn_dw_sp_wgrad_avx512(dy, g->o * ohw, x, xs, n1 - n0, J->sp, a);
    else if (J->w16)
      cn_dw_w16_wgrad_avx512(dy, g->o * ohw, x, xs, n1 - n0, g->h, g->w, g->ph, g->oh, a);
    else if (J->plan)
      cn_dw_s1_wgrad_avx512(dy, g->o * ohw, x, xs, n1 - n0, J->plan, a);
    else
      K.dw_wgrad_planes(dy, g->o * ohw, x, xs, n1 - n0, g->h, g->w, g->kh, g->kw, g->sh, g->sw, g->ph, g->pw, g->oh,
                        g->ow, ph, dyp, a);
  }
}

void cn_dw_backward_weight(const float *dy, const float *x, float *dw, const cn_conv_geom *g) {
  cn_dw_backward_weight_tf(dy, x, NULL, dw, g);
}

/* the weight-gradient job: per-chunk partial sums in J->part (malloc'd), plans in P / SP */
static void dw_bwd_w_setup(dw_job *J, const float *dy, const float *x, const cn_intf *tf, const cn_conv_geom *g,
                           cn_dw_plan *P, cn_dw_sp_plan *SP) {
  ensure_k();
  memset(J, 0, sizeof(*J));
  J->tf = tf;
  J->x = x;
  J->b = dy;
  J->g = g;
  J->mult = g->o / g->c;
  J->nchunks = g->n < DW_MAX_CHUNKS ? g->n : DW_MAX_CHUNKS;
  J->part = (double *)malloc(sizeof(double) * (size_t)(J->nchunks * g->o * g->kh * g->kw));
  if (!J->part) abort();
  dw_fwd_plans(J, g, P, SP);
}

/* dw = the chunks' partial sums added in order; frees them */
static void dw_bwd_w_finish(dw_job *J, float *dw) {
  const long count = J->g->o * J->g->kh * J->g->kw;
  for (long q = 0; q < count; q++) {
    double s = 0.0;
    for (long ch = 0; ch < J->nchunks; ch++) s += J->part[ch * count + q];
    dw[q] = (float)s;
  }
  free(J->part);
  dw_job_release(J);
}

void cn_dw_backward_weight_tf(const float *dy, const float *x, const cn_intf *tf, float *dw, const cn_conv_geom *g) {
  dw_job J;
  cn_dw_plan P;
  cn_dw_sp_plan SP;
  dw_bwd_w_setup(&J, dy, x, tf, g, &P, &SP);
  run_tasks(J.nchunks, dw_bwd_w_task, &J, 2 * g->n * g->o * g->oh * g->ow);
  dw_bwd_w_finish(&J, dw);
}

/* ---- both depthwise gradients in one pass -------------------------------------------------------
 * The weight gradient's large-plane walk (image by image, channel by channel) computes each
 * input-gradient plane right after the weight-gradient plane of the same channel and image,
 * while that dy plane is in the L1 (instead of a second pass over dy from memory). Channel
 * multiplier 1, planes of 256 values and up, AVX-512 plane kernels on both sides (no scratch
 * shared between the two). Both results the same floats as the separate kernels. */
typedef struct {
  dw_job w, i;   /* the weight-gradient and input-gradient jobs */
  float *wfl;    /* flipped kernels (stride 1) */
  float *bnp;    /* the batch-norm backward's partials of dx (see cn_dw_backward_both), or NULL */
  long G;        /* their image groups */
  const cn_bwtf *dt; /* dy computed plane by plane from a batch norm + activation backward, or NULL */
} dw_both_job;

static void dw_bwd_both_task(void *ctx, long ch, int tid) {
  const dw_both_job *B = (const dw_both_job *)ctx;
  const dw_job *J = &B->w, *I = &B->i;
  const cn_conv_geom *g = J->g;
  const long khw = g->kh * g->kw, ohw = g->oh * g->ow, hw = g->h * g->w;
  double *acc = J->part + ch * g->o * khw;
  for (long q = 0; q < g->o * khw; q++) acc[q] = 0.0;
  const long n0 = ch * g->n / J->nchunks, n1 = (ch + 1) * g->n / J->nchunks;
  dw_run R = {0, 0, 0, NULL};
  const cn_intf *tf = J->tf;
  /* the partials' accumulators: per channel while a group of several images is walked */
  float one[64], *bacc = B->G > 1 ? cn_ws(tid, CN_WS_BLK1, (size_t)(64 * g->c)) : one;
  float *dys = B->dt ? cn_ws(tid, CN_WS_BLK2, (size_t)ohw) : NULL;
  if (!bacc || (B->dt && !dys)) abort();
  for (long n = n0; n < n1; n++)
    for (long oc = 0; oc < g->o; oc++) {
      const float *dyp = J->b + (n * g->o + oc) * ohw;
      if (B->dt) { /* this dy plane, from the gradient and the batch norm's input (the next
                    * plane's prefetched for the next one: they are computed apart) */
        cn_bn_bw_apply_rows(B->dt, n, oc, oc + 1, dys);
        dyp = dys;
        const long nx = (n * g->o + oc + 1) * ohw;
        if (n + 1 < n1 || oc + 1 < g->o)
          for (long b = 0; b < ohw; b += 16) {
            __builtin_prefetch(B->dt->g + nx + b);
            __builtin_prefetch(B->dt->x + nx + b);
          }
      }
      dw_wgrad_one(J, &R, dyp, n, oc, acc + oc * khw, tid);
      float *dxp = I->y + (n * g->c + oc) * hw;
      if (I->s2)
        cn_dw_s2_dgrad_avx512(dyp, I->w + oc * khw, dxp, g->h, g->w, 0);
      else if (I->w16)
        cn_dw_w16_plane_avx512(dyp, B->wfl + oc * khw, 0.0f, dxp, g->oh, g->ow, g->kh - 1 - g->ph, g->h, 0, NULL);
      else
        cn_dw_s1_plane_avx512(dyp, B->wfl + oc * khw, 0.0f, dxp, I->plan, 0, NULL);
      if (B->bnp) { /* this dx plane (in the L1) with its x plane (just transformed) */
        float *a = B->G > 1 ? bacc + 64 * oc : bacc;
        if (n % B->G == 0) memset(a, 0, 64 * sizeof(float));
        K.dot2_acc(dxp, J->x + (n * g->c + oc) * hw, hw, tf->mean[oc], tf->scale[oc], tf->shift[oc], tf->act, a);
        if ((n + 1) % B->G == 0 || n + 1 == g->n) {
          const long grp = n / B->G;
          K.dot2_fin(a, &B->bnp[(grp * g->c + oc) * 2], &B->bnp[(grp * g->c + oc) * 2 + 1]);
        }
      }
    }
}

int cn_dw_backward_both(const float *dy, const float *x, const cn_intf *tf, const float *w, float *dx, float *dw,
                        const cn_conv_geom *g, float *bnp, const cn_bwtf *dt) {
  ensure_k();
  /* (fewer image chunks than threads: the separate input gradient uses every thread) */
  if (K_isa != 2 || g->o != g->c || g->groups != g->c || g->oh * g->ow < 256 ||
      (g->n < DW_MAX_CHUNKS && g->n < cn_num_threads()))
    return 0;
  dw_both_job B;
  cn_dw_plan Pw, Pi;
  cn_dw_sp_plan SPw, SPi;
  dw_bwd_in_setup(&B.i, dy, w, dx, g, &Pi, &SPi);
  const int in_ok = !B.i.sp && (B.i.s2 || (B.i.flip && (B.i.w16 || B.i.plan)));
  if (!in_ok) {
    dw_job_release(&B.i);
    return 0;
  }
  dw_bwd_w_setup(&B.w, dy, x, tf, g, &Pw, &SPw);
  if (!(B.w.s2 || B.w.w16 || B.w.plan) || B.w.sp) { /* (the generic plane kernels share scratch) */
    free(B.w.part);
    dw_job_release(&B.w);
    dw_job_release(&B.i);
    return 0;
  }
  const long khw = g->kh * g->kw;
  B.wfl = (float *)malloc(sizeof(float) * (size_t)(g->c * khw));
  if (!B.wfl) abort();
  for (long c = 0; c < g->c; c++)
    for (long q = 0; q < khw; q++) B.wfl[c * khw + q] = w[c * khw + khw - 1 - q];
  /* the partials when asked for, with an activation in the transform (the batch norm + activation
   * backward's), and every image group inside one chunk of images (a task) */
  B.G = bn_group_planes(g->h * g->w);
  B.dt = dt;
  B.bnp = bnp && tf && tf->act && cn_bn_groups_in_chunks(g->n, B.w.nchunks, g->h * g->w) ? bnp : NULL;
  run_tasks(B.w.nchunks, dw_bwd_both_task, &B, 2 * g->n * g->o * g->oh * g->ow);
  free(B.wfl);
  dw_job_release(&B.i);
  dw_bwd_w_finish(&B.w, dw);
  return B.bnp ? 2 : 1;
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
  if (J->oh == 1 && J->ow == 1 && J->w < 16) {
    /* global average of a small plane (the classifier heads): the general loop's arithmetic
     * (values added in double in row order) without its per-window index divisions */
    const long hw = J->h * J->w;
    double s = 0.0;
    for (long i = 0; i < hw; i++) s += xp[i];
    yp[0] = (float)(s / (double)hw);
    return;
  }
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
