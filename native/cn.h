/* convnets native CPU kernels: shared declarations.
 *
 * All tensors are contiguous NCHW float32. Kernels run synchronously on the calling thread plus
 * a persistent pthread pool (pool.c). The GEMM (gemm.c) is a cache-blocked, packed SGEMM whose
 * operands are produced by packing callbacks, so that convolution can fuse im2col into packing.
 */
#ifndef CONVNETS_CN_H
#define CONVNETS_CN_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define CN_RESTRICT __restrict__
#define CN_LIKELY(x) __builtin_expect(!!(x), 1)
#define CN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define CN_RESTRICT
#define CN_LIKELY(x) (x)
#define CN_UNLIKELY(x) (x)
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define CN_X86 1
#endif
#if defined(__aarch64__)
#define CN_ARM64 1
#endif

/* ---- thread pool (pool.c) ---------------------------------------------------------------- */
#define CN_MAX_THREADS 256
typedef void (*cn_task_fn)(void *ctx, long task, int tid);
/* Runs fn(ctx, t, tid) for t in [0, ntasks) on the pool; blocks until all are done. tid is in
 * [0, cn_num_threads()); tid 0 is the calling thread. Tasks are handed out dynamically. */
void cn_parallel(long ntasks, cn_task_fn fn, void *ctx);
int cn_num_threads(void);
void cn_set_num_threads(int n); /* n <= 0: default (CONVNETS_THREADS or the number of cores) */
void cn_pool_shutdown(void);

/* Per-thread workspace, reused across calls (grown on demand, 64-byte aligned, contents not
 * preserved when grown). Slot indices below. Returns NULL on allocation failure. */
enum { CN_WS_PACKA = 0, CN_WS_PACKB, CN_WS_TMP, CN_WS_TMP2, CN_WS_TILE, CN_WS_BLK1, CN_WS_BLK2, CN_WS_NSLOTS };
float *cn_ws(int tid, int slot, size_t nfloats);
/* Process-wide workspace (only used outside parallel regions, on the calling thread). */
enum { CN_GWS_A = 0, CN_GWS_B, CN_GWS_C, CN_GWS_NSLOTS };
float *cn_gws(int slot, size_t nfloats);
void cn_ws_free_all(void);

/* ---- GEMM (gemm.c) ----------------------------------------------------------------------- */
typedef struct cn_gemm cn_gemm;

/* An epilogue applied to the final values of an output (inference fusion of a convolution with
 * the batch norm, residual add and ReLU/ReLU6 after it): per row (channel) ch,
 *   y = act((y (+ bias[ch]) - mean[ch]) * scale[ch] + shift[ch] (+ res))
 * with exactly the arithmetic of the separate passes. res has the layout of the output
 * (res_base corresponds to out_base). */
typedef struct {
  const float *bias, *mean, *scale, *shift;
  const float *res_base;
  const float *out_base;
  long row0; /* channel of the first row */
  int act;   /* 0 none, 1 ReLU, 2 ReLU6 */
} cn_epilogue;
/* rows [0, rows) of len values at y + r * ldc, channels ch0 + r, in place (kernels.c, ISA dispatched) */
void cn_epi_rows(const cn_epilogue *e, float *y, long ldc, long rows, long len, long ch0);
/* Pack rows [i0, i0+len) x depth [k0, k0+kc) of A into ceil(len/MR) panels laid out
 * dst[panel][k][MR] (rows past len zero), or columns [j0, j0+len) x depth of B into panels
 * dst[panel][k][NR]. */
typedef void (*cn_pack_fn)(const cn_gemm *g, long i0, long len, long k0, long kc, float *dst, int tid);
/* Where B's panel of columns [j, j+NR) x depth [k0, ...) can be read in place (row k0 + k at
 * *base + k * *stride, NR contiguous floats), or 0 when it cannot (then it is packed). *tf: an
 * input transform to apply to the values read (row k is channel *ch0 + k), or NULL. */
typedef struct cn_intf cn_intf;
typedef int (*cn_bdirect_fn)(const cn_gemm *g, long j, long k0, const float **base, long *stride, const cn_intf **tf,
                             long *ch0);

struct cn_gemm {
  long M, N, K;
  cn_pack_fn pack_a, pack_b;
  cn_bdirect_fn b_direct; /* optional (set after cn_gemm_init*): B read in place for few rows */
  /* optional: called by the task that computed C's rows [m0, m1) x columns [n0, n1), once they
   * are final (the region still in the core's caches); column ranges are multiples of n_align
   * (but the last) when n_align > 1 */
  void (*post_task)(const cn_gemm *g, long m0, long m1, long n0, long n1);
  const void *pctx;
  long n_align;
  /* strided operands for the generic packers: A(i,k) = a[i*a_rs + k*a_cs], B(k,j) = b[k*b_rs + j*b_cs] */
  const float *a;
  long a_rs, a_cs;
  const float *b;
  long b_rs, b_cs;
  const void *actx, *bctx; /* context for custom packers */
  /* C: element (i, j) lives at c + (j / seg_len) * seg_stride + i * ldc + (j % seg_len) * cs
   * (cs == 1 for row-major C; a transposed C has ldc == 1 and cs == its row length). */
  float *c;
  long ldc, seg_len, seg_stride, cs;
  int accumulate; /* add into C instead of overwriting it */
  const cn_epilogue *epi; /* applied to each tile once its last depth block is stored, or NULL */
  /* B packed once for the whole call (cn_gemm_parallel sets it when several row tasks would
   * each pack the same small B): depth block pc, panel q at bpre + pc * bpre_npan * NR + q * kc * NR */
  const float *bpre;
  long bpre_npan;
  /* A packed once by the caller (cn_gemm_prepack_a) for calls over rows [0, M): depth block pc
   * at apre + mrows * pc, mrows = M rounded up to MR (the layout of a task's packed-once A) */
  const float *apre;
};
/* pack all of g's A for g->apre (mrows * K floats, mrows = M rounded up to the micro-tile) */
size_t cn_gemm_apre_floats(const cn_gemm *g);
void cn_gemm_prepack_a(const cn_gemm *g, float *dst);

typedef struct {
  const char *name;
  int mr, nr;
  long kc, mc, nc;
  /* C[0..MR)[0..NR) (row stride ldc) = (overwrite ? 0 : C) + A_panel * B_panel over kc */
  void (*ukr)(long kc, const float *a, const float *b, float *c, long ldc, int overwrite);
} cn_isa_gemm;

extern cn_isa_gemm cn_gk; /* the selected micro-kernel and blocking */
extern int cn_isa_id;     /* the selected instruction set: 0 scalar, 1 avx2, 2 avx512, 3 neon */
const char *cn_isa_name(void);
/* Select the instruction set: "auto", "avx512", "avx2", "neon" or "scalar". Returns 0 if the
 * request is not supported by this CPU/build (the selection is then unchanged). */
int cn_select_isa(const char *name);

void cn_gemm_init_strided(cn_gemm *g, long M, long N, long K, const float *a, long a_rs, long a_cs,
                          const float *b, long b_rs, long b_cs, float *c, long ldc);
void cn_gemm_parallel(const cn_gemm *g);
long cn_gemm_nc(long K); /* column blocking used for depth K */                                    /* uses the pool */
void cn_gemm_serial(const cn_gemm *g, long m0, long m1, long n0, long n1, int tid); /* one thread */
void cn_pack_a_strided(const cn_gemm *g, long i0, long len, long k0, long kc, float *dst, int tid);
void cn_pack_b_strided(const cn_gemm *g, long i0, long len, long k0, long kc, float *dst, int tid);

/* ---- convolution (conv.c) ---------------------------------------------------------------- */
typedef struct {
  long n, c, h, w, o, kh, kw, sh, sw, ph, pw, groups, oh, ow;
} cn_conv_geom;

/* An input transform (training fusion): the convolution reads act((x - mean[c]) * scale[c] +
 * shift[c]) instead of x, per input channel c — the batch norm + activation before it, never
 * stored — with exactly batch-norm apply's arithmetic (so the same floats as materialising it). */
struct cn_intf {
  const float *mean, *scale, *shift;
  int act; /* 0 none, 1 ReLU, 2 ReLU6 */
};
/* a 1x1 convolution, stride 1, no padding, one group: a GEMM over the channels (conv.c) */
int cn_conv_pointwise(const cn_conv_geom *g);
/* whether convolutions of geometry g take an input transform (pointwise, or depthwise) */
int cn_intf_supported(const cn_conv_geom *g);
/* dst row r (len floats at dst + r * dst_stride) = the transform of src row r, channel
 * ch0 + r * ch_step (kernels.c, ISA dispatched) */
void cn_intf_rows(const cn_intf *tf, const float *src, long src_stride, float *dst, long dst_stride, long rows,
                  long len, long ch0, long ch_step);
void cn_intf_rows_avx512(const cn_intf *tf, const float *src, long src_stride, float *dst, long dst_stride, long rows,
                         long len, long ch0, long ch_step);

void cn_conv2d(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g);
/* cn_conv2d / cn_conv2d_backward_weight of the transformed input (tf may be NULL; non-NULL only
 * where cn_intf_supported) */
void cn_conv2d_tf(const float *x, const cn_intf *tf, const float *w, const float *b, float *y, const cn_conv_geom *g);
/* cn_conv2d_tf without bias that also writes the batch statistics partials of its output
 * (cn_bn_group_stats layout, 2 * ceil(n / cn_bn_group_images(oh * ow)) * o floats) where its
 * path computes them (the packed GEMM: returns 1), else 0 (gstats untouched) */
int cn_conv2d_stats(const float *x, const cn_intf *tf, const float *w, float *y, const cn_conv_geom *g, float *gstats);
void cn_conv2d_backward_weight_tf(const float *dy, const float *x, const cn_intf *tf, float *dw,
                                  const cn_conv_geom *g);
/* convolution with an epilogue (epi->bias is the conv bias; epi->out_base == y) */
void cn_conv2d_epi(const float *x, const float *w, float *y, const cn_conv_geom *g, const cn_epilogue *epi);
void cn_conv2d_backward_input(const float *dy, const float *w, float *dx, const cn_conv_geom *g);
/* The same for a pointwise convolution whose input is act(batch norm(bx)) (t: that transform,
 * act 1 or 2): on AVX-512, with planes of 256 values and up and at least two image groups, also the
 * partials of that batch norm + activation's backward for dx (cn_bn_bw_coefs), computed by each
 * GEMM task on the whole image groups it computed; returns 1 then, else 0 (dx computed anyway). */
int cn_conv2d_backward_input_bnp(const float *dy, const float *w, float *dx, const cn_conv_geom *g, const cn_intf *t,
                                 const float *bx, float *parts);
/* direct stride-1 "same" convolution without im2col (conv_direct.c, AVX-512); applies() says
 * whether the geometry (and the selected ISA) is supported; epi may be NULL */
int cn_conv_direct_applies(const cn_conv_geom *g);
void cn_conv_direct(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g,
                    const cn_epilogue *epi);
/* its weight gradient (also needs O % 8 == 0 and kw == 3) */
int cn_conv_direct_bw_applies(const cn_conv_geom *g);
void cn_conv_direct_backward_weight(const float *dy, const float *x, float *dw, const cn_conv_geom *g);
/* y = epi(pointwise conv (w, geometry g) of act(bn(depthwise conv of x (geometry gd, weights wd,
 * bias bd, batch norm md/sd/td, activation actd)))), the depthwise output never stored: 4x4
 * planes computed while packing the GEMM's input (AVX-512, stride-1 "same" 3x3), input planes of
 * 16x16 and more image by image in per-thread scratch (cn_block_infer). epi: as cn_conv2d_epi
 * (epi->bias is the pointwise bias), or NULL. Returns 0 without computing anything otherwise. */
int cn_conv2d_dwpw(const float *x, const cn_conv_geom *gd, const float *wd, const float *bd, const float *md,
                   const float *sd, const float *td, int actd, const float *w, float *y, const cn_conv_geom *g,
                   const cn_epilogue *epi);
/* The batch norm + activation (act 1 or 2) backward's apply pass, dx = kb * (g * mask - mdy -
 * (x - mean) * q) per channel, mask where 0 < (x - mean) * ka + kt (< 6): g (n, c, hw) the
 * activation output's gradient, x the batch norm's input, coef = kb (c) | mdy (c) | q (c). */
typedef struct {
  const float *g, *x, *mean, *ka, *kt, *coef;
  long c, hw;
  int act;
} cn_bwtf;
/* Both gradients of a pointwise convolution in one pass over dy where the dot-product weight
 * gradient applies (AVX-512, 16x16 planes and up, few input channels): each image's input
 * gradient right after its weight-gradient tiles, its dy still in cache. The same floats as
 * cn_conv2d_backward_input and cn_conv2d_backward_weight_tf. Returns 0 (nothing computed)
 * elsewhere. dt: dy is that batch norm + activation backward's dx (dy itself unused), computed
 * image by image into the thread's scratch (cn_bn_bw_apply_rows) instead of read. bnp: as for
 * cn_dw_backward_both (per image group after its input gradients; then also with more than 64
 * input channels); returns 2 when it computed them. */
int cn_conv2d_backward_pw(const float *dy, const float *x, const cn_intf *tf, const float *w, float *dx, float *dw,
                          const cn_conv_geom *g, const cn_bwtf *dt, float *bnp);
/* The same for a depthwise convolution (kernels.c): channel multiplier 1, planes of 256 values
 * and up, AVX-512; 0 elsewhere. With bnp (2 * ceil(n / cn_bn_group_images(h * w)) * c floats)
 * and a transform with an activation, also the partials of that batch norm + activation's
 * backward for dx (cn_bn_bw_coefs); returns 2 when it computed them. dt: as for
 * cn_conv2d_backward_pw, dy computed plane by plane (cn_bn_bw_apply_rows). */
int cn_dw_backward_both(const float *dy, const float *x, const cn_intf *tf, const float *w, float *dx, float *dw,
                        const cn_conv_geom *g, float *bnp, const cn_bwtf *dt);
void cn_conv2d_backward_weight(const float *dy, const float *x, float *dw, const cn_conv_geom *g);
/* MobileNetV2's inverted residual block in inference, one image at a time with the two expanded
 * intermediates in per-thread scratch (never stored): y = e3(pointwise g3 (w3) of
 * e2(depthwise g2 (w2) of e1(pointwise g1 (w1) of x))). e1, e2: their convolution's bias (or
 * NULL) + batch norm + activation, no residual; e3: as cn_conv2d_epi (may have a residual), or
 * NULL (then no bias). g1 NULL: no expansion (x is the depthwise input; MobileNet's separable
 * pair). The same floats as the fused convolutions. Returns 0 without computing anything where
 * the shapes do not chain or the depthwise geometry is not one of cn_block_planes. */
/* the depthwise geometries cn_block_infer takes (measured faster image by image): input planes
 * of 16x16 and more, or 8x8 and more at stride 1 */
int cn_block_planes(const cn_conv_geom *gd);
int cn_block_infer(const float *x, const cn_conv_geom *g1, const float *w1, const cn_epilogue *e1,
                   const cn_conv_geom *g2, const float *w2, const cn_epilogue *e2, const cn_conv_geom *g3,
                   const float *w3, const cn_epilogue *e3, float *y);

/* ---- other kernels (kernels.c) ----------------------------------------------------------- */
typedef struct {
  long n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
} cn_pool_geom;

void cn_bn_train(const float *x, const float *wt, const float *bs, float *y, float *mean, float *var, float *invstd,
                 long n, long c, long hw, double eps);
void cn_bn_eval(const float *x, const float *mean, const float *var, const float *wt, const float *bs, float *y,
                long n, long c, long hw, double eps);
void cn_bn_stats(const float *x, float *mean, float *var, float *invstd, long n, long c, long hw, double eps);
/* batch statistics from per-group partials (training fusion: computed by the convolution that
 * produced the tensor, while its output is in cache): groups of cn_bn_group_images(hw) images,
 * gs[(group * c + ch) * 2 + 0 / 1] = the group's mean / squared deviations as the statistics
 * kernels compute them, so that cn_bn_stats_from_groups gives cn_bn_stats's values */
long cn_bn_group_images(long hw);
/* whether the image chunks [ch * n / nchunks, (ch + 1) * n / nchunks) of a task split (as the
 * weight-gradient passes cut the batch) hold whole groups of cn_bn_group_images(hw) images */
int cn_bn_groups_in_chunks(long n, long nchunks, long hw);
void cn_bn_group_stats(const float *y, long n, long c, long hw, long g0, long g1, long c0, long c1, float *gs);
void cn_bn_stats_from_groups(const float *gs, long n, long c, long hw, double eps, float *mean, float *var,
                             float *invstd);
void cn_bn_apply(const float *x, const float *mean, const float *scale, const float *shift, const float *res, float *y,
                 long n, long c, long hw, int act);
void cn_bn_backward_act(const float *dy, const float *x, const float *mean, const float *invstd, const float *wt,
                        const float *ka, const float *kt, float *dx, float *dw, float *db, long n, long c, long hw,
                        int act);
/* coef, and the parameter gradients dw and db, from the reductions' per-group partials computed
 * by the kernel that produced g (cn_dw_backward_both's bnp): the values cn_bn_backward_act
 * computes */
void cn_bn_bw_coefs(const float *parts, const float *invstd, const float *wt, float *dw, float *db, float *coef,
                    long n, long c, long hw);
/* the partials (as cn_dw_backward_both's bnp) of image groups [g0, g1) and channels [c0, c1) of
 * g (n, c, hw), with x the batch norm's input and t its forward transform (act 1 or 2) */
void cn_bn_bw_group_parts(const float *g, const float *x, const cn_intf *t, long n, long c, long hw, long g0, long g1,
                          long c0, long c1, float *parts);
/* the apply pass over n images into dx, or image n's planes c0 .. c1 - 1 into dst */
void cn_bn_bw_apply(const cn_bwtf *t, float *dx, long n);
void cn_bn_bw_apply_rows(const cn_bwtf *t, long n, long c0, long c1, float *dst);
void cn_bn_backward(const float *dy, const float *x, const float *mean, const float *invstd, const float *wt,
                    float *dx, float *dw, float *db, long n, long c, long hw);

enum { CN_EW_RELU = 0, CN_EW_RELU6, CN_EW_RELU_BW, CN_EW_RELU6_BW, CN_EW_ADD, CN_EW_MUL, CN_EW_SCALE, CN_EW_ADD_INPLACE };
void cn_elementwise(int op, const float *a, const float *b, float *y, long n, float s);

void cn_maxpool(const float *x, float *y, int32_t *argmax, const cn_pool_geom *g);
void cn_maxpool_backward(const float *dy, const int32_t *argmax, float *dx, const cn_pool_geom *g);
void cn_adaptive_avgpool(const float *x, float *y, long n, long c, long h, long w, long oh, long ow);
void cn_adaptive_avgpool_backward(const float *dy, float *dx, long n, long c, long h, long w, long oh, long ow);

void cn_matmul(const float *a, const float *b, float *c, long m, long n, long k, int ta, int tb);
void cn_add_row_vector(float *y, const float *bias, long rows, long cols);
void cn_sum_rows(const float *x, float *out, long rows, long cols);
void cn_sum_channels(const float *x, float *out, long n, long c, long hw);
void cn_log_softmax(const float *x, float *y, long rows, long cols);
void cn_log_softmax_backward(const float *dy, const float *y, float *dx, long rows, long cols);

typedef struct {
  double lr, beta1, beta2, eps, weight_decay;
  double step;
} cn_adam_hyper;
typedef struct {
  double lr, momentum, dampening, weight_decay;
  int nesterov, first_step;
} cn_sgd_hyper;
void cn_adam(float *p, const float *g, float *m, float *v, long n, const cn_adam_hyper *h);
void cn_sgd(float *p, const float *g, float *buf, long n, const cn_sgd_hyper *h);

/* Depthwise (channels per group == 1) direct kernels, in kernels.c (ISA dispatched). */
/* cn_dw_forward(_tf) without bias that also writes its output's batch statistics partials
 * (cn_bn_group_stats layout) where the planes form groups of one image (32x32 and up): 1, else 0
 * and nothing computed */
int cn_dw_forward_stats(const float *x, const cn_intf *tf, const float *w, float *y, const cn_conv_geom *g, float *gs);
void cn_dw_forward(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g);
void cn_dw_forward_epi(const float *x, const float *w, const float *b, float *y, const cn_conv_geom *g,
                       const cn_epilogue *epi);
void cn_dw_backward_input(const float *dy, const float *w, float *dx, const cn_conv_geom *g);
void cn_dw_backward_weight(const float *dy, const float *x, float *dw, const cn_conv_geom *g);
/* One image's depthwise forward (weights w, + epilogue, whose bias is the convolution's) on the
 * calling thread: plans made once by cn_dw_prepare for geometry g (its n is ignored). */
typedef struct cn_dw_prep cn_dw_prep;
cn_dw_prep *cn_dw_prepare(const cn_conv_geom *g, const float *w, const cn_epilogue *epi);
void cn_dw_forward_one(const cn_dw_prep *p, const float *x, float *y, int tid);
void cn_dw_release(cn_dw_prep *p);
/* the same two of the transformed input (tf may be NULL) */
void cn_dw_forward_tf(const float *x, const cn_intf *tf, const float *w, const float *b, float *y,
                      const cn_conv_geom *g);
void cn_dw_backward_weight_tf(const float *dy, const float *x, const cn_intf *tf, float *dw, const cn_conv_geom *g);

/* Per-plane inference epilogue of the AVX-512 depthwise kernels: y = act(fma(y - m, k, bt) (+ res)). */
typedef struct {
  float m, k, bt;
  const float *res; /* the plane's residual, or NULL */
  int act;
} cn_dw_pepi;

/* AVX-512 depthwise fast path for stride 1, same-width padding (dw_avx512.c). */
#define CN_DW_MAX_TAPS 49
typedef struct {
  long H, W, kh, kw, oh, ow, ntaps, T, nblk;
  long off[CN_DW_MAX_TAPS];
  uint16_t *masks; /* [nblk][ntaps + 1]: per-tap input masks, then the valid-output mask */
} cn_dw_plan;
int cn_dw_s1_applicable(long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh, long ow);
int cn_dw_s1_prepare(cn_dw_plan *P, long H, long W, long kh, long kw, long ph, long pw, long oh, long ow);
void cn_dw_s1_release(cn_dw_plan *P);
void cn_dw_s1_plane_avx512(const float *x, const float *wk, float bias, float *y, const cn_dw_plan *P, int accumulate,
                           const cn_dw_pepi *pe);
void cn_dw_s1_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                           const cn_dw_plan *P, double *acc);

int cn_dw_w16_applicable(long W, long kh, long kw, long sh, long sw, long pw, long ow);
void cn_dw_w16_plane_avx512(const float *x, const float *wk, float bias, float *y, long H, long W, long ph, long oh,
                            int accumulate, const cn_dw_pepi *pe);
void cn_dw_w16_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count, long H, long W,
                            long ph, long oh, double *acc);

/* AVX-512 depthwise path for small planes (<= 64 values in and out), any stride (dw_avx512.c). */
typedef struct {
  long in_size, out_size;
  int nin, nout, ntaps;
  int32_t *idx;  /* [nout][ntaps][16] lane sources (mod 32) */
  uint16_t *mask; /* [nout][ntaps] lanes that read the plane (not padding, not past the output) */
  uint16_t *hi;   /* [nout][ntaps] lanes whose source is >= 32 */
  int transposed; /* the input gradient's gather (else the forward mapping) */
  /* the convolution's geometry (either plan) is 3x3, padding 1 and: 4x4 -> 4x4 stride 1, 2x2 ->
   * 2x2 stride 1, 8x8 -> 4x4 stride 2, 4x4 -> 2x2 stride 2 */
  int is4x4, is2x2, is8s2, is4s2;
} cn_dw_sp_plan;
int cn_dw_sp_applicable(long in_hw, long out_hw, long ntaps);
void cn_dw_dgrad_4x4_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx);
void cn_dw_dgrad_2x2_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx);
void cn_dw_dgrad_8x8s2_avx512(const float *dyp, const float *wk, float *dx);
void cn_dw_dgrad_4x4s2_avx512(const float *dy, const float *w, long c, long p0, long p1, float *dx);
void cn_dw_wgrad_4x4s2_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                              const cn_intf *tf, long c0, double *acc);
void cn_dw_wgrad_2x2_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                            const cn_intf *tf, long c0, double *acc);
int cn_dw_sp_prepare(cn_dw_sp_plan *P, long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh,
                     long ow, int transposed);
void cn_dw_sp_release(cn_dw_sp_plan *P);
void cn_dw_sp_plane_avx512(const float *in, const float *wk, float bias, float *out, const cn_dw_sp_plan *P,
                           int accumulate, const cn_dw_pepi *pe);
/* four planes of at most 16 values at once (plane q at in + q * in_stride, weights wk + q *
 * wk_stride, bias[q] if bias, out + q * out_stride, epilogue pe[q] if pe) */
void cn_dw_sp_planes4_avx512(const float *in, long in_stride, const float *wk, long wk_stride, const float *bias,
                             float *out, long out_stride, const cn_dw_sp_plan *P, const cn_dw_pepi *pe);
void cn_dw_sp_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                           const cn_dw_sp_plan *P, double *acc);

/* AVX-512 depthwise 3x3 stride 2 padding 1 for W % 16 == 0, H even (dw_avx512.c). */
int cn_dw_s2_applicable(long H, long W, long kh, long kw, long sh, long sw, long ph, long pw);
void cn_dw_s2_plane_avx512(const float *x, const float *wk, float bias, float *y, long H, long W,
                           const cn_dw_pepi *pe);
void cn_dw_s2_wgrad_avx512(const float *dy, long dy_stride, const float *x, long x_stride, long count, long H, long W,
                           double *acc);
void cn_dw_s2_dgrad_avx512(const float *dy, const float *wk, float *dx, long H, long W, int accumulate);

/* ISA-dispatched helpers used by several files. */
void cn_kernels_select(int isa); /* 0 scalar, 1 avx2, 2 avx512, 3 neon */
void cn_transpose_pack(const float *const *rows, int nrows, long len, float *dst, int stride);

#endif
