/* Node-API bindings (plain C). Every function works in place on Float32Array/Int32Array memory
 * (zero copy): the TypeScript wrapper (src/backend/native.ts) allocates the outputs and passes
 * them in. Sizes are checked here so that a wrong call throws instead of corrupting memory.
 * Calls are synchronous; a process-wide mutex serialises calls from several JS threads (the
 * thread pool and its workspaces are shared). */
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cn.h"

#define CN_ADDON_VERSION 11
#define MAXARGS 20

static pthread_mutex_t g_call_mtx = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
  napi_env env;
  napi_value argv[MAXARGS];
  size_t argc;
  int failed;
} call_t;

static int start(call_t *c, napi_env env, napi_callback_info info) {
  c->env = env;
  c->argc = MAXARGS;
  c->failed = 0;
  if (napi_get_cb_info(env, info, &c->argc, c->argv, NULL, NULL) != napi_ok) {
    napi_throw_error(env, NULL, "convnets native: bad call");
    return 0;
  }
  if (c->argc > MAXARGS) { /* only MAXARGS were stored: never read past them */
    napi_throw_error(env, NULL, "convnets native: too many arguments");
    return 0;
  }
  return 1;
}

static void fail(call_t *c, const char *msg) {
  if (!c->failed) napi_throw_range_error(c->env, NULL, msg);
  c->failed = 1;
}

static int is_nullish(call_t *c, size_t i) {
  if (i >= c->argc) return 1;
  napi_valuetype t;
  if (napi_typeof(c->env, c->argv[i], &t) != napi_ok) return 1;
  return t == napi_null || t == napi_undefined;
}

/* typed array argument i of the given type with at least `need` elements (or null if allowed) */
static void *arr(call_t *c, size_t i, napi_typedarray_type want, size_t need, int nullable, const char *what) {
  char msg[160];
  if (c->failed) return NULL;
  if (is_nullish(c, i)) {
    if (nullable) return NULL;
    snprintf(msg, sizeof msg, "convnets native: %s is required", what);
    fail(c, msg);
    return NULL;
  }
  bool ista = false;
  napi_is_typedarray(c->env, c->argv[i], &ista);
  napi_typedarray_type type;
  size_t len = 0;
  void *data = NULL;
  if (!ista || napi_get_typedarray_info(c->env, c->argv[i], &type, &len, &data, NULL, NULL) != napi_ok ||
      type != want) {
    snprintf(msg, sizeof msg, "convnets native: %s must be a %s", what,
             want == napi_float32_array ? "Float32Array" : "Int32Array");
    fail(c, msg);
    return NULL;
  }
  if (len < need) {
    snprintf(msg, sizeof msg, "convnets native: %s has %zu elements, expected %zu", what, len, need);
    fail(c, msg);
    return NULL;
  }
  if (data == NULL && need > 0) {
    fail(c, "convnets native: detached buffer");
    return NULL;
  }
  return data;
}

static size_t arr_len(call_t *c, size_t i) {
  size_t len = 0;
  if (c->failed || is_nullish(c, i)) return 0;
  napi_typedarray_type type;
  if (napi_get_typedarray_info(c->env, c->argv[i], &type, &len, NULL, NULL, NULL) != napi_ok) return 0;
  return len;
}

static double num(call_t *c, size_t i) {
  double v = 0;
  if (c->failed) return 0;
  if (i >= c->argc || napi_get_value_double(c->env, c->argv[i], &v) != napi_ok) {
    fail(c, "convnets native: expected a number argument");
    return 0;
  }
  return v;
}

static long inum(call_t *c, size_t i) {
  double v = num(c, i);
  if (c->failed) return 0;
  if (v < 0 || v > 9.0e15 || v != (double)(long)v) {
    fail(c, "convnets native: expected a non-negative integer");
    return 0;
  }
  return (long)v;
}

static int flag(call_t *c, size_t i) {
  bool b = false;
  if (c->failed || i >= c->argc) return 0;
  napi_valuetype t;
  napi_typeof(c->env, c->argv[i], &t);
  if (t == napi_boolean) {
    napi_get_value_bool(c->env, c->argv[i], &b);
    return b;
  }
  return num(c, i) != 0;
}

static napi_value undef(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

static napi_value boolean(napi_env env, int v) {
  napi_value r;
  napi_get_boolean(env, v != 0, &r);
  return r;
}

static napi_value int32(napi_env env, int v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

#define LOCK() pthread_mutex_lock(&g_call_mtx)
#define UNLOCK() pthread_mutex_unlock(&g_call_mtx)

/* ---- convolution ---------------------------------------------------------------------------- */

/* geometry: Int32Array [n, c, h, w, o, kh, kw, sh, sw, ph, pw, groups, oh, ow] */
static int conv_geom(call_t *c, size_t i, cn_conv_geom *g) {
  const int32_t *v = (const int32_t *)arr(c, i, napi_int32_array, 14, 0, "conv geometry");
  if (!v) return 0;
  g->n = v[0];
  g->c = v[1];
  g->h = v[2];
  g->w = v[3];
  g->o = v[4];
  g->kh = v[5];
  g->kw = v[6];
  g->sh = v[7];
  g->sw = v[8];
  g->ph = v[9];
  g->pw = v[10];
  g->groups = v[11];
  g->oh = v[12];
  g->ow = v[13];
  for (int k = 0; k < 14; k++)
    if (v[k] < 0) {
      fail(c, "convnets native: negative conv geometry");
      return 0;
    }
  if (g->n < 1 || g->c < 1 || g->o < 1 || g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1 || g->groups < 1 ||
      g->c % g->groups || g->o % g->groups || g->oh < 1 || g->ow < 1 || g->h < 1 || g->w < 1 ||
      g->oh != (g->h + 2 * g->ph - g->kh) / g->sh + 1 || g->ow != (g->w + 2 * g->pw - g->kw) / g->sw + 1 ||
      g->h + 2 * g->ph < g->kh || g->w + 2 * g->pw < g->kw) {
    fail(c, "convnets native: inconsistent conv geometry");
    return 0;
  }
  /* the tensor sizes computed from it must not overflow (they size the buffer checks) */
  const long limit = 1L << 40;
  long a, b;
  if (__builtin_mul_overflow(g->n, g->c, &a) || __builtin_mul_overflow(a, g->h, &a) ||
      __builtin_mul_overflow(a, g->w, &a) || a > limit || __builtin_mul_overflow(g->n, g->o, &b) ||
      __builtin_mul_overflow(b, g->oh, &b) || __builtin_mul_overflow(b, g->ow, &b) || b > limit ||
      __builtin_mul_overflow(g->o, g->c / g->groups, &a) || __builtin_mul_overflow(a, g->kh, &a) ||
      __builtin_mul_overflow(a, g->kw, &a) || a > limit) {
    fail(c, "convnets native: conv geometry too large");
    return 0;
  }
  return 1;
}

/* optional input transform at arguments i..i+3: mean|null, scale, shift, act (see cn_intf);
 * returns tf, or NULL when mean is absent */
static const cn_intf *intf_args(call_t *c, size_t i, const cn_conv_geom *g, cn_intf *tf) {
  tf->mean = arr(c, i, napi_float32_array, (size_t)g->c, 1, "input transform mean");
  if (c->failed || !tf->mean) return NULL;
  tf->scale = arr(c, i + 1, napi_float32_array, (size_t)g->c, 0, "input transform scale");
  tf->shift = arr(c, i + 2, napi_float32_array, (size_t)g->c, 0, "input transform shift");
  const long act = inum(c, i + 3);
  if (c->failed) return NULL;
  if (act > 2) {
    fail(c, "convnets native: input transform activation must be 0, 1 or 2");
    return NULL;
  }
  if (!cn_intf_supported(g)) {
    fail(c, "convnets native: an input transform needs a pointwise or depthwise convolution");
    return NULL;
  }
  tf->act = (int)act;
  return tf;
}

/* floats of per-image-group partials (two per group and channel): n images of hw values, ch channels */
static size_t group_parts_floats(long n, long ch, long hw) {
  const long G = cn_bn_group_images(hw);
  return (size_t)(2 * ((n + G - 1) / G) * ch);
}

/* conv2d(x, w, b|null, y, g[, mean|null, scale, shift, act[, stats|null]]): the optional input
 * transform; stats (no bias): the batch statistics partials of y where the path computes them
 * (cn_conv2d_stats). Returns whether stats were written. */
static napi_value js_conv2d(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_conv_geom g;
  if (!conv_geom(&c, 4, &g)) return NULL;
  const size_t nx = (size_t)(g.n * g.c * g.h * g.w), nw = (size_t)(g.o * (g.c / g.groups) * g.kh * g.kw);
  const float *x = arr(&c, 0, napi_float32_array, nx, 0, "x");
  const float *w = arr(&c, 1, napi_float32_array, nw, 0, "weight");
  const float *b = arr(&c, 2, napi_float32_array, (size_t)g.o, 1, "bias");
  float *y = arr(&c, 3, napi_float32_array, (size_t)(g.n * g.o * g.oh * g.ow), 0, "y");
  cn_intf tfs;
  const cn_intf *tf = intf_args(&c, 5, &g, &tfs);
  float *gs = arr(&c, 9, napi_float32_array, group_parts_floats(g.n, g.o, g.oh * g.ow), 1, "statistics partials");
  if (gs && b) fail(&c, "convnets native: conv2d computes statistics partials only without a bias");
  if (c.failed) return NULL;
  int done = 0;
  LOCK();
  if (gs)
    done = cn_conv2d_stats(x, tf, w, y, &g, gs);
  else
    cn_conv2d_tf(x, tf, w, b, y, &g);
  UNLOCK();
  return boolean(env, done);
}

/* bnGroupImages(hw): images per group of the batch statistics of planes of hw values (partials
 * hold 2 floats per group and channel) */
static napi_value js_bn_group_images(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long hw = inum(&c, 0);
  if (c.failed) return NULL;
  napi_value r;
  napi_create_int64(env, cn_bn_group_images(hw), &r);
  return r;
}

/* bnStatsFromPartials(gs, mean, var, invstd, n, c, hw, eps): batch statistics from the partials
 * conv2d wrote (the values bnStats gives for its output) */
static napi_value js_bn_stats_from_partials(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 4), ch = inum(&c, 5), hw = inum(&c, 6);
  const double eps = num(&c, 7);
  if (c.failed) return NULL;
  const float *gs = arr(&c, 0, napi_float32_array, group_parts_floats(n, ch, hw), 0, "statistics partials");
  float *mean = arr(&c, 1, napi_float32_array, (size_t)ch, 0, "mean");
  float *var = arr(&c, 2, napi_float32_array, (size_t)ch, 0, "var");
  float *invstd = arr(&c, 3, napi_float32_array, (size_t)ch, 0, "invstd");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_stats_from_groups(gs, n, ch, hw, eps, mean, var, invstd);
  UNLOCK();
  return undef(env);
}

/* the epilogue of block stage k: e = Float32Array [mean (C) | scale (C) | shift (C) | bias (C)?]
 * (3C values: no bias), act */
static int block_epi(call_t *c, size_t i, long C, const char *what, const float *res, float *y, int act,
                     cn_epilogue *e) {
  const float *v = arr(c, i, napi_float32_array, (size_t)(3 * C), 0, what);
  if (c->failed) return 0;
  const size_t len = arr_len(c, i);
  if (len != (size_t)(3 * C) && len != (size_t)(4 * C)) {
    fail(c, "convnets native: a block epilogue has 3 or 4 rows of the channel count");
    return 0;
  }
  e->mean = v;
  e->scale = v + C;
  e->shift = v + 2 * C;
  e->bias = len == (size_t)(4 * C) ? v + 3 * C : NULL;
  e->res_base = res;
  e->out_base = y;
  e->row0 = 0;
  e->act = act;
  return 1;
}

/* blockInfer(x, y, g1, w1, e1, g2, w2, e2, g3, w3, e3|null, res|null, acts Int32Array [3]):
 * MobileNetV2's inverted residual block in inference (cn_block_infer); false where it does not
 * apply (nothing computed) */
static napi_value js_block_infer(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_conv_geom g1, g2, g3;
  if (!conv_geom(&c, 2, &g1) || !conv_geom(&c, 5, &g2) || !conv_geom(&c, 8, &g3)) return NULL;
  const float *x = arr(&c, 0, napi_float32_array, (size_t)(g1.n * g1.c * g1.h * g1.w), 0, "x");
  const size_t ny = (size_t)(g3.n * g3.o * g3.oh * g3.ow);
  float *y = arr(&c, 1, napi_float32_array, ny, 0, "y");
  const float *w1 = arr(&c, 3, napi_float32_array, (size_t)(g1.o * g1.c), 0, "expand weight");
  const float *w2 = arr(&c, 6, napi_float32_array, (size_t)(g2.o * (g2.c / g2.groups) * g2.kh * g2.kw), 0, "depthwise weight");
  const float *w3 = arr(&c, 9, napi_float32_array, (size_t)(g3.o * g3.c), 0, "project weight");
  const float *res = arr(&c, 11, napi_float32_array, ny, 1, "residual");
  const int32_t *acts = (const int32_t *)arr(&c, 12, napi_int32_array, 3, 0, "activations");
  if (c.failed) return NULL;
  for (int k = 0; k < 3; k++)
    if (acts[k] < 0 || acts[k] > 2) {
      fail(&c, "convnets native: bad activation code");
      return NULL;
    }
  cn_epilogue e1, e2, e3;
  if (!block_epi(&c, 4, g1.o, "expand epilogue", NULL, NULL, acts[0], &e1) ||
      !block_epi(&c, 7, g2.o, "depthwise epilogue", NULL, NULL, acts[1], &e2))
    return NULL;
  const int has3 = !is_nullish(&c, 10);
  if (has3 && !block_epi(&c, 10, g3.o, "project epilogue", res, y, acts[2], &e3)) return NULL;
  if (!has3 && res) {
    fail(&c, "convnets native: a residual needs the project epilogue");
    return NULL;
  }
  LOCK();
  const int ok = cn_block_infer(x, &g1, w1, &e1, &g2, w2, &e2, &g3, w3, has3 ? &e3 : NULL, y);
  UNLOCK();
  return boolean(env, ok);
}

/* conv2dDwPw(x, wd, bd|null, gd, md, sd, td, actd, w, b|null, y, g, mean|null, scale, shift,
 * res|null, act): y = [act(bn(] pointwise conv of act(bn(depthwise conv of x)) [) (+ res))], the
 * depthwise output never stored. Returns false (nothing computed) where cn_conv2d_dwpw can't. */
static napi_value js_conv2d_dwpw(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_conv_geom gd, g;
  if (!conv_geom(&c, 3, &gd) || !conv_geom(&c, 11, &g)) return NULL;
  const float *x = arr(&c, 0, napi_float32_array, (size_t)(gd.n * gd.c * gd.h * gd.w), 0, "x");
  const float *wd = arr(&c, 1, napi_float32_array, (size_t)(gd.o * (gd.c / (gd.groups ? gd.groups : 1)) * gd.kh * gd.kw), 0, "depthwise weight");
  const float *bd = arr(&c, 2, napi_float32_array, (size_t)gd.o, 1, "depthwise bias");
  const float *md = arr(&c, 4, napi_float32_array, (size_t)gd.o, 0, "depthwise mean");
  const float *sd = arr(&c, 5, napi_float32_array, (size_t)gd.o, 0, "depthwise scale");
  const float *td = arr(&c, 6, napi_float32_array, (size_t)gd.o, 0, "depthwise shift");
  const long actd = inum(&c, 7);
  const float *w = arr(&c, 8, napi_float32_array, (size_t)(g.o * g.c), 0, "weight");
  const float *b = arr(&c, 9, napi_float32_array, (size_t)g.o, 1, "bias");
  const size_t ny = (size_t)(g.n * g.o * g.oh * g.ow);
  float *y = arr(&c, 10, napi_float32_array, ny, 0, "y");
  const float *mean = arr(&c, 12, napi_float32_array, (size_t)g.o, 1, "mean");
  const float *scale = mean ? arr(&c, 13, napi_float32_array, (size_t)g.o, 0, "scale") : NULL;
  const float *shift = mean ? arr(&c, 14, napi_float32_array, (size_t)g.o, 0, "shift") : NULL;
  const float *res = arr(&c, 15, napi_float32_array, ny, 1, "residual");
  const long act = inum(&c, 16);
  if (!c.failed && (act > 2 || actd > 2)) fail(&c, "convnets native: bad activation code");
  if (c.failed) return NULL;
  int ok = 0;
  if (mean || (!b && !res)) {
    cn_epilogue e = {b, mean, scale, shift, res, y, 0, (int)act};
    LOCK();
    ok = cn_conv2d_dwpw(x, &gd, wd, bd, md, sd, td, (int)actd, w, y, &g, mean ? &e : NULL);
    UNLOCK();
  }
  return boolean(env, ok);
}

/* conv2dFused(x, w, b|null, y, geom, mean, scale, shift, res|null, act): y = act(bn(conv) (+ res)) */
static napi_value js_conv2d_fused(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_conv_geom g;
  if (!conv_geom(&c, 4, &g)) return NULL;
  const size_t nx = (size_t)(g.n * g.c * g.h * g.w), nw = (size_t)(g.o * (g.c / g.groups) * g.kh * g.kw);
  const size_t ny = (size_t)(g.n * g.o * g.oh * g.ow);
  const float *x = arr(&c, 0, napi_float32_array, nx, 0, "x");
  const float *w = arr(&c, 1, napi_float32_array, nw, 0, "weight");
  const float *b = arr(&c, 2, napi_float32_array, (size_t)g.o, 1, "bias");
  float *y = arr(&c, 3, napi_float32_array, ny, 0, "y");
  const float *mean = arr(&c, 5, napi_float32_array, (size_t)g.o, 0, "mean");
  const float *scale = arr(&c, 6, napi_float32_array, (size_t)g.o, 0, "scale");
  const float *shift = arr(&c, 7, napi_float32_array, (size_t)g.o, 0, "shift");
  const float *res = arr(&c, 8, napi_float32_array, ny, 1, "residual");
  const long act = inum(&c, 9);
  if (!c.failed && act > 2) fail(&c, "convnets native: bad activation code");
  if (c.failed) return NULL;
  cn_epilogue e = {b, mean, scale, shift, res, y, 0, (int)act};
  LOCK();
  cn_conv2d_epi(x, w, y, &g, &e);
  UNLOCK();
  return undef(env);
}

/* conv2dBackwardInput(dy, w, dx, g[, mean|null, scale, shift, act, bx, bnParts]): with the
 * transform (and input bx) of the batch norm + activation whose output the convolution's input
 * is, also that backward's partials of dx where the path computes them
 * (cn_conv2d_backward_input_bnp); returns 1 when they were written, else 0 */
static napi_value js_conv2d_bwd_input(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_conv_geom g;
  if (!conv_geom(&c, 3, &g)) return NULL;
  const float *dy = arr(&c, 0, napi_float32_array, (size_t)(g.n * g.o * g.oh * g.ow), 0, "dy");
  const float *w = arr(&c, 1, napi_float32_array, (size_t)(g.o * (g.c / g.groups) * g.kh * g.kw), 0, "weight");
  float *dx = arr(&c, 2, napi_float32_array, (size_t)(g.n * g.c * g.h * g.w), 0, "dx");
  /* the batch norm + activation whose output x is: its transform and input, the partials' buffer */
  cn_intf tfs;
  const cn_intf *t = intf_args(&c, 4, &g, &tfs);
  const float *bx = t ? arr(&c, 8, napi_float32_array, (size_t)(g.n * g.c * g.h * g.w), 0, "batch norm input") : NULL;
  float *parts = t ? arr(&c, 9, napi_float32_array, group_parts_floats(g.n, g.c, g.h * g.w), 0, "bnParts") : NULL;
  if (c.failed) return NULL;
  LOCK();
  const int done = t ? cn_conv2d_backward_input_bnp(dy, w, dx, &g, t, bx, parts) : (cn_conv2d_backward_input(dy, w, dx, &g), 0);
  UNLOCK();
  return int32(env, done);
}

/* conv2dBackwardWeight(dy, x, dw, g[, mean|null, scale, shift, act]): the optional input transform */
static napi_value js_conv2d_bwd_weight(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_conv_geom g;
  if (!conv_geom(&c, 3, &g)) return NULL;
  const float *dy = arr(&c, 0, napi_float32_array, (size_t)(g.n * g.o * g.oh * g.ow), 0, "dy");
  const float *x = arr(&c, 1, napi_float32_array, (size_t)(g.n * g.c * g.h * g.w), 0, "x");
  float *dw = arr(&c, 2, napi_float32_array, (size_t)(g.o * (g.c / g.groups) * g.kh * g.kw), 0, "dw");
  cn_intf tfs;
  const cn_intf *tf = intf_args(&c, 4, &g, &tfs);
  if (c.failed) return NULL;
  LOCK();
  cn_conv2d_backward_weight_tf(dy, x, tf, dw, &g);
  UNLOCK();
  return undef(env);
}

/* conv2dBackwardPw(dy, x, w, dx, dw, g[, mean|null, scale, shift, act[, bnParts|null[, dtX|null,
 * dtMean, dtScale, dtShift, dtCoef, dtAct]]]): both gradients of a pointwise or depthwise
 * convolution in one pass (cn_conv2d_backward_pw, cn_dw_backward_both); 0 (nothing computed)
 * where it does not apply, 1 done, 2 done and the batch norm + activation backward's partials of
 * dx written to bnParts. dtX..: dy is the apply pass of a batch norm + activation
 * backward on the given dy (bwtf_args) */
static const cn_bwtf *bwtf_args(call_t *c, size_t i, const float *g, long n, long ch, long hw, cn_bwtf *t);
static napi_value js_conv2d_bwd_pw(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_conv_geom g;
  if (!conv_geom(&c, 5, &g)) return NULL;
  const float *dy = arr(&c, 0, napi_float32_array, (size_t)(g.n * g.o * g.oh * g.ow), 0, "dy");
  const float *x = arr(&c, 1, napi_float32_array, (size_t)(g.n * g.c * g.h * g.w), 0, "x");
  const float *w = arr(&c, 2, napi_float32_array, (size_t)(g.o * (g.c / g.groups) * g.kh * g.kw), 0, "weight");
  float *dx = arr(&c, 3, napi_float32_array, (size_t)(g.n * g.c * g.h * g.w), 0, "dx");
  float *dw = arr(&c, 4, napi_float32_array, (size_t)(g.o * (g.c / g.groups) * g.kh * g.kw), 0, "dw");
  cn_intf tfs;
  const cn_intf *tf = intf_args(&c, 6, &g, &tfs);
  float *bnp = arr(&c, 10, napi_float32_array, group_parts_floats(g.n, g.c, g.h * g.w), 1, "bnParts");
  cn_bwtf dts;
  const cn_bwtf *dt = is_nullish(&c, 11) ? NULL : bwtf_args(&c, 11, dy, g.n, g.o, g.oh * g.ow, &dts);
  if (c.failed) return NULL;
  const int depthwise = g.groups == g.c && g.c > 1;
  LOCK();
  const int ok = depthwise ? cn_dw_backward_both(dy, x, tf, w, dx, dw, &g, bnp, dt)
                           : cn_conv2d_backward_pw(dy, x, tf, w, dx, dw, &g, dt, bnp);
  UNLOCK();
  return int32(env, ok);
}

/* ---- batch norm ------------------------------------------------------------------------------ */

/* bnTrain(x, weight|null, bias|null, y, mean, var, invstd, n, c, hw, eps) */
static napi_value js_bn_train(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 7), ch = inum(&c, 8), hw = inum(&c, 9);
  const double eps = num(&c, 10);
  const size_t tot = (size_t)(n * ch * hw);
  const float *x = arr(&c, 0, napi_float32_array, tot, 0, "x");
  const float *wt = arr(&c, 1, napi_float32_array, (size_t)ch, 1, "weight");
  const float *bs = arr(&c, 2, napi_float32_array, (size_t)ch, 1, "bias");
  float *y = arr(&c, 3, napi_float32_array, tot, 0, "y");
  float *mean = arr(&c, 4, napi_float32_array, (size_t)ch, 0, "mean");
  float *var = arr(&c, 5, napi_float32_array, (size_t)ch, 0, "var");
  float *is = arr(&c, 6, napi_float32_array, (size_t)ch, 0, "invstd");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_train(x, wt, bs, y, mean, var, is, n, ch, hw, eps);
  UNLOCK();
  return undef(env);
}

/* bnEval(x, mean, var, weight|null, bias|null, y, n, c, hw, eps) */
static napi_value js_bn_eval(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 6), ch = inum(&c, 7), hw = inum(&c, 8);
  const double eps = num(&c, 9);
  const size_t tot = (size_t)(n * ch * hw);
  const float *x = arr(&c, 0, napi_float32_array, tot, 0, "x");
  const float *mean = arr(&c, 1, napi_float32_array, (size_t)ch, 0, "mean");
  const float *var = arr(&c, 2, napi_float32_array, (size_t)ch, 0, "var");
  const float *wt = arr(&c, 3, napi_float32_array, (size_t)ch, 1, "weight");
  const float *bs = arr(&c, 4, napi_float32_array, (size_t)ch, 1, "bias");
  float *y = arr(&c, 5, napi_float32_array, tot, 0, "y");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_eval(x, mean, var, wt, bs, y, n, ch, hw, eps);
  UNLOCK();
  return undef(env);
}

/* bnBackward(dy, x, mean, invstd, weight|null, dx, dweight, dbias, n, c, hw) */
static napi_value js_bn_backward(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 8), ch = inum(&c, 9), hw = inum(&c, 10);
  const size_t tot = (size_t)(n * ch * hw);
  const float *dy = arr(&c, 0, napi_float32_array, tot, 0, "dy");
  const float *x = arr(&c, 1, napi_float32_array, tot, 0, "x");
  const float *mean = arr(&c, 2, napi_float32_array, (size_t)ch, 0, "mean");
  const float *is = arr(&c, 3, napi_float32_array, (size_t)ch, 0, "invstd");
  const float *wt = arr(&c, 4, napi_float32_array, (size_t)ch, 1, "weight");
  float *dx = arr(&c, 5, napi_float32_array, tot, 0, "dx");
  float *dw = arr(&c, 6, napi_float32_array, (size_t)ch, 0, "dweight");
  float *db = arr(&c, 7, napi_float32_array, (size_t)ch, 0, "dbias");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_backward(dy, x, mean, is, wt, dx, dw, db, n, ch, hw);
  UNLOCK();
  return undef(env);
}

/* bnStats(x, mean, var, invstd, n, c, hw, eps) */
static napi_value js_bn_stats(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 4), ch = inum(&c, 5), hw = inum(&c, 6);
  const double eps = num(&c, 7);
  const float *x = arr(&c, 0, napi_float32_array, (size_t)(n * ch * hw), 0, "x");
  float *mean = arr(&c, 1, napi_float32_array, (size_t)ch, 0, "mean");
  float *var = arr(&c, 2, napi_float32_array, (size_t)ch, 0, "var");
  float *is = arr(&c, 3, napi_float32_array, (size_t)ch, 0, "invstd");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_stats(x, mean, var, is, n, ch, hw, eps);
  UNLOCK();
  return undef(env);
}

static int act_arg(call_t *c, size_t i) {
  const long a = inum(c, i);
  if (!c->failed && (a < 0 || a > 2)) fail(c, "convnets native: bad activation code");
  return (int)a;
}

/* bnApply(x, mean, scale, shift, res|null, y, n, c, hw, act) */
static napi_value js_bn_apply(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 6), ch = inum(&c, 7), hw = inum(&c, 8);
  const int act = act_arg(&c, 9);
  const size_t tot = (size_t)(n * ch * hw);
  const float *x = arr(&c, 0, napi_float32_array, tot, 0, "x");
  const float *mean = arr(&c, 1, napi_float32_array, (size_t)ch, 0, "mean");
  const float *scale = arr(&c, 2, napi_float32_array, (size_t)ch, 0, "scale");
  const float *shift = arr(&c, 3, napi_float32_array, (size_t)ch, 0, "shift");
  const float *res = arr(&c, 4, napi_float32_array, tot, 1, "residual");
  float *y = arr(&c, 5, napi_float32_array, tot, 0, "y");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_apply(x, mean, scale, shift, res, y, n, ch, hw, act);
  UNLOCK();
  return undef(env);
}

/* bnBackwardAct(dy, x, mean, invstd, weight|null, scale, shift, dx, dweight, dbias, n, c, hw, act) */
static napi_value js_bn_backward_act(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 10), ch = inum(&c, 11), hw = inum(&c, 12);
  const int act = act_arg(&c, 13);
  const size_t tot = (size_t)(n * ch * hw);
  const float *dy = arr(&c, 0, napi_float32_array, tot, 0, "dy");
  const float *x = arr(&c, 1, napi_float32_array, tot, 0, "x");
  const float *mean = arr(&c, 2, napi_float32_array, (size_t)ch, 0, "mean");
  const float *is = arr(&c, 3, napi_float32_array, (size_t)ch, 0, "invstd");
  const float *wt = arr(&c, 4, napi_float32_array, (size_t)ch, 1, "weight");
  const float *scale = arr(&c, 5, napi_float32_array, (size_t)ch, 0, "scale");
  const float *shift = arr(&c, 6, napi_float32_array, (size_t)ch, 0, "shift");
  float *dx = arr(&c, 7, napi_float32_array, tot, 0, "dx");
  float *dw = arr(&c, 8, napi_float32_array, (size_t)ch, 0, "dweight");
  float *db = arr(&c, 9, napi_float32_array, (size_t)ch, 0, "dbias");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_backward_act(dy, x, mean, is, wt, scale, shift, dx, dw, db, n, ch, hw, act);
  UNLOCK();
  return undef(env);
}

/* bnBwCoefs(parts, invstd, weight|null, dweight, dbias, coef, n, c, hw): the batch norm +
 * activation backward's parameter gradients and apply coefficients (3c) from the partials of
 * conv2dBackwardPw */
static napi_value js_bn_bw_coefs(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 6), ch = inum(&c, 7), hw = inum(&c, 8);
  if (c.failed) return NULL;
  const float *parts = arr(&c, 0, napi_float32_array, group_parts_floats(n, ch, hw), 0, "parts");
  const float *is = arr(&c, 1, napi_float32_array, (size_t)ch, 0, "invstd");
  const float *wt = arr(&c, 2, napi_float32_array, (size_t)ch, 1, "weight");
  float *dw = arr(&c, 3, napi_float32_array, (size_t)ch, 0, "dweight");
  float *db = arr(&c, 4, napi_float32_array, (size_t)ch, 0, "dbias");
  float *coef = arr(&c, 5, napi_float32_array, (size_t)(3 * ch), 0, "coef");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_bw_coefs(parts, is, wt, dw, db, coef, n, ch, hw);
  UNLOCK();
  return undef(env);
}

/* the transform of a batch norm + activation backward's apply pass: arguments i .. i+5 = x,
 * mean, scale, shift, coef, act (g: the gradient it applies to, n images) */
static const cn_bwtf *bwtf_args(call_t *c, size_t i, const float *g, long n, long ch, long hw, cn_bwtf *t) {
  const size_t tot = (size_t)(n * ch * hw);
  t->g = g;
  t->x = arr(c, i, napi_float32_array, tot, 0, "batch norm input");
  t->mean = arr(c, i + 1, napi_float32_array, (size_t)ch, 0, "mean");
  t->ka = arr(c, i + 2, napi_float32_array, (size_t)ch, 0, "scale");
  t->kt = arr(c, i + 3, napi_float32_array, (size_t)ch, 0, "shift");
  t->coef = arr(c, i + 4, napi_float32_array, (size_t)(3 * ch), 0, "coef");
  t->act = act_arg(c, i + 5);
  if (!c->failed && t->act == 0) fail(c, "convnets native: the batch norm backward transform needs an activation");
  t->c = ch;
  t->hw = hw;
  return c->failed ? NULL : t;
}

/* bnBwApply(g, x, mean, scale, shift, coef, act, dx, n, c, hw) */
static napi_value js_bn_bw_apply(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 8), ch = inum(&c, 9), hw = inum(&c, 10);
  if (c.failed) return NULL;
  const size_t tot = (size_t)(n * ch * hw);
  const float *g = arr(&c, 0, napi_float32_array, tot, 0, "dy");
  cn_bwtf t;
  bwtf_args(&c, 1, g, n, ch, hw, &t);
  float *dx = arr(&c, 7, napi_float32_array, tot, 0, "dx");
  if (c.failed) return NULL;
  LOCK();
  cn_bn_bw_apply(&t, dx, n);
  UNLOCK();
  return undef(env);
}

/* ---- elementwise ------------------------------------------------------------------------------ */

/* elementwise(op, a, b|null, y, s): all arrays of a's length */
static napi_value js_elementwise(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long op = inum(&c, 0);
  const size_t n = arr_len(&c, 1);
  const float *a = arr(&c, 1, napi_float32_array, n, 0, "a");
  const int needs_b = (op == CN_EW_RELU_BW || op == CN_EW_RELU6_BW || op == CN_EW_ADD || op == CN_EW_MUL);
  const float *b = needs_b ? arr(&c, 2, napi_float32_array, n, 0, "b") : NULL;
  if (needs_b && !c.failed && arr_len(&c, 2) != n) fail(&c, "convnets native: elementwise operands differ in length");
  float *y = arr(&c, 3, napi_float32_array, n, 0, "y");
  if (!c.failed && arr_len(&c, 3) != n) fail(&c, "convnets native: elementwise output length differs");
  const double s = op == CN_EW_SCALE ? num(&c, 4) : 0.0;
  if (op < 0 || op > CN_EW_ADD_INPLACE) fail(&c, "convnets native: bad elementwise op");
  if (c.failed) return NULL;
  LOCK();
  cn_elementwise((int)op, a, b, y, (long)n, (float)s);
  UNLOCK();
  return undef(env);
}

/* ---- pooling --------------------------------------------------------------------------------- */

/* geometry: Int32Array [n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow] */
static int pool_geom(call_t *c, size_t i, cn_pool_geom *g) {
  const int32_t *v = (const int32_t *)arr(c, i, napi_int32_array, 12, 0, "pool geometry");
  if (!v) return 0;
  g->n = v[0];
  g->c = v[1];
  g->h = v[2];
  g->w = v[3];
  g->kh = v[4];
  g->kw = v[5];
  g->sh = v[6];
  g->sw = v[7];
  g->ph = v[8];
  g->pw = v[9];
  g->oh = v[10];
  g->ow = v[11];
  for (int k = 0; k < 12; k++)
    if (v[k] < 0) {
      fail(c, "convnets native: negative pool geometry");
      return 0;
    }
  if (g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1) {
    fail(c, "convnets native: bad pool geometry");
    return 0;
  }
  return 1;
}

static napi_value js_maxpool(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_pool_geom g;
  if (!pool_geom(&c, 3, &g)) return NULL;
  const float *x = arr(&c, 0, napi_float32_array, (size_t)(g.n * g.c * g.h * g.w), 0, "x");
  float *y = arr(&c, 1, napi_float32_array, (size_t)(g.n * g.c * g.oh * g.ow), 0, "y");
  int32_t *am = arr(&c, 2, napi_int32_array, (size_t)(g.n * g.c * g.oh * g.ow), 0, "argmax");
  if (c.failed) return NULL;
  LOCK();
  cn_maxpool(x, y, am, &g);
  UNLOCK();
  return undef(env);
}

static napi_value js_maxpool_bwd(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  cn_pool_geom g;
  if (!pool_geom(&c, 3, &g)) return NULL;
  const float *dy = arr(&c, 0, napi_float32_array, (size_t)(g.n * g.c * g.oh * g.ow), 0, "dy");
  const int32_t *am = arr(&c, 1, napi_int32_array, (size_t)(g.n * g.c * g.oh * g.ow), 0, "argmax");
  float *dx = arr(&c, 2, napi_float32_array, (size_t)(g.n * g.c * g.h * g.w), 0, "dx");
  if (c.failed) return NULL;
  LOCK();
  cn_maxpool_backward(dy, am, dx, &g);
  UNLOCK();
  return undef(env);
}

/* adaptiveAvgPool(x, y, n, c, h, w, oh, ow) */
static napi_value js_avgpool(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 2), ch = inum(&c, 3), h = inum(&c, 4), w = inum(&c, 5), oh = inum(&c, 6), ow = inum(&c, 7);
  if (!c.failed && (oh < 1 || ow < 1 || h < 1 || w < 1)) fail(&c, "convnets native: bad adaptive pool sizes");
  const float *x = arr(&c, 0, napi_float32_array, (size_t)(n * ch * h * w), 0, "x");
  float *y = arr(&c, 1, napi_float32_array, (size_t)(n * ch * oh * ow), 0, "y");
  if (c.failed) return NULL;
  LOCK();
  cn_adaptive_avgpool(x, y, n, ch, h, w, oh, ow);
  UNLOCK();
  return undef(env);
}

/* adaptiveAvgPoolBackward(dy, dx, n, c, h, w, oh, ow) */
static napi_value js_avgpool_bwd(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 2), ch = inum(&c, 3), h = inum(&c, 4), w = inum(&c, 5), oh = inum(&c, 6), ow = inum(&c, 7);
  if (!c.failed && (oh < 1 || ow < 1 || h < 1 || w < 1)) fail(&c, "convnets native: bad adaptive pool sizes");
  const float *dy = arr(&c, 0, napi_float32_array, (size_t)(n * ch * oh * ow), 0, "dy");
  float *dx = arr(&c, 1, napi_float32_array, (size_t)(n * ch * h * w), 0, "dx");
  if (c.failed) return NULL;
  LOCK();
  cn_adaptive_avgpool_backward(dy, dx, n, ch, h, w, oh, ow);
  UNLOCK();
  return undef(env);
}

/* ---- dense ------------------------------------------------------------------------------------ */

/* matmul(a, b, c, m, n, k, transA, transB) */
static napi_value js_matmul(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long m = inum(&c, 3), n = inum(&c, 4), k = inum(&c, 5);
  const int ta = flag(&c, 6), tb = flag(&c, 7);
  const float *a = arr(&c, 0, napi_float32_array, (size_t)(m * k), 0, "a");
  const float *b = arr(&c, 1, napi_float32_array, (size_t)(k * n), 0, "b");
  float *out = arr(&c, 2, napi_float32_array, (size_t)(m * n), 0, "c");
  if (c.failed) return NULL;
  LOCK();
  cn_matmul(a, b, out, m, n, k, ta, tb);
  UNLOCK();
  return undef(env);
}

/* addRowVector(y, bias, rows, cols) */
static napi_value js_add_row_vector(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long rows = inum(&c, 2), cols = inum(&c, 3);
  float *y = arr(&c, 0, napi_float32_array, (size_t)(rows * cols), 0, "y");
  const float *bias = arr(&c, 1, napi_float32_array, (size_t)cols, 0, "bias");
  if (c.failed) return NULL;
  LOCK();
  cn_add_row_vector(y, bias, rows, cols);
  UNLOCK();
  return undef(env);
}

/* sumRows(x, out, rows, cols) */
static napi_value js_sum_rows(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long rows = inum(&c, 2), cols = inum(&c, 3);
  const float *x = arr(&c, 0, napi_float32_array, (size_t)(rows * cols), 0, "x");
  float *out = arr(&c, 1, napi_float32_array, (size_t)cols, 0, "out");
  if (c.failed) return NULL;
  LOCK();
  cn_sum_rows(x, out, rows, cols);
  UNLOCK();
  return undef(env);
}

/* sumChannels(x, out, n, c, hw) */
static napi_value js_sum_channels(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long n = inum(&c, 2), ch = inum(&c, 3), hw = inum(&c, 4);
  const float *x = arr(&c, 0, napi_float32_array, (size_t)(n * ch * hw), 0, "x");
  float *out = arr(&c, 1, napi_float32_array, (size_t)ch, 0, "out");
  if (c.failed) return NULL;
  LOCK();
  cn_sum_channels(x, out, n, ch, hw);
  UNLOCK();
  return undef(env);
}

/* logSoftmax(x, y, rows, cols) */
static napi_value js_log_softmax(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long rows = inum(&c, 2), cols = inum(&c, 3);
  const float *x = arr(&c, 0, napi_float32_array, (size_t)(rows * cols), 0, "x");
  float *y = arr(&c, 1, napi_float32_array, (size_t)(rows * cols), 0, "y");
  if (c.failed) return NULL;
  LOCK();
  cn_log_softmax(x, y, rows, cols);
  UNLOCK();
  return undef(env);
}

/* logSoftmaxBackward(dy, y, dx, rows, cols) */
static napi_value js_log_softmax_bwd(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const long rows = inum(&c, 3), cols = inum(&c, 4);
  const float *dy = arr(&c, 0, napi_float32_array, (size_t)(rows * cols), 0, "dy");
  const float *y = arr(&c, 1, napi_float32_array, (size_t)(rows * cols), 0, "y");
  float *dx = arr(&c, 2, napi_float32_array, (size_t)(rows * cols), 0, "dx");
  if (c.failed) return NULL;
  LOCK();
  cn_log_softmax_backward(dy, y, dx, rows, cols);
  UNLOCK();
  return undef(env);
}

/* ---- optimisers ----------------------------------------------------------------------------- */

/* adam(param, grad, expAvg, expAvgSq, lr, beta1, beta2, eps, weightDecay, step) */
static napi_value js_adam(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const size_t n = arr_len(&c, 0);
  float *p = arr(&c, 0, napi_float32_array, n, 0, "param");
  const float *g = arr(&c, 1, napi_float32_array, n, 0, "grad");
  float *m = arr(&c, 2, napi_float32_array, n, 0, "expAvg");
  float *v = arr(&c, 3, napi_float32_array, n, 0, "expAvgSq");
  cn_adam_hyper h;
  h.lr = num(&c, 4);
  h.beta1 = num(&c, 5);
  h.beta2 = num(&c, 6);
  h.eps = num(&c, 7);
  h.weight_decay = num(&c, 8);
  h.step = num(&c, 9);
  if (c.failed) return NULL;
  LOCK();
  cn_adam(p, g, m, v, (long)n, &h);
  UNLOCK();
  return undef(env);
}

/* sgd(param, grad, buf|null, lr, momentum, dampening, weightDecay, nesterov, firstStep) */
static napi_value js_sgd(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const size_t n = arr_len(&c, 0);
  float *p = arr(&c, 0, napi_float32_array, n, 0, "param");
  const float *g = arr(&c, 1, napi_float32_array, n, 0, "grad");
  float *buf = arr(&c, 2, napi_float32_array, n, 1, "momentum buffer");
  cn_sgd_hyper h;
  h.lr = num(&c, 3);
  h.momentum = num(&c, 4);
  h.dampening = num(&c, 5);
  h.weight_decay = num(&c, 6);
  h.nesterov = flag(&c, 7);
  h.first_step = flag(&c, 8);
  if (c.failed) return NULL;
  LOCK();
  cn_sgd(p, g, buf, (long)n, &h);
  UNLOCK();
  return undef(env);
}

/* ---- configuration ------------------------------------------------------------------------------ */

static napi_value js_get_threads(napi_env env, napi_callback_info info) {
  (void)info;
  LOCK();
  int n = cn_num_threads();
  UNLOCK();
  return int32(env, n);
}

/* setThreads(n): n <= 0 restores the default. Returns the thread count in effect. */
static napi_value js_set_threads(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const double v = num(&c, 0);
  if (c.failed) return NULL;
  LOCK();
  cn_set_num_threads((int)v);
  int n = cn_num_threads();
  UNLOCK();
  return int32(env, n);
}

static napi_value js_get_isa(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value r;
  LOCK();
  const char *s = cn_isa_name();
  UNLOCK();
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r);
  return r;
}

/* setIsa(name): "auto" | "avx512" | "avx2" | "neon" | "scalar". Returns false if unsupported. */
static napi_value js_set_isa(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  char name[32] = {0};
  size_t len = 0;
  if (c.argc < 1 || napi_get_value_string_utf8(env, c.argv[0], name, sizeof name, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "convnets native: setIsa expects a string");
    return NULL;
  }
  LOCK();
  int ok = cn_select_isa(name);
  UNLOCK();
  return boolean(env, ok);
}

/* byteAlignment(typedArray): the address of its first element modulo 64 (the arena aligns
 * pooled buffers to cache lines with it: SIMD loads that straddle two lines cost twice). */
static napi_value js_byte_alignment(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  bool ista = false;
  void *data = NULL;
  size_t len = 0;
  napi_typedarray_type type;
  if (c.argc < 1 || napi_is_typedarray(env, c.argv[0], &ista) != napi_ok || !ista ||
      napi_get_typedarray_info(env, c.argv[0], &type, &len, &data, NULL, NULL) != napi_ok) {
    napi_throw_type_error(env, NULL, "convnets native: byteAlignment expects a typed array");
    return NULL;
  }
  napi_value r;
  napi_create_uint32(env, (uint32_t)((uintptr_t)data % 64), &r);
  return r;
}

/* adviseHugePages(float32Array): asks the kernel to back the whole 2 MB pages inside the array's
 * memory with transparent huge pages (where THP is in "madvise" mode, as on most
 * distributions). Called by the arena on large buffers before their first touch: kernels that
 * walk a tensor plane by plane (a 4 KB page each at 32x32) otherwise miss the TLB on every
 * plane. Returns whether the advice was taken (false: not Linux, too small, or refused). */
static napi_value js_advise_huge(napi_env env, napi_callback_info info) {
  call_t c;
  if (!start(&c, env, info)) return NULL;
  const float *data = arr(&c, 0, napi_float32_array, 0, 0, "adviseHugePages: the buffer");
  if (c.failed) return NULL;
  int ok = 0;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = (uintptr_t)2 << 20;
  const uintptr_t b = ((uintptr_t)data + huge - 1) & ~(huge - 1);
  const uintptr_t e = ((uintptr_t)data + arr_len(&c, 0) * sizeof(float)) & ~(huge - 1);
  if (data && e > b) ok = madvise((void *)b, e - b, MADV_HUGEPAGE) == 0;
#endif
  return boolean(env, ok);
}

/* ---- allocator tuning ------------------------------------------------------------------------
 * Every kernel returns fresh tensors (tens of MB each at batch 128). By default glibc serves
 * such sizes with mmap and returns them with munmap, so every output pays page faults plus the
 * kernel zeroing its pages: that costs more than the memory-bound kernels themselves (measured:
 * MobileNetV2 training 2.3x faster without it). Keeping large blocks in the heap lets freed
 * tensors be reused. Process-wide, once; CONVNETS_MALLOC_TUNING=0 disables it. */
static void tune_malloc(void) {
#if defined(__GLIBC__)
  static int done = 0;
  if (done) return;
  done = 1;
  const char *e = getenv("CONVNETS_MALLOC_TUNING");
  if (e && !strcmp(e, "0")) return;
  mallopt(M_MMAP_MAX, 0);                        /* large blocks from the heap, reusable */
  mallopt(M_TRIM_THRESHOLD, 1 << 30);            /* keep freed memory instead of trimming */
  mallopt(M_TOP_PAD, 64 << 20);                  /* grow the heap in big steps */
#endif
}

/* ---- module ------------------------------------------------------------------------------------- */

NAPI_MODULE_INIT() {
  static const struct {
    const char *name;
    napi_callback fn;
  } fns[] = {
      {"conv2d", js_conv2d},
      {"blockInfer", js_block_infer},
      {"conv2dFused", js_conv2d_fused},
      {"conv2dDwPw", js_conv2d_dwpw},
      {"conv2dBackwardInput", js_conv2d_bwd_input},
      {"conv2dBackwardWeight", js_conv2d_bwd_weight},
      {"conv2dBackwardPw", js_conv2d_bwd_pw},
      {"bnTrain", js_bn_train},
      {"bnEval", js_bn_eval},
      {"bnBackward", js_bn_backward},
      {"bnStats", js_bn_stats},
      {"bnStatsFromPartials", js_bn_stats_from_partials},
      {"bnGroupImages", js_bn_group_images},
      {"bnApply", js_bn_apply},
      {"bnBackwardAct", js_bn_backward_act},
      {"bnBwCoefs", js_bn_bw_coefs},
      {"bnBwApply", js_bn_bw_apply},
      {"elementwise", js_elementwise},
      {"maxPool", js_maxpool},
      {"maxPoolBackward", js_maxpool_bwd},
      {"adaptiveAvgPool", js_avgpool},
      {"adaptiveAvgPoolBackward", js_avgpool_bwd},
      {"matmul", js_matmul},
      {"addRowVector", js_add_row_vector},
      {"sumRows", js_sum_rows},
      {"sumChannels", js_sum_channels},
      {"logSoftmax", js_log_softmax},
      {"logSoftmaxBackward", js_log_softmax_bwd},
      {"adam", js_adam},
      {"sgd", js_sgd},
      {"getThreads", js_get_threads},
      {"setThreads", js_set_threads},
      {"getIsa", js_get_isa},
      {"setIsa", js_set_isa},
      {"byteAlignment", js_byte_alignment},
      {"adviseHugePages", js_advise_huge},
  };
  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
    napi_value f;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, fns[i].name, f) != napi_ok) return NULL;
  }
  napi_value v;
  napi_create_int32(env, CN_ADDON_VERSION, &v);
  napi_set_named_property(env, exports, "version", v);
  LOCK();
  tune_malloc();
  cn_isa_name(); /* select the instruction set now (honours CONVNETS_ISA) */
  UNLOCK();
  return exports;
}
