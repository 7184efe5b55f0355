/* Standalone check of the native kernels on every instruction set this CPU (or emulator) runs:
 * convolutions (pointwise, 3x3 stride 1 and 2, depthwise on every plane size the models use,
 * a channel multiplier, 5x5), their input and weight gradients, matmul in the four transpose
 * combinations and batch-norm statistics + apply, each against a naive double-precision loop in
 * this file. Not part of the addon: scripts/check_isa.sh builds it natively and, with an aarch64
 * cross compiler and qemu-user, for arm64 (the NEON path), and runs it. Exit status 1 on any
 * mismatch; one line per case. */
#include "cn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long rng = 88172645463325252ULL;
static float frand(void) { /* xorshift, uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 4503599627370496.0 - 1.0);
}
static float *randv(long n) {
  float *a = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  if (!a) abort();
  for (long i = 0; i < n; i++) a[i] = frand();
  return a;
}
static double *zerod(long n) {
  double *a = (double *)calloc((size_t)(n > 0 ? n : 1), sizeof(double));
  if (!a) abort();
  return a;
}

/* max |got - want| / max(1, max |want|) */
static double rel_err(const float *got, const double *want, long n) {
  double e = 0.0, m = 1.0;
  for (long i = 0; i < n; i++) {
    const double d = fabs((double)got[i] - want[i]);
    if (!(d <= e)) e = d; /* NaN counts as an error */
    if (fabs(want[i]) > m) m = fabs(want[i]);
  }
  return e / m;
}

/* naive grouped convolution: y (forward), dx, dw from dy */
static void naive_conv(const cn_conv_geom *g, const float *x, const float *w, const float *b, const float *dy,
                       double *y, double *dx, double *dw) {
  const long cg = g->c / g->groups, og = g->o / g->groups;
  for (long n = 0; n < g->n; n++)
    for (long o = 0; o < g->o; o++) {
      const long gr = o / og;
      for (long oy = 0; oy < g->oh; oy++)
        for (long ox = 0; ox < g->ow; ox++) {
          const long yi = ((n * g->o + o) * g->oh + oy) * g->ow + ox;
          double s = b ? b[o] : 0.0;
          for (long ci = 0; ci < cg; ci++)
            for (long ky = 0; ky < g->kh; ky++)
              for (long kx = 0; kx < g->kw; kx++) {
                const long iy = oy * g->sh - g->ph + ky, ix = ox * g->sw - g->pw + kx;
                if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) continue;
                const long c = gr * cg + ci, xi = ((n * g->c + c) * g->h + iy) * g->w + ix;
                const long wi = ((o * cg + ci) * g->kh + ky) * g->kw + kx;
                s += (double)w[wi] * x[xi];
                dx[xi] += (double)w[wi] * dy[yi];
                dw[wi] += (double)dy[yi] * x[xi];
              }
          y[yi] = s;
        }
    }
}

static int failures = 0;
static void report(const char *isa, const char *what, const char *name, double err, double tol) {
  const int ok = err <= tol;
  if (!ok) failures++;
  printf("%s %-7s %-10s %-44s rel err %.2e%s\n", ok ? "ok  " : "FAIL", isa, what, name, err, ok ? "" : " (too large)");
}

typedef struct {
  const char *name;
  long n, c, h, w, o, kh, kw, sh, sw, ph, pw, groups;
  int bias;
} conv_case;

static void check_conv(const char *isa, const conv_case *k) {
  cn_conv_geom g = {k->n, k->c, k->h, k->w, k->o, k->kh, k->kw, k->sh, k->sw, k->ph, k->pw, k->groups, 0, 0};
  g.oh = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  const long nx = g.n * g.c * g.h * g.w, ny = g.n * g.o * g.oh * g.ow, nw = g.o * (g.c / g.groups) * g.kh * g.kw;
  float *x = randv(nx), *w = randv(nw), *b = k->bias ? randv(g.o) : NULL, *dy = randv(ny);
  float *y = randv(ny), *dx = randv(nx), *dw = randv(nw);
  double *ry = zerod(ny), *rdx = zerod(nx), *rdw = zerod(nw);
  naive_conv(&g, x, w, b, dy, ry, rdx, rdw);
  cn_conv2d(x, w, b, y, &g);
  cn_conv2d_backward_input(dy, w, dx, &g);
  cn_conv2d_backward_weight(dy, x, dw, &g);
  report(isa, "forward", k->name, rel_err(y, ry, ny), 1e-5);
  report(isa, "grad in", k->name, rel_err(dx, rdx, nx), 1e-5);
  report(isa, "grad w", k->name, rel_err(dw, rdw, nw), 1e-4);
  free(x), free(w), free(b), free(dy), free(y), free(dx), free(dw), free(ry), free(rdx), free(rdw);
}

static void check_matmul(const char *isa, long m, long n, long k, int ta, int tb) {
  float *a = randv(m * k), *b = randv(k * n), *c = randv(m * n);
  double *r = zerod(m * n);
  for (long i = 0; i < m; i++)
    for (long j = 0; j < n; j++) {
      double s = 0.0;
      for (long q = 0; q < k; q++) s += (double)(ta ? a[q * m + i] : a[i * k + q]) * (tb ? b[j * k + q] : b[q * n + j]);
      r[i * n + j] = s;
    }
  cn_matmul(a, b, c, m, n, k, ta, tb);
  char name[64];
  snprintf(name, sizeof name, "%ldx%ldx%ld ta=%d tb=%d", m, n, k, ta, tb);
  report(isa, "matmul", name, rel_err(c, r, m * n), 1e-5);
  free(a), free(b), free(c), free(r);
}

static void check_bn(const char *isa, long n, long c, long hw) {
  const long total = n * c * hw;
  float *x = randv(total), *y = randv(total), *mean = randv(c), *var = randv(c), *is = randv(c);
  float *scale = randv(c), *shift = randv(c);
  double *rm = zerod(c), *rv = zerod(c), *ry = zerod(total);
  for (long ci = 0; ci < c; ci++) {
    double s = 0.0, s2 = 0.0;
    for (long i = 0; i < n; i++)
      for (long p = 0; p < hw; p++) s += x[(i * c + ci) * hw + p];
    rm[ci] = s / (double)(n * hw);
    for (long i = 0; i < n; i++)
      for (long p = 0; p < hw; p++) {
        const double d = x[(i * c + ci) * hw + p] - rm[ci];
        s2 += d * d;
      }
    rv[ci] = s2 / (double)(n * hw);
    for (long i = 0; i < n; i++)
      for (long p = 0; p < hw; p++) {
        const double v = ((double)x[(i * c + ci) * hw + p] - rm[ci]) * scale[ci] + shift[ci];
        ry[(i * c + ci) * hw + p] = v > 0.0 ? (v < 6.0 ? v : 6.0) : 0.0;
      }
  }
  cn_bn_stats(x, mean, var, is, n, c, hw, 1e-5);
  char name[64];
  snprintf(name, sizeof name, "%ldx%ldx%ld", n, c, hw);
  report(isa, "bn mean", name, rel_err(mean, rm, c), 1e-6);
  report(isa, "bn var", name, rel_err(var, rv, c), 1e-6);
  /* apply with the exact statistics (ReLU6) */
  float *mf = randv(c);
  for (long ci = 0; ci < c; ci++) mf[ci] = (float)rm[ci];
  cn_bn_apply(x, mf, scale, shift, NULL, y, n, c, hw, 2);
  report(isa, "bn apply", name, rel_err(y, ry, total), 1e-5);
  free(x), free(y), free(mean), free(var), free(is), free(scale), free(shift), free(mf), free(rm), free(rv), free(ry);
}

int main(void) {
  static const conv_case cases[] = {
      {"pointwise 32x32 24->40", 2, 24, 32, 32, 40, 1, 1, 1, 1, 0, 0, 1, 0},
      {"pointwise 8x8 96->120 (bias)", 3, 96, 8, 8, 120, 1, 1, 1, 1, 0, 0, 1, 1},
      {"pointwise 4x4 300->72", 4, 300, 4, 4, 72, 1, 1, 1, 1, 0, 0, 1, 0},
      {"pointwise 2x2 64->48", 9, 64, 2, 2, 48, 1, 1, 1, 1, 0, 0, 1, 0},
      {"pointwise 16x16 stride 2 16->24", 2, 16, 16, 16, 24, 1, 1, 2, 2, 0, 0, 1, 0},
      {"3x3 s1 32x32 3->16 (stem, bias)", 2, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1, 1, 1},
      {"3x3 s1 16x16 24->24", 2, 24, 16, 16, 24, 3, 3, 1, 1, 1, 1, 1, 0},
      {"3x3 s1 8x8 40->20", 3, 40, 8, 8, 20, 3, 3, 1, 1, 1, 1, 1, 0},
      {"3x3 s1 4x4 64->64", 4, 64, 4, 4, 64, 3, 3, 1, 1, 1, 1, 1, 0},
      {"3x3 s2 16x16 12->20", 2, 12, 16, 16, 20, 3, 3, 2, 2, 1, 1, 1, 0},
      {"3x3 s2 8x8 32->48", 3, 32, 8, 8, 48, 3, 3, 2, 2, 1, 1, 1, 0},
      {"3x3 s1 7x9 odd 5->6", 2, 5, 7, 9, 6, 3, 3, 1, 1, 1, 1, 1, 1},
      {"depthwise 3x3 s1 32x32", 2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 16, 0},
      {"depthwise 3x3 s1 16x16", 3, 24, 16, 16, 24, 3, 3, 1, 1, 1, 1, 24, 1},
      {"depthwise 3x3 s1 8x8", 3, 20, 8, 8, 20, 3, 3, 1, 1, 1, 1, 20, 0},
      {"depthwise 3x3 s1 4x4", 5, 22, 4, 4, 22, 3, 3, 1, 1, 1, 1, 22, 0},
      {"depthwise 3x3 s1 2x2", 3, 13, 2, 2, 13, 3, 3, 1, 1, 1, 1, 13, 0},
      {"depthwise 3x3 s2 32x32", 2, 8, 32, 32, 8, 3, 3, 2, 2, 1, 1, 8, 0},
      {"depthwise 3x3 s2 16x16", 3, 10, 16, 16, 10, 3, 3, 2, 2, 1, 1, 10, 0},
      {"depthwise 3x3 s2 8x8", 3, 20, 8, 8, 20, 3, 3, 2, 2, 1, 1, 20, 1},
      {"depthwise 3x3 s2 4x4", 3, 7, 4, 4, 7, 3, 3, 2, 2, 1, 1, 7, 0},
      {"depthwise 3x3 s1 8x8, multiplier 2", 2, 6, 8, 8, 12, 3, 3, 1, 1, 1, 1, 6, 0},
      {"depthwise 5x5 s1 9x9", 2, 8, 9, 9, 8, 5, 5, 1, 1, 2, 2, 8, 0},
      {"grouped 3x3 s1 7x7, groups 2", 2, 8, 7, 7, 12, 3, 3, 1, 1, 1, 1, 2, 0},
  };
  static const char *isas[] = {"avx512", "avx2", "neon", "scalar"};
  cn_set_num_threads(2);
  int ran = 0;
  for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
    if (!cn_select_isa(isas[i])) continue;
    ran++;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) check_conv(isas[i], &cases[k]);
    for (int t = 0; t < 4; t++) check_matmul(isas[i], 37, 45, 29, t & 1, t >> 1);
    check_matmul(isas[i], 128, 10, 1024, 0, 1);
    check_bn(isas[i], 6, 12, 64);
    check_bn(isas[i], 8, 20, 4);
  }
  cn_pool_shutdown();
  printf("%d instruction set(s) checked, %d failure(s)\n", ran, failures);
  return failures || !ran ? 1 : 0;
}
