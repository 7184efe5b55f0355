/* Memory-bound kernels, compiled once per instruction set (included by kernels.c with ISA,
 * ISA_ATTR and LANES defined). Written as plain C loops shaped for the auto-vectoriser:
 * reductions keep LANES independent partial sums so no reassociation flag is needed and
 * results are deterministic. No include guard on purpose. */

#define LANE_LOOP for (int l = 0; l < LANES; l++)

/* ---- reductions ------------------------------------------------------------------------------ */

static ISA_ATTR float FN(hsum)(float *acc) {
  for (int w = LANES / 2; w > 0; w /= 2)
    for (int l = 0; l < w; l++) acc[l] += acc[l + w];
  return acc[0];
}

/* sum of x[0..n) */
static ISA_ATTR float FN(sum)(const float *CN_RESTRICT x, long n) {
  float acc[LANES];
  LANE_LOOP acc[l] = 0.0f;
  long i = 0;
  for (; i + LANES <= n; i += LANES) LANE_LOOP acc[l] += x[i + l];
  for (int l = 0; i < n; i++, l++) acc[l] += x[i];
  return FN(hsum)(acc);
}

/* sum of (x - m)^2 */
static ISA_ATTR float FN(sqdev)(const float *CN_RESTRICT x, long n, float m) {
  float acc[LANES];
  LANE_LOOP acc[l] = 0.0f;
  long i = 0;
  for (; i + LANES <= n; i += LANES) LANE_LOOP {
      const float d = x[i + l] - m;
      acc[l] += d * d;
    }
  for (int l = 0; i < n; i++, l++) {
    const float d = x[i] - m;
    acc[l] += d * d;
  }
  return FN(hsum)(acc);
}

/* sums of dy and of dy * (x - m) */
static ISA_ATTR void FN(dot2)(const float *CN_RESTRICT dy, const float *CN_RESTRICT x, long n, float m, float *sdy,
                              float *sdyx) {
  float a[LANES], b[LANES];
  LANE_LOOP a[l] = b[l] = 0.0f;
  long i = 0;
  for (; i + LANES <= n; i += LANES) LANE_LOOP {
      const float g = dy[i + l];
      a[l] += g;
      b[l] += g * (x[i + l] - m);
    }
  for (int l = 0; i < n; i++, l++) {
    a[l] += dy[i];
    b[l] += dy[i] * (x[i] - m);
  }
  *sdy = FN(hsum)(a);
  *sdyx = FN(hsum)(b);
}

static ISA_ATTR float FN(dot)(const float *CN_RESTRICT a, const float *CN_RESTRICT b, long n) {
  float acc[LANES];
  LANE_LOOP acc[l] = 0.0f;
  long i = 0;
  for (; i + LANES <= n; i += LANES) LANE_LOOP acc[l] += a[i + l] * b[i + l];
  for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
  return FN(hsum)(acc);
}

/* ---- batch norm: per-segment pieces (a segment is one (n, c) plane of hw floats) ----------- */

/* mean and sum of squared deviations of one segment (two passes while it is hot in L1) */
static ISA_ATTR void FN(seg_stats)(const float *x, long hw, float *mean, float *m2) {
  const float sm = FN(sum)(x, hw) / (float)hw;
  *mean = sm;
  *m2 = FN(sqdev)(x, hw, sm);
}

/* The normalised value (x - m) * k + bt. Where the target has FMA it is computed as one fused
 * multiply-add explicitly, so that every kernel that evaluates it (the apply passes and the
 * fused activation backward, which recomputes the activation's mask) gets the same float. */
#if defined(ISA_AVX) || defined(__aarch64__)
#define CN_BN_VAL(x, m, k, bt) __builtin_fmaf((x) - (m), (k), (bt))
#else
#define CN_BN_VAL(x, m, k, bt) (((x) - (m)) * (k) + (bt))
#endif

static ISA_ATTR void FN(bn_apply)(const float *CN_RESTRICT p, float *CN_RESTRICT q, long hw, float m, float k, float bt) {
  for (long i = 0; i < hw; i++) q[i] = CN_BN_VAL(p[i], m, k, bt);
}

/* dx = k * (dy - mdy - (x - m) * q) */
static ISA_ATTR void FN(bn_bw_apply)(const float *CN_RESTRICT g, const float *CN_RESTRICT x, float *CN_RESTRICT d,
                                     long hw, float m, float k, float mdy, float q) {
  for (long i = 0; i < hw; i++) d[i] = k * (g[i] - mdy - (x[i] - m) * q);
}

/* ---- batch norm fused with what follows it -----------------------------------------------------
 * v = (x - m) * k + bt is the same expression as bn_apply (so the same float32 result), then
 * optionally + a residual r (a following add) and an activation with the same NaN/-0 rules as
 * the separate kernels (ew). The backward recomputes v from x to get the activation's mask, so
 * it never needs the activation's output. */

static ISA_ATTR void FN(bn_apply_act)(const float *CN_RESTRICT p, const float *CN_RESTRICT r, float *CN_RESTRICT q,
                                      long hw, float m, float k, float bt, int act) {
  if (r) {
    switch (act) {
    case 1:
      for (long i = 0; i < hw; i++) {
        const float v = r[i] + CN_BN_VAL(p[i], m, k, bt);
        q[i] = (v > 0.0f || v != v) ? v : 0.0f;
      }
      return;
    case 2:
      for (long i = 0; i < hw; i++) {
        const float v = r[i] + CN_BN_VAL(p[i], m, k, bt);
        q[i] = v > 0.0f ? (v > 6.0f ? 6.0f : v) : (v != v ? v : 0.0f);
      }
      return;
    default:
      for (long i = 0; i < hw; i++) q[i] = r[i] + CN_BN_VAL(p[i], m, k, bt);
      return;
    }
  }
  switch (act) {
  case 1:
    for (long i = 0; i < hw; i++) {
      const float v = CN_BN_VAL(p[i], m, k, bt);
      q[i] = (v > 0.0f || v != v) ? v : 0.0f;
    }
    return;
  case 2:
    for (long i = 0; i < hw; i++) {
      const float v = CN_BN_VAL(p[i], m, k, bt);
      q[i] = v > 0.0f ? (v > 6.0f ? 6.0f : v) : (v != v ? v : 0.0f);
    }
    return;
  default:
    for (long i = 0; i < hw; i++) q[i] = CN_BN_VAL(p[i], m, k, bt);
    return;
  }
}

/* bn_apply_act with per-element coefficients (m[i], k[i], bt[i]): small planes, where a run of
 * consecutive planes is one vector loop instead of a call per plane (same arithmetic) */
static ISA_ATTR void FN(bn_apply_act_v)(const float *CN_RESTRICT p, const float *CN_RESTRICT r, float *CN_RESTRICT q,
                                        long len, const float *m, const float *k, const float *bt, int act) {
  for (long i = 0; i < len; i++) {
    float v = CN_BN_VAL(p[i], m[i], k[i], bt[i]);
    if (r) v = r[i] + v;
    if (act == 1) v = (v > 0.0f || v != v) ? v : 0.0f;
    else if (act == 2) v = v > 0.0f ? (v > 6.0f ? 6.0f : v) : (v != v ? v : 0.0f);
    q[i] = v;
  }
}

/* the inference epilogue on rows of an output, in place: row r (channel ch0 + r) is y + r * ldc,
 * n values; y = act(CN_BN_VAL(y (+ bias), m, k, bt) (+ res)) -- the arithmetic of the separate
 * passes. res rows have the same layout (res + r * ldc) or res is NULL. */
#define CN_EPI_LOOP(EXPR)                                                                                              \
  for (long r = 0; r < rows; r++) {                                                                                    \
    float *CN_RESTRICT yr = y + r * ldc;                                                                               \
    const float *CN_RESTRICT rr = res ? res + r * ldc : NULL;                                                          \
    const long ch = ch0 + r;                                                                                           \
    const float bb = bias ? bias[ch] : 0.0f, m = mean[ch], k = scale[ch], bt = shift[ch];                               \
    (void)rr;                                                                                                          \
    (void)bb;                                                                                                          \
    for (long i = 0; i < n; i++) {                                                                                     \
      float v = EXPR;                                                                                                  \
      if (act == 1) v = (v > 0.0f || v != v) ? v : 0.0f;                                                               \
      else if (act == 2) v = v > 0.0f ? (v > 6.0f ? 6.0f : v) : (v != v ? v : 0.0f);                                  \
      yr[i] = v;                                                                                                       \
    }                                                                                                                  \
  }
static ISA_ATTR void FN(epi_rows)(float *y, const float *res, long ldc, long rows, long n, long ch0, const float *bias,
                                  const float *mean, const float *scale, const float *shift, int act) {
  /* one loop per variant so that each vectorises without branches */
  if (act == 0) {
    if (bias && res) { CN_EPI_LOOP(rr[i] + CN_BN_VAL(yr[i] + bb, m, k, bt)) }
    else if (bias) { CN_EPI_LOOP(CN_BN_VAL(yr[i] + bb, m, k, bt)) }
    else if (res) { CN_EPI_LOOP(rr[i] + CN_BN_VAL(yr[i], m, k, bt)) }
    else { CN_EPI_LOOP(CN_BN_VAL(yr[i], m, k, bt)) }
  } else if (act == 1) {
    if (bias && res) { CN_EPI_LOOP(rr[i] + CN_BN_VAL(yr[i] + bb, m, k, bt)) }
    else if (bias) { CN_EPI_LOOP(CN_BN_VAL(yr[i] + bb, m, k, bt)) }
    else if (res) { CN_EPI_LOOP(rr[i] + CN_BN_VAL(yr[i], m, k, bt)) }
    else { CN_EPI_LOOP(CN_BN_VAL(yr[i], m, k, bt)) }
  } else {
    if (bias && res) { CN_EPI_LOOP(rr[i] + CN_BN_VAL(yr[i] + bb, m, k, bt)) }
    else if (bias) { CN_EPI_LOOP(CN_BN_VAL(yr[i] + bb, m, k, bt)) }
    else if (res) { CN_EPI_LOOP(rr[i] + CN_BN_VAL(yr[i], m, k, bt)) }
    else { CN_EPI_LOOP(CN_BN_VAL(yr[i], m, k, bt)) }
  }
}
#undef CN_EPI_LOOP

/* the activation's gradient mask at v: ReLU v > 0, ReLU6 0 < v < 6 (as relu/relu6 backward on
 * the activation's output) */
#define CN_ACT_PASS(act, v) ((act) == 2 ? ((v) > 0.0f && (v) < 6.0f) : (v) > 0.0f)

/* sums of g and g * (x - m), g = dy masked by the activation of (x - m) * k + bt (as dot2 on the
 * output of relu backward) */
static ISA_ATTR void FN(dot2_act)(const float *CN_RESTRICT dy, const float *CN_RESTRICT x, long n, float m, float k,
                                  float bt, int act, float *sdy, float *sdyx) {
  float a[LANES], b[LANES];
  LANE_LOOP a[l] = b[l] = 0.0f;
  long i = 0;
#if defined(ISA_AVX) && LANES == 32
  /* AVX-512 by hand (the auto-vectorised form spills its accumulators): lanes as below */
  {
    const __m512 vm = _mm512_set1_ps(m), vk = _mm512_set1_ps(k), vb = _mm512_set1_ps(bt);
    const __m512 z = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
    __m512 a0 = z, a1 = z, b0 = z, b1 = z;
    for (; i + 32 <= n; i += 32) {
      const __m512 e0 = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm), e1 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm);
      const __m512 g0 = _mm512_loadu_ps(dy + i), g1 = _mm512_loadu_ps(dy + i + 16);
      const __m512 v0 = _mm512_fmadd_ps(e0, vk, vb), v1 = _mm512_fmadd_ps(e1, vk, vb);
      __mmask16 k0 = _mm512_cmp_ps_mask(v0, z, _CMP_GT_OQ), k1 = _mm512_cmp_ps_mask(v1, z, _CMP_GT_OQ);
      if (act == 2) {
        k0 &= _mm512_cmp_ps_mask(v0, six, _CMP_LT_OQ);
        k1 &= _mm512_cmp_ps_mask(v1, six, _CMP_LT_OQ);
      }
      a0 = _mm512_mask_add_ps(a0, k0, a0, g0);
      a1 = _mm512_mask_add_ps(a1, k1, a1, g1);
      b0 = _mm512_mask3_fmadd_ps(g0, e0, b0, k0);
      b1 = _mm512_mask3_fmadd_ps(g1, e1, b1, k1);
    }
    _mm512_storeu_ps(a, a0);
    _mm512_storeu_ps(a + 16, a1);
    _mm512_storeu_ps(b, b0);
    _mm512_storeu_ps(b + 16, b1);
  }
#else
  if (act == 2) {
    for (; i + LANES <= n; i += LANES) LANE_LOOP {
        const float d = dy[i + l];
        const float v = CN_BN_VAL(x[i + l], m, k, bt);
        const float g = (v > 0.0f && v < 6.0f) ? d : 0.0f;
        a[l] += g;
        b[l] += g * (x[i + l] - m);
      }
  } else {
    for (; i + LANES <= n; i += LANES) LANE_LOOP {
        const float d = dy[i + l];
        const float v = CN_BN_VAL(x[i + l], m, k, bt);
        const float g = v > 0.0f ? d : 0.0f;
        a[l] += g;
        b[l] += g * (x[i + l] - m);
      }
  }
#endif
  for (int l = 0; i < n; i++, l++) {
    const float v = CN_BN_VAL(x[i], m, k, bt);
    const float g = CN_ACT_PASS(act, v) ? dy[i] : 0.0f;
    a[l] += g;
    b[l] += g * (x[i] - m);
  }
  *sdy = FN(hsum)(a);
  *sdyx = FN(hsum)(b);
}

/* dx = kb * (g - mdy - (x - m) * q), g as in dot2_act (ka, bt: the forward's scale and shift) */
/* nt: stream d past the caches (an output larger than the last-level cache, which the next
 * kernel reads from memory anyway: no read-for-ownership of its lines) */
static ISA_ATTR void FN(bn_bw_apply_act)(const float *CN_RESTRICT dy, const float *CN_RESTRICT x, float *CN_RESTRICT d,
                                         long hw, float m, float kb, float mdy, float q, float ka, float bt, int act,
                                         int nt) {
  long i = 0;
#if defined(ISA_AVX) && LANES == 32
  {
    const __m512 vm = _mm512_set1_ps(m), vka = _mm512_set1_ps(ka), vb = _mm512_set1_ps(bt), vkb = _mm512_set1_ps(kb);
    const __m512 vmdy = _mm512_set1_ps(mdy), vq = _mm512_set1_ps(q);
    const __m512 z = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
    /* two vectors per iteration with plain loads and stores (masked stores are slow on some
     * CPUs), prefetching ahead; then masked tails */
#define CN_BWA_VEC(xv, gv, out)                                                                                        \
  do {                                                                                                                 \
    const __m512 e_ = _mm512_sub_ps(xv, vm);                                                                           \
    const __m512 v_ = _mm512_fmadd_ps(e_, vka, vb);                                                                    \
    __mmask16 k_ = _mm512_cmp_ps_mask(v_, z, _CMP_GT_OQ);                                                              \
    if (act == 2) k_ &= _mm512_cmp_ps_mask(v_, six, _CMP_LT_OQ);                                                       \
    const __m512 g_ = _mm512_maskz_mov_ps(k_, gv);                                                                     \
    out = _mm512_mul_ps(vkb, _mm512_fnmadd_ps(e_, vq, _mm512_sub_ps(g_, vmdy)));                                       \
  } while (0)
#define CN_BWA_LOOP(STORE)                                                                                             \
  for (; i + 32 <= hw; i += 32) {                                                                                      \
    _mm_prefetch((const char *)(x + i + 256), _MM_HINT_T0);                                                            \
    _mm_prefetch((const char *)(dy + i + 256), _MM_HINT_T0);                                                           \
    __m512 r0, r1;                                                                                                     \
    CN_BWA_VEC(_mm512_loadu_ps(x + i), _mm512_loadu_ps(dy + i), r0);                                                   \
    CN_BWA_VEC(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(dy + i + 16), r1);                                         \
    STORE(d + i, r0);                                                                                                  \
    STORE(d + i + 16, r1);                                                                                             \
  }
    if (nt && ((uintptr_t)d & 63) == 0) {
      CN_BWA_LOOP(_mm512_stream_ps)
      _mm_sfence(); /* the streamed stores ordered before the pool's completion signal */
    }
    CN_BWA_LOOP(_mm512_storeu_ps)
#undef CN_BWA_LOOP
    for (; i < hw; i += 16) {
      const __mmask16 ld = hw - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (hw - i)) - 1u);
      __m512 r0;
      CN_BWA_VEC(_mm512_maskz_loadu_ps(ld, x + i), _mm512_maskz_loadu_ps(ld, dy + i), r0);
      _mm512_mask_storeu_ps(d + i, ld, r0);
    }
#undef CN_BWA_VEC
    return;
  }
#endif
  (void)nt;
  if (act == 2) {
    for (; i < hw; i++) {
      const float dv = dy[i];
      const float v = CN_BN_VAL(x[i], m, ka, bt);
      const float g = (v > 0.0f && v < 6.0f) ? dv : 0.0f;
      d[i] = kb * (g - mdy - (x[i] - m) * q);
    }
  } else {
    for (; i < hw; i++) {
      const float dv = dy[i];
      const float v = CN_BN_VAL(x[i], m, ka, bt);
      const float g = v > 0.0f ? dv : 0.0f;
      d[i] = kb * (g - mdy - (x[i] - m) * q);
    }
  }
}

/* bn_bw_apply(_act) over a row of nch adjacent planes of one image (the small-plane block walk;
 * coefficients per channel, ka and bt with act only), inlined: a call per 64-value plane cost
 * more than its arithmetic */
static ISA_ATTR __attribute__((flatten)) void FN(bn_bw_apply_row)(const float *dy, const float *x, float *d, long hw,
                                                                  long nch, const float *m, const float *kb,
                                                                  const float *mdy, const float *q, const float *ka,
                                                                  const float *bt, int act) {
  for (long ch = 0; ch < nch; ch++) {
    const long o = ch * hw;
    if (act)
      FN(bn_bw_apply_act)(dy + o, x + o, d + o, hw, m[ch], kb[ch], mdy[ch], q[ch], ka[ch], bt[ch], act, 0);
    else
      FN(bn_bw_apply)(dy + o, x + o, d + o, hw, m[ch], kb[ch], mdy[ch], q[ch]);
  }
}

#if defined(ISA_AVX) && LANES == 32
/* bn_bw_apply_act (act 1 or 2) with per-element coefficients: small planes, a run of consecutive
 * planes of one image in one vector loop (same arithmetic as the per-plane AVX-512 kernel) */
static ISA_ATTR void FN(bn_bw_apply_act_v)(const float *CN_RESTRICT dy, const float *CN_RESTRICT x,
                                           float *CN_RESTRICT d, long len, const float *m, const float *kb,
                                           const float *mdy, const float *q, const float *ka, const float *bt,
                                           int act) {
  const __m512 z = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
  for (long i = 0; i < len; i += 16) {
    const __mmask16 ld = len - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - i)) - 1u);
    const __m512 e = _mm512_sub_ps(_mm512_maskz_loadu_ps(ld, x + i), _mm512_maskz_loadu_ps(ld, m + i));
    const __m512 v = _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(ld, ka + i), _mm512_maskz_loadu_ps(ld, bt + i));
    __mmask16 k = _mm512_cmp_ps_mask(v, z, _CMP_GT_OQ);
    if (act == 2) k &= _mm512_cmp_ps_mask(v, six, _CMP_LT_OQ);
    const __m512 g = _mm512_maskz_mov_ps(k, _mm512_maskz_loadu_ps(ld, dy + i));
    const __m512 r = _mm512_mul_ps(_mm512_maskz_loadu_ps(ld, kb + i),
                                   _mm512_fnmadd_ps(e, _mm512_maskz_loadu_ps(ld, q + i),
                                                    _mm512_sub_ps(g, _mm512_maskz_loadu_ps(ld, mdy + i))));
    _mm512_mask_storeu_ps(d + i, ld, r);
  }
}
#endif

/* ---- batch norm over the planes of one channel -------------------------------------------------
 * `count` planes of hw floats, plane i at offset i * stride. Partial sums are kept in float lanes
 * over groups of about 1024 values (one plane when planes are large, many small ones), and the
 * groups are combined in double; the grouping depends only on the shape, so results do not
 * depend on the thread count. Small planes (4x4, 8x8) no longer pay a reduction each. */

static inline long FN(bn_group)(long hw) { return hw >= 1024 ? 1 : 1024 / (hw > 0 ? hw : 1); }

#if defined(ISA_AVX) && LANES == 32
static ISA_ATTR inline __mmask16 FN(tailmask)(long left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}
static ISA_ATTR inline double FN(hsum512d)(__m512 v) {
  float t[16];
  _mm512_storeu_ps(t, v);
  for (int w = 8; w > 0; w /= 2)
    for (int l = 0; l < w; l++) t[l] += t[l + w];
  return (double)t[0];
}

/* One plane's part of the batch-norm reductions, shared by the per-channel walks (stats_planes,
 * dot2_planes) and the image-by-image block walks (stats_block, dot2_block) so that both do the
 * same operations in the same order: 32 values at a time into two partial sums, a masked tail
 * into the first. */
#define CN_INLINE ISA_ATTR inline __attribute__((always_inline))
/* the values, added to a0 / a1 */
static CN_INLINE void FN(plane_sum)(const float *q, long hw, __m512 *a0, __m512 *a1) {
  long i = 0;
  for (; i + 32 <= hw; i += 32) {
    *a0 = _mm512_add_ps(*a0, _mm512_loadu_ps(q + i));
    *a1 = _mm512_add_ps(*a1, _mm512_loadu_ps(q + i + 16));
  }
  for (; i < hw; i += 16) *a0 = _mm512_add_ps(*a0, _mm512_maskz_loadu_ps(FN(tailmask)(hw - i), q + i));
}
/* the squared deviations from vm, added to a0 / a1 */
static CN_INLINE void FN(plane_sqdev)(const float *q, long hw, __m512 vm, __m512 *a0, __m512 *a1) {
  long i = 0;
  for (; i + 32 <= hw; i += 32) {
    const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(q + i), vm), d1 = _mm512_sub_ps(_mm512_loadu_ps(q + i + 16), vm);
    *a0 = _mm512_fmadd_ps(d0, d0, *a0);
    *a1 = _mm512_fmadd_ps(d1, d1, *a1);
  }
  for (; i < hw; i += 16) {
    const __mmask16 k = FN(tailmask)(hw - i);
    const __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, q + i), vm);
    *a0 = _mm512_fmadd_ps(d, d, *a0);
  }
}
/* g and g * (x - m) (g = dy, or with act dy masked where 0 < (x - m) * k + bt (< 6)), added to
 * a0 / a1 and b0 / b1 */
static CN_INLINE void FN(plane_dot2)(const float *g, const float *q, long hw, __m512 vm, __m512 vk, __m512 vb, int act,
                                     __m512 *a0, __m512 *a1, __m512 *b0, __m512 *b1) {
  const __m512 z = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
#define CN_D2_VEC(xv, gv, A, B)                                                                                        \
  do {                                                                                                                 \
    const __m512 e_ = _mm512_sub_ps(xv, vm);                                                                           \
    const __m512 g_ = gv;                                                                                              \
    if (act) {                                                                                                         \
      const __m512 v_ = _mm512_fmadd_ps(e_, vk, vb);                                                                   \
      __mmask16 k_ = _mm512_cmp_ps_mask(v_, z, _CMP_GT_OQ);                                                            \
      if (act == 2) k_ &= _mm512_cmp_ps_mask(v_, six, _CMP_LT_OQ);                                                     \
      A = _mm512_mask_add_ps(A, k_, A, g_);                                                                            \
      B = _mm512_mask3_fmadd_ps(g_, e_, B, k_);                                                                        \
    } else {                                                                                                           \
      A = _mm512_add_ps(A, g_);                                                                                        \
      B = _mm512_fmadd_ps(g_, e_, B);                                                                                  \
    }                                                                                                                  \
  } while (0)
  long i = 0;
  for (; i + 32 <= hw; i += 32) {
    CN_D2_VEC(_mm512_loadu_ps(q + i), _mm512_loadu_ps(g + i), *a0, *b0);
    CN_D2_VEC(_mm512_loadu_ps(q + i + 16), _mm512_loadu_ps(g + i + 16), *a1, *b1);
  }
  for (; i < hw; i += 16) {
    const __mmask16 t = FN(tailmask)(hw - i);
    /* masked-off lanes: x = m, dy = 0 (adds nothing) */
    CN_D2_VEC(_mm512_mask_loadu_ps(vm, t, q + i), _mm512_maskz_loadu_ps(t, g + i), *a0, *b0);
  }
#undef CN_D2_VEC
}
#endif

/* Chan's combination of a group's mean sm and squared deviations sq (nb values) into the running
 * (count, mean, M2) */
static inline void FN(chan_merge)(double *cnt, double *mean, double *m2, double nb, float sm, float sq) {
  const double tot = *cnt + nb, delta = (double)sm - *mean;
  *mean += delta * nb / tot;
  *m2 += (double)sq + delta * delta * *cnt * nb / tot;
  *cnt = tot;
}

/* one group's mean sm and squared deviations sq (np planes stride apart; more: prefetch the
 * plane after the group) */
static ISA_ATTR void FN(group_stats)(const float *x, long hw, long np, long stride, int more, float *sm, float *sq) {
  const double nb = (double)np * (double)hw;
#if defined(ISA_AVX) && LANES == 32
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  for (long p = 0; p < np; p++) {
    const float *q = x + p * stride;
    if (p + 1 < np || more) {
      const char *nq = (const char *)(q + stride);
      for (long b = 0; b < hw * (long)sizeof(float); b += 64) _mm_prefetch(nq + b, _MM_HINT_T0);
    }
    FN(plane_sum)(q, hw, &a0, &a1);
  }
  *sm = (float)(FN(hsum512d)(_mm512_add_ps(a0, a1)) / nb);
  const __m512 vm = _mm512_set1_ps(*sm);
  a0 = _mm512_setzero_ps();
  a1 = a0;
  for (long p = 0; p < np; p++) FN(plane_sqdev)(x + p * stride, hw, vm, &a0, &a1);
  *sq = (float)FN(hsum512d)(_mm512_add_ps(a0, a1));
#else
  (void)more;
  double s = 0.0;
  for (long p = 0; p < np; p++) s += (double)FN(sum)(x + p * stride, hw);
  *sm = (float)(s / nb);
  double d2 = 0.0;
  for (long p = 0; p < np; p++) d2 += (double)FN(sqdev)(x + p * stride, hw, *sm);
  *sq = (float)d2;
#endif
}

/* running (count, mean, M2) of the values, Chan's combination of per-group mean and M2 */
static ISA_ATTR void FN(stats_planes)(const float *x, long hw, long count, long stride, double *cnt, double *mean,
                                      double *m2) {
  const long G = FN(bn_group)(hw);
  for (long p0 = 0; p0 < count; p0 += G) {
    const long np = count - p0 < G ? count - p0 : G;
    float sm, sq;
    FN(group_stats)(x + p0 * stride, hw, np, stride, p0 + np < count, &sm, &sq);
    FN(chan_merge)(cnt, mean, m2, (double)np * (double)hw, sm, sq);
  }
}

#if defined(ISA_AVX) && LANES == 32
/* stats_planes of one group (np <= bn_group planes) for nch adjacent channels at once, walking
 * the group image by image: a row of nch small planes is contiguous, where the per-channel walk
 * reads one line per image and channel. Per channel exactly stats_planes' operations in the same
 * order (two vector partial sums over the planes, then the squared deviations, then the merge). */
#define CN_STATS_BLOCK_MAX 64
static ISA_ATTR void FN(stats_block)(const float *x, long hw, long np, long img_stride, long nch, int more,
                                     double *cnt, double *mean, double *m2) {
  __m512 a0[CN_STATS_BLOCK_MAX], a1[CN_STATS_BLOCK_MAX], vm[CN_STATS_BLOCK_MAX];
  const double nb = (double)np * (double)hw;
  for (long ch = 0; ch < nch; ch++) a0[ch] = a1[ch] = _mm512_setzero_ps();
  for (long p = 0; p < np; p++) {
    const float *row = x + p * img_stride;
    if (p + 1 < np || more) /* the next image's row (more: one follows the group) */
      for (long b = 0; b < nch * hw * (long)sizeof(float); b += 64) _mm_prefetch((const char *)(row + img_stride) + b, _MM_HINT_T0);
    for (long ch = 0; ch < nch; ch++) FN(plane_sum)(row + ch * hw, hw, &a0[ch], &a1[ch]);
  }
  float sm[CN_STATS_BLOCK_MAX];
  for (long ch = 0; ch < nch; ch++) {
    sm[ch] = (float)(FN(hsum512d)(_mm512_add_ps(a0[ch], a1[ch])) / nb);
    vm[ch] = _mm512_set1_ps(sm[ch]);
    a0[ch] = a1[ch] = _mm512_setzero_ps();
  }
  for (long p = 0; p < np; p++) {
    const float *row = x + p * img_stride;
    for (long ch = 0; ch < nch; ch++) FN(plane_sqdev)(row + ch * hw, hw, vm[ch], &a0[ch], &a1[ch]);
  }
  for (long ch = 0; ch < nch; ch++)
    FN(chan_merge)(&cnt[ch], &mean[ch], &m2[ch], nb, sm[ch], (float)FN(hsum512d)(_mm512_add_ps(a0[ch], a1[ch])));
}
#endif

/* sums over the planes of g and g * (x - m), g = dy or (act) dy masked as in dot2_act */
static ISA_ATTR void FN(dot2_planes)(const float *dy, const float *x, long hw, long count, long stride, float m,
                                     float k, float bt, int act, double *sdy, double *sdyx) {
  const long G = FN(bn_group)(hw);
  for (long p0 = 0; p0 < count; p0 += G) {
    const long np = count - p0 < G ? count - p0 : G;
#if defined(ISA_AVX) && LANES == 32
    const __m512 vm = _mm512_set1_ps(m), vk = _mm512_set1_ps(k), vb = _mm512_set1_ps(bt);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    for (long p = p0; p < p0 + np; p++) {
      const float *q = x + p * stride, *g = dy + p * stride;
      if (p + 1 < count) {
        /* planes are far apart (a page or more): fetch the next one while this one is summed,
         * the hardware prefetcher does not cross pages */
        const char *nq = (const char *)(q + stride), *ng = (const char *)(g + stride);
        for (long b = 0; b < hw * (long)sizeof(float); b += 64) {
          _mm_prefetch(nq + b, _MM_HINT_T0);
          _mm_prefetch(ng + b, _MM_HINT_T0);
        }
      }
      FN(plane_dot2)(g, q, hw, vm, vk, vb, act, &a0, &a1, &b0, &b1);
    }
    *sdy += FN(hsum512d)(_mm512_add_ps(a0, a1));
    *sdyx += FN(hsum512d)(_mm512_add_ps(b0, b1));
#else
    for (long p = p0; p < p0 + np; p++) {
      float a, b;
      if (act)
        FN(dot2_act)(dy + p * stride, x + p * stride, hw, m, k, bt, act, &a, &b);
      else
        FN(dot2)(dy + p * stride, x + p * stride, hw, m, &a, &b);
      *sdy += a;
      *sdyx += b;
    }
#endif
  }
}

#if defined(ISA_AVX) && LANES == 32
#ifndef CN_DOT2_AHEAD
#define CN_DOT2_AHEAD 3
#endif
/* dot2_planes of one group (np <= bn_group planes) for nch adjacent channels at once (m, k, bt:
 * theirs), image by image as stats_block, per channel the same operations in the same order */
static ISA_ATTR void FN(dot2_block)(const float *dy, const float *x, long hw, long np, long img_stride, long nch,
                                    int more, const float *m, const float *k, const float *bt, int act, double *sdy,
                                    double *sdyx) {
  __m512 a0[CN_STATS_BLOCK_MAX], a1[CN_STATS_BLOCK_MAX], b0[CN_STATS_BLOCK_MAX], b1[CN_STATS_BLOCK_MAX];
  for (long ch = 0; ch < nch; ch++) a0[ch] = a1[ch] = b0[ch] = b1[ch] = _mm512_setzero_ps();
  for (long p = 0; p < np; p++) {
    const float *xr = x + p * img_stride, *gr = dy + p * img_stride;
    /* the row CN_DOT2_AHEAD images ahead (3: 3-4 % faster than the next one on 4x4 / 8x8
     * planes, whose rows of a few KB are a page or more apart) */
    if (p + CN_DOT2_AHEAD < np || more)
      for (long b = 0; b < nch * hw * (long)sizeof(float); b += 64) {
        _mm_prefetch((const char *)(xr + CN_DOT2_AHEAD * img_stride) + b, _MM_HINT_T0);
        _mm_prefetch((const char *)(gr + CN_DOT2_AHEAD * img_stride) + b, _MM_HINT_T0);
      }
    for (long ch = 0; ch < nch; ch++) {
      const float *q = xr + ch * hw, *g = gr + ch * hw;
      const __m512 vm = _mm512_set1_ps(m[ch]), vk = _mm512_set1_ps(act ? k[ch] : 0.0f),
                   vb = _mm512_set1_ps(act ? bt[ch] : 0.0f);
      FN(plane_dot2)(g, q, hw, vm, vk, vb, act, &a0[ch], &a1[ch], &b0[ch], &b1[ch]);
    }
  }
  for (long ch = 0; ch < nch; ch++) {
    sdy[ch] += FN(hsum512d)(_mm512_add_ps(a0[ch], a1[ch]));
    sdyx[ch] += FN(hsum512d)(_mm512_add_ps(b0[ch], b1[ch]));
  }
}

/* dot2_planes' accumulation of one plane into a group's accumulators kept in memory (acc: a0 a1
 * b0 b1, 64 floats): for a kernel that produces the planes of a group one at a time, apart
 * (cn_dw_backward_both); the same operations in the same order */
static ISA_ATTR void FN(dot2_acc)(const float *dy, const float *x, long hw, float m, float k, float bt, int act,
                                  float *acc) {
  __m512 a0 = _mm512_loadu_ps(acc), a1 = _mm512_loadu_ps(acc + 16), b0 = _mm512_loadu_ps(acc + 32),
         b1 = _mm512_loadu_ps(acc + 48);
  FN(plane_dot2)(dy, x, hw, _mm512_set1_ps(m), _mm512_set1_ps(k), _mm512_set1_ps(bt), act, &a0, &a1, &b0, &b1);
  _mm512_storeu_ps(acc, a0);
  _mm512_storeu_ps(acc + 16, a1);
  _mm512_storeu_ps(acc + 32, b0);
  _mm512_storeu_ps(acc + 48, b1);
}
/* the group's two sums from dot2_acc's accumulators, as dot2_planes reduces them (floats: what
 * dot2_planes adds to its double sums) */
static ISA_ATTR void FN(dot2_fin)(const float *acc, float *sdy, float *sdyx) {
  *sdy = (float)FN(hsum512d)(_mm512_add_ps(_mm512_loadu_ps(acc), _mm512_loadu_ps(acc + 16)));
  *sdyx = (float)FN(hsum512d)(_mm512_add_ps(_mm512_loadu_ps(acc + 32), _mm512_loadu_ps(acc + 48)));
}
#endif

/* ---- elementwise -------------------------------------------------------------------------------- */

static ISA_ATTR void FN(ew)(int op, const float *CN_RESTRICT a, const float *CN_RESTRICT b, float *CN_RESTRICT y,
                            long n, float s) {
  switch (op) {
  case CN_EW_RELU:
    for (long i = 0; i < n; i++) y[i] = (a[i] > 0.0f || a[i] != a[i]) ? a[i] : 0.0f; /* NaN passes, -0 -> 0 */
    break;
  case CN_EW_RELU6:
    for (long i = 0; i < n; i++) {
      const float v = a[i];
      y[i] = v > 0.0f ? (v > 6.0f ? 6.0f : v) : (v != v ? v : 0.0f);
    }
    break;
  case CN_EW_RELU_BW: /* a = dy, b = y */
    for (long i = 0; i < n; i++) y[i] = b[i] > 0.0f ? a[i] : 0.0f;
    break;
  case CN_EW_RELU6_BW:
    for (long i = 0; i < n; i++) y[i] = (b[i] > 0.0f && b[i] < 6.0f) ? a[i] : 0.0f;
    break;
  case CN_EW_ADD:
    for (long i = 0; i < n; i++) y[i] = a[i] + b[i];
    break;
  case CN_EW_MUL:
    for (long i = 0; i < n; i++) y[i] = a[i] * b[i];
    break;
  case CN_EW_SCALE:
    for (long i = 0; i < n; i++) y[i] = a[i] * s;
    break;
  default:
    break;
  }
}

static ISA_ATTR void FN(add_inplace)(float *CN_RESTRICT acc, const float *CN_RESTRICT a, long n) {
  for (long i = 0; i < n; i++) acc[i] += a[i];
}

/* ---- optimisers --------------------------------------------------------------------------------- */

static ISA_ATTR void FN(adam)(float *CN_RESTRICT p, const float *CN_RESTRICT g, float *CN_RESTRICT m,
                              float *CN_RESTRICT v, long n, float b1, float b2, float omb1, float omb2, float wd,
                              float step_size, float inv_bc2sqrt, float eps) {
  if (wd != 0.0f) {
    for (long i = 0; i < n; i++) {
      const float gi = g[i] + wd * p[i];
      const float mi = b1 * m[i] + omb1 * gi;
      const float vi = b2 * v[i] + omb2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] - step_size * mi / (sqrtf(vi) * inv_bc2sqrt + eps);
    }
  } else {
    for (long i = 0; i < n; i++) {
      const float gi = g[i];
      const float mi = b1 * m[i] + omb1 * gi;
      const float vi = b2 * v[i] + omb2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] - step_size * mi / (sqrtf(vi) * inv_bc2sqrt + eps);
    }
  }
}

static ISA_ATTR void FN(sgd)(float *CN_RESTRICT p, const float *CN_RESTRICT g, float *CN_RESTRICT buf, long n,
                             float lr, float mom, float omd, float wd, int nesterov, int first) {
  if (!buf) {
    for (long i = 0; i < n; i++) p[i] = p[i] - lr * (wd != 0.0f ? g[i] + wd * p[i] : g[i]);
    return;
  }
  for (long i = 0; i < n; i++) {
    const float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
    const float bi = first ? d : mom * buf[i] + omd * d;
    buf[i] = bi;
    const float u = nesterov ? d + mom * bi : bi;
    p[i] = p[i] - lr * u;
  }
}

/* ---- transposing pack: dst[k*stride + r] = rows[r][k] (r < nrows), 0 for nrows <= r < stride -- */

#if defined(ISA_AVX)
/* 8x8 transpose: rows s0..s7 (8 floats each, at offset k) -> d[i*stride + 0..7] = column i */
static ISA_ATTR inline void FN(tr8x8)(const float *const *src, long k, float *d, int stride) {
  __m256 r0 = _mm256_loadu_ps(src[0] + k), r1 = _mm256_loadu_ps(src[1] + k);
  __m256 r2 = _mm256_loadu_ps(src[2] + k), r3 = _mm256_loadu_ps(src[3] + k);
  __m256 r4 = _mm256_loadu_ps(src[4] + k), r5 = _mm256_loadu_ps(src[5] + k);
  __m256 r6 = _mm256_loadu_ps(src[6] + k), r7 = _mm256_loadu_ps(src[7] + k);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d + 0 * stride, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + 1 * stride, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * stride, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * stride, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * stride, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * stride, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * stride, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * stride, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

/* transposing pack: dst[k*stride + r] = rows[r][k] (r < nrows), 0 for nrows <= r < stride */
static ISA_ATTR void FN(transpose_pack)(const float *const *rows, int nrows, long len, float *CN_RESTRICT dst,
                                        int stride) {
  if (nrows < stride)
    for (long k = 0; k < len; k++)
      for (int r = nrows; r < stride; r++) dst[k * stride + r] = 0.0f;
  int r0 = 0;
#if defined(ISA_AVX)
  for (; r0 + 8 <= nrows; r0 += 8) {
    long k = 0;
    for (; k + 8 <= len; k += 8) FN(tr8x8)(rows + r0, k, dst + k * stride + r0, stride);
    for (; k < len; k++)
      for (int r = r0; r < r0 + 8; r++) dst[k * stride + r] = rows[r][k];
  }
#endif
  if (r0 >= nrows) return;
  long k = 0;
  for (; k + 8 <= len; k += 8) {
    for (int r = r0; r < nrows; r++) {
      const float *s = rows[r] + k;
      float *d = dst + k * stride + r;
      d[0] = s[0];
      d[stride] = s[1];
      d[2 * stride] = s[2];
      d[3 * stride] = s[3];
      d[4 * stride] = s[4];
      d[5 * stride] = s[5];
      d[6 * stride] = s[6];
      d[7 * stride] = s[7];
    }
  }
  for (; k < len; k++)
    for (int r = r0; r < nrows; r++) dst[k * stride + r] = rows[r][k];
}

/* ---- depthwise convolution, one plane ----------------------------------------------------------
 * A strided convolution of a zero-padded plane is split into sh x sw "phase planes"
 * P[py][px](r, c) = xpad(r*sh + py, c*sw + px), each Hq x Wq with Hq = oh + (kh-1)/sh and
 * Wq = ow + (kw-1)/sw. Every tap then reads one phase at a constant offset, so the whole output
 * plane is computed as unit-stride loops over t = oy*Wq + ox (columns ow..Wq-1 are junk and
 * dropped). Loops run to T rounded up to LANES; each phase is followed by zeroed slack. */

#define DW_SLACK (LANES > 16 ? LANES : 16)

static inline long FN(round_lanes)(long t) { return (t + LANES - 1) / LANES * LANES; }
static inline long FN(round_vec)(long t) { return (t + 15) / 16 * 16; }

static ISA_ATTR void FN(make_phases)(const float *CN_RESTRICT x, long H, long W, long sh, long sw, long ph, long pw,
                                     long Hq, long Wq, long pstride, float *CN_RESTRICT dst) {
  for (long py = 0; py < sh; py++)
    for (long px = 0; px < sw; px++) {
      float *d = dst + (py * sw + px) * pstride;
      /* valid columns: 0 <= c*sw + px - pw < W */
      long clo = 0, chi = Wq;
      while (clo < Wq && clo * sw + px - pw < 0) clo++;
      while (chi > clo && (chi - 1) * sw + px - pw >= W) chi--;
      for (long r = 0; r < Hq; r++) {
        float *CN_RESTRICT drow = d + r * Wq;
        const long iy = r * sh + py - ph;
        if (iy < 0 || iy >= H) {
          for (long c = 0; c < Wq; c++) drow[c] = 0.0f;
          continue;
        }
        const float *CN_RESTRICT srow = x + iy * W + px - pw;
        for (long c = 0; c < clo; c++) drow[c] = 0.0f;
        if (sw == 1)
          for (long c = clo; c < chi; c++) drow[c] = srow[c];
        else if (sw == 2)
          for (long c = clo; c < chi; c++) drow[c] = srow[2 * c];
        else
          for (long c = clo; c < chi; c++) drow[c] = srow[c * sw];
        for (long c = chi; c < Wq; c++) drow[c] = 0.0f;
      }
      for (long t = Hq * Wq; t < pstride; t++) d[t] = 0.0f;
    }
}

/* o[r*ostride + t] (=|+=) bias + sum_taps w * phases[r*Wq + t + tap offset], r < rows, t < len */
static ISA_ATTR void FN(dw_rows)(const float *ph_buf, long ps, long Wq, const float *wk, long kh, long kw, long sh,
                                 long sw, float bias, int accumulate, float *o, long ostride, long rows, long len) {
  if (kh == 3 && kw == 3 && sh == 1 && sw == 1) {
    const float w0 = wk[0], w1 = wk[1], w2 = wk[2], w3 = wk[3], w4 = wk[4], w5 = wk[5], w6 = wk[6], w7 = wk[7], w8 = wk[8];
    for (long r = 0; r < rows; r++) {
      const float *CN_RESTRICT p0 = ph_buf + r * Wq, *CN_RESTRICT p1 = p0 + Wq, *CN_RESTRICT p2 = p1 + Wq;
      float *CN_RESTRICT or_ = o + r * ostride;
      if (accumulate)
        for (long t = 0; t < len; t++)
          or_[t] += w0 * p0[t] + w1 * p0[t + 1] + w2 * p0[t + 2] + w3 * p1[t] + w4 * p1[t + 1] + w5 * p1[t + 2] +
                    w6 * p2[t] + w7 * p2[t + 1] + w8 * p2[t + 2];
      else
        for (long t = 0; t < len; t++)
          or_[t] = bias + w0 * p0[t] + w1 * p0[t + 1] + w2 * p0[t + 2] + w3 * p1[t] + w4 * p1[t + 1] + w5 * p1[t + 2] +
                   w6 * p2[t] + w7 * p2[t + 1] + w8 * p2[t + 2];
    }
    return;
  }
  if (kh == 3 && kw == 3 && sh == 2 && sw == 2) {
    const float w0 = wk[0], w1 = wk[1], w2 = wk[2], w3 = wk[3], w4 = wk[4], w5 = wk[5], w6 = wk[6], w7 = wk[7], w8 = wk[8];
    for (long r = 0; r < rows; r++) {
      const float *CN_RESTRICT e = ph_buf + r * Wq, *CN_RESTRICT f = e + ps, *CN_RESTRICT g = e + 2 * ps,
                               *CN_RESTRICT h = e + 3 * ps;
      float *CN_RESTRICT or_ = o + r * ostride;
      if (accumulate)
        for (long t = 0; t < len; t++)
          or_[t] += w0 * e[t] + w2 * e[t + 1] + w6 * e[t + Wq] + w8 * e[t + Wq + 1] + w1 * f[t] + w7 * f[t + Wq] +
                    w3 * g[t] + w5 * g[t + 1] + w4 * h[t];
      else
        for (long t = 0; t < len; t++)
          or_[t] = bias + w0 * e[t] + w2 * e[t + 1] + w6 * e[t + Wq] + w8 * e[t + Wq + 1] + w1 * f[t] + w7 * f[t + Wq] +
                   w3 * g[t] + w5 * g[t + 1] + w4 * h[t];
    }
    return;
  }
  for (long r = 0; r < rows; r++) {
    float *CN_RESTRICT or_ = o + r * ostride;
    if (!accumulate)
      for (long t = 0; t < len; t++) or_[t] = bias;
    for (long ky = 0; ky < kh; ky++)
      for (long kx = 0; kx < kw; kx++) {
        const float wv = wk[ky * kw + kx];
        const float *CN_RESTRICT q = ph_buf + ((ky % sh) * sw + kx % sw) * ps + (r + ky / sh) * Wq + kx / sw;
        for (long t = 0; t < len; t++) or_[t] += wv * q[t];
      }
  }
}

/* y (oh x ow) (=|+=) bias + sum_taps wk * x for one plane x (H x W, zero padding ph, pw).
 * ph_buf: scratch of sh*sw*(Hq*Wq + DW_SLACK) floats; tmp: scratch of round_lanes(T) floats.
 * Wide planes are computed row by row straight into y; narrow ones as one flattened run. */
static ISA_ATTR void FN(dw_plane)(const float *x, long H, long W, const float *wk, float bias, float *y, long kh, long kw,
                                  long sh, long sw, long ph, long pw, long oh, long ow, int accumulate, float *ph_buf,
                                  float *tmp) {
  const long Hq = oh + (kh - 1) / sh, Wq = ow + (kw - 1) / sw, ps = Hq * Wq + DW_SLACK;
  FN(make_phases)(x, H, W, sh, sw, ph, pw, Hq, Wq, ps, ph_buf);
  if (ow >= 16) {
    FN(dw_rows)(ph_buf, ps, Wq, wk, kh, kw, sh, sw, bias, accumulate, y, ow, oh, ow);
    return;
  }
  const long T = (oh - 1) * Wq + ow, Tr = FN(round_vec)(T);
  FN(dw_rows)(ph_buf, ps, Wq, wk, kh, kw, sh, sw, 0.0f, 0, tmp, Tr, 1, Tr);
  for (long oy = 0; oy < oh; oy++) {
    float *CN_RESTRICT yr = y + oy * ow;
    const float *CN_RESTRICT orow = tmp + oy * Wq;
    if (accumulate)
      for (long ox = 0; ox < ow; ox++) yr[ox] += orow[ox];
    else
      for (long ox = 0; ox < ow; ox++) yr[ox] = orow[ox] + bias;
  }
}

/* dyp (max(round_lanes(T), round_vec(T)) floats) = dy (oh x ow) laid out with row stride Wq,
 * zeros elsewhere */
static ISA_ATTR void FN(spread_rows)(const float *CN_RESTRICT dy, long oh, long ow, long Wq, float *CN_RESTRICT dyp) {
  const long T = (oh - 1) * Wq + ow;
  long Tr = FN(round_lanes)(T);
  if (FN(round_vec)(T) > Tr) Tr = FN(round_vec)(T);
  for (long oy = 0; oy < oh; oy++) {
    float *d = dyp + oy * Wq;
    const float *s = dy + oy * ow;
    for (long ox = 0; ox < ow; ox++) d[ox] = s[ox];
    if (oy < oh - 1)
      for (long ox = ow; ox < Wq; ox++) d[ox] = 0.0f;
  }
  for (long t = T; t < Tr; t++) dyp[t] = 0.0f;
}

/* Weight-gradient taps summed over `count` plane pairs (x planes every x_stride floats, dy planes
 * every dy_stride): acc[tap] += sum over planes of dy * x_tap. Lanes accumulate across planes
 * and are reduced once. */
static ISA_ATTR void FN(dw_wgrad_planes)(const float *dy, long dy_stride, const float *x, long x_stride, long count,
                                         long H, long W, long kh, long kw, long sh, long sw, long ph, long pw, long oh,
                                         long ow, float *ph_buf, float *dyp, double *acc) {
  const long Hq = oh + (kh - 1) / sh, Wq = ow + (kw - 1) / sw, ps = Hq * Wq + DW_SLACK;
  const long Tr = FN(round_lanes)((oh - 1) * Wq + ow);
  if (kh == 3 && kw == 3 && ((sh == 1 && sw == 1) || (sh == 2 && sw == 2))) {
    const float *q[9];
    for (int ky = 0; ky < 3; ky++)
      for (int kx = 0; kx < 3; kx++)
        q[ky * 3 + kx] = ph_buf + ((ky % sh) * sw + kx % sw) * ps + (ky / sh) * Wq + kx / sw;
    const float *CN_RESTRICT q0 = q[0], *CN_RESTRICT q1 = q[1], *CN_RESTRICT q2 = q[2], *CN_RESTRICT q3 = q[3],
                             *CN_RESTRICT q4 = q[4], *CN_RESTRICT q5 = q[5], *CN_RESTRICT q6 = q[6],
                             *CN_RESTRICT q7 = q[7], *CN_RESTRICT q8 = q[8];
    float a0[LANES], a1[LANES], a2[LANES], a3[LANES], a4[LANES], a5[LANES], a6[LANES], a7[LANES], a8[LANES];
    LANE_LOOP a0[l] = a1[l] = a2[l] = a3[l] = a4[l] = a5[l] = a6[l] = a7[l] = a8[l] = 0.0f;
    for (long i = 0; i < count; i++) {
      FN(make_phases)(x + i * x_stride, H, W, sh, sw, ph, pw, Hq, Wq, ps, ph_buf);
      FN(spread_rows)(dy + i * dy_stride, oh, ow, Wq, dyp);
      for (long t = 0; t < Tr; t += LANES) LANE_LOOP {
          const float g = dyp[t + l];
          a0[l] += g * q0[t + l];
          a1[l] += g * q1[t + l];
          a2[l] += g * q2[t + l];
          a3[l] += g * q3[t + l];
          a4[l] += g * q4[t + l];
          a5[l] += g * q5[t + l];
          a6[l] += g * q6[t + l];
          a7[l] += g * q7[t + l];
          a8[l] += g * q8[t + l];
        }
    }
    acc[0] += FN(hsum)(a0);
    acc[1] += FN(hsum)(a1);
    acc[2] += FN(hsum)(a2);
    acc[3] += FN(hsum)(a3);
    acc[4] += FN(hsum)(a4);
    acc[5] += FN(hsum)(a5);
    acc[6] += FN(hsum)(a6);
    acc[7] += FN(hsum)(a7);
    acc[8] += FN(hsum)(a8);
    return;
  }
  for (long i = 0; i < count; i++) {
    FN(make_phases)(x + i * x_stride, H, W, sh, sw, ph, pw, Hq, Wq, ps, ph_buf);
    FN(spread_rows)(dy + i * dy_stride, oh, ow, Wq, dyp);
    for (long ky = 0; ky < kh; ky++)
      for (long kx = 0; kx < kw; kx++)
        acc[ky * kw + kx] += FN(dot)(dyp, ph_buf + ((ky % sh) * sw + kx % sw) * ps + (ky / sh) * Wq + kx / sw, Tr);
  }
}

/* Input gradient of one plane pair, accumulated into phase planes (zeroed by the caller):
 * phase(ky%sh, kx%sw)[t + (ky/sh)*Wq + kx/sw] += wk[ky][kx] * dyp[t]. */
static ISA_ATTR void FN(dw_dgrad_plane)(const float *dy, const float *wk, float *ph_buf, long kh, long kw, long sh,
                                        long sw, long oh, long ow, float *dyp) {
  const long Hq = oh + (kh - 1) / sh, Wq = ow + (kw - 1) / sw, ps = Hq * Wq + DW_SLACK;
  FN(spread_rows)(dy, oh, ow, Wq, dyp);
  const long Tr = FN(round_vec)((oh - 1) * Wq + ow);
  for (long ky = 0; ky < kh; ky++)
    for (long kx = 0; kx < kw; kx++) {
      const float wv = wk[ky * kw + kx];
      float *CN_RESTRICT q = ph_buf + ((ky % sh) * sw + kx % sw) * ps + (ky / sh) * Wq + kx / sw;
      const float *CN_RESTRICT g = dyp;
      for (long t = 0; t < Tr; t++) q[t] += wv * g[t];
    }
}

static void FN(fill_table)(cn_ktab *t) {
  t->sum = FN(sum);
  t->seg_stats = FN(seg_stats);
  t->dot2 = FN(dot2);
  t->bn_apply = FN(bn_apply);
  t->bn_bw_apply = FN(bn_bw_apply);
  t->bn_apply_act = FN(bn_apply_act);
  t->bn_apply_act_v = FN(bn_apply_act_v);
  t->epi_rows = FN(epi_rows);
  t->stats_planes = FN(stats_planes);
  t->group_stats = FN(group_stats);
  t->chan_merge = FN(chan_merge);
#if defined(ISA_AVX) && LANES == 32
  t->stats_block = FN(stats_block);
  t->dot2_block = FN(dot2_block);
  t->dot2_acc = FN(dot2_acc);
  t->dot2_fin = FN(dot2_fin);
#else
  t->stats_block = NULL;
  t->dot2_block = NULL;
  t->dot2_acc = NULL;
  t->dot2_fin = NULL;
#endif
  t->dot2_planes = FN(dot2_planes);
  t->dot2_act = FN(dot2_act);
  t->bn_bw_apply_act = FN(bn_bw_apply_act);
  t->bn_bw_apply_row = FN(bn_bw_apply_row);
#if defined(ISA_AVX) && LANES == 32
  t->bn_bw_apply_act_v = FN(bn_bw_apply_act_v);
#else
  t->bn_bw_apply_act_v = NULL;
#endif
  t->ew = FN(ew);
  t->add_inplace = FN(add_inplace);
  t->adam = FN(adam);
  t->sgd = FN(sgd);
  t->transpose_pack = FN(transpose_pack);
  t->make_phases = FN(make_phases);
  t->dw_plane = FN(dw_plane);
  t->dw_wgrad_planes = FN(dw_wgrad_planes);
  t->dw_dgrad_plane = FN(dw_dgrad_plane);
  t->lanes = DW_SLACK; /* phase-plane slack (>= LANES) */
}

#undef LANE_LOOP
#undef CN_BN_VAL
#undef CN_ACT_PASS
