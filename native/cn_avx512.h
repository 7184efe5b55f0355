/* AVX-512 pieces shared by the kernel files (gemm.c, conv.c, conv_direct.c, dw_avx512.c): the
 * target attribute, and the inference epilogue's arithmetic on one vector, so that every fused
 * path computes exactly what the separate batch norm and activation passes compute. */
#ifndef CONVNETS_CN_AVX512_H
#define CONVNETS_CN_AVX512_H

#include "cn.h"

#if defined(CN_X86)
#include <immintrin.h>

#define CN_A512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))

/* 3x3, stride 1, padding 1 on 4x4 planes (one vector each): tap q = (ky, kx) of output lane o
 * reads input lane o + CN_W4_OFF(q), inside the plane where CN_W4_K(q) has o */
#define CN_W4_K(q) ((__mmask16)(((q) % 3 == 0 ? 0xEEEE : (q) % 3 == 2 ? 0x7777 : 0xFFFF) & \
                                ((q) / 3 == 0 ? 0xFFF0 : (q) / 3 == 2 ? 0x0FFF : 0xFFFF)))
#define CN_W4_OFF(q) (((q) / 3 - 1) * 4 + (q) % 3 - 1)

/* batch norm as the separate pass (CN_BN_VAL): (v - m) * k + bt with one rounding */
static CN_A512 inline __m512 cn512_bn(__m512 v, __m512 m, __m512 k, __m512 bt) {
  return _mm512_fmadd_ps(_mm512_sub_ps(v, m), k, bt);
}

/* act 1 ReLU, 2 ReLU6, 0 none, with the separate kernels' rules: NaN passes (min(6, NaN) is
 * NaN), -0 becomes 0 */
static CN_A512 inline __m512 cn512_act(__m512 v, int act) {
  if (!act) return v;
  const __mmask16 keep = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_maskz_mov_ps(keep, act == 2 ? _mm512_min_ps(_mm512_set1_ps(6.0f), v) : v);
}

/* The input transform of a convolution (cn_intf): act(fma(v - m, k, bt)) with ReLU/ReLU6 as
 * max(0, v) then min(6, v) in the operand order that lets NaN through. It differs from
 * cn512_act only in keeping -0 as -0, which no convolution can see: its sums start from +0, and
 * +0 + -0 == +0. */
static CN_A512 inline __m512 cn512_tf(__m512 v, __m512 m, __m512 k, __m512 bt, int act) {
  v = cn512_bn(v, m, k, bt);
  if (act) v = _mm512_max_ps(_mm512_setzero_ps(), v); /* max(0, NaN) = NaN (second operand) */
  if (act == 2) v = _mm512_min_ps(_mm512_set1_ps(6.0f), v);
  return v;
}
#endif

#endif
