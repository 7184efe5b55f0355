// The reference backend: plain TypeScript loops, written to be obviously correct.
// It is the oracle the fast backends are tested against. Sums are accumulated in
// JavaScript numbers (float64) and rounded to float32 when stored.
import { inputTransformApplies, type Act, type AdamHyper, type Backend, type BatchNormGrads, type BatchNormStats, type BatchNormTrainResult, type ConvEpilogue, type ConvGeom, type F32, type InputTransform, type PoolGeom, type SgdHyper } from './backend.js';

// ---- convolution ----------------------------------------------------------------------

/** Output columns [ox0, ox1) whose input column ox*stride - pad + k lies inside [0, size). */
function validRange(k: number, stride: number, pad: number, size: number, outSize: number): [number, number] {
  let ox0 = 0;
  while (ox0 < outSize && ox0 * stride - pad + k < 0) ox0++;
  let ox1 = outSize;
  while (ox1 > ox0 && (ox1 - 1) * stride - pad + k >= size) ox1--;
  return [ox0, ox1];
}

// x: (N, C, H, W), w: (O, C/g, KH, KW), b: (O) -> y: (N, O, OH, OW)
function conv2d(x: F32, w: F32, b: F32 | null, g: ConvGeom): F32 {
  const { n, c, h, w: W, o, kh, kw, sh, sw, ph, pw, groups, oh, ow } = g;
  const cg = c / groups; // input channels per group
  const og = o / groups; // output channels per group
  const y = new Float32Array(n * o * oh * ow);
  const acc = new Float64Array(oh * ow);
  for (let ni = 0; ni < n; ni++) {
    for (let oc = 0; oc < o; oc++) {
      const grp = Math.floor(oc / og);
      acc.fill(b ? b[oc] : 0);
      for (let ci = 0; ci < cg; ci++) {
        const xc = ((ni * c + grp * cg + ci) * h) * W; // start of input plane
        for (let ky = 0; ky < kh; ky++) {
          for (let kx = 0; kx < kw; kx++) {
            const wv = w[((oc * cg + ci) * kh + ky) * kw + kx];
            const [ox0, ox1] = validRange(kx, sw, pw, W, ow);
            for (let oy = 0; oy < oh; oy++) {
              const iy = oy * sh - ph + ky;
              if (iy < 0 || iy >= h) continue;
              const row = xc + iy * W - pw + kx;
              for (let ox = ox0; ox < ox1; ox++) acc[oy * ow + ox] += wv * x[row + ox * sw];
            }
          }
        }
      }
      y.set(acc, (ni * o + oc) * oh * ow);
    }
  }
  return y;
}

// dy: (N, O, OH, OW), w: (O, C/g, KH, KW) -> dx: (N, C, H, W)
function conv2dBackwardInput(dy: F32, w: F32, g: ConvGeom): F32 {
  const { n, c, h, w: W, o, kh, kw, sh, sw, ph, pw, groups, oh, ow } = g;
  const cg = c / groups;
  const og = o / groups;
  const dx = new Float32Array(n * c * h * W);
  const acc = new Float64Array(h * W);
  for (let ni = 0; ni < n; ni++) {
    for (let ic = 0; ic < c; ic++) {
      const grp = Math.floor(ic / cg);
      const ci = ic - grp * cg;
      acc.fill(0);
      for (let oj = 0; oj < og; oj++) {
        const oc = grp * og + oj;
        const dyp = (ni * o + oc) * oh * ow;
        for (let ky = 0; ky < kh; ky++) {
          for (let kx = 0; kx < kw; kx++) {
            const wv = w[((oc * cg + ci) * kh + ky) * kw + kx];
            const [ox0, ox1] = validRange(kx, sw, pw, W, ow);
            for (let oy = 0; oy < oh; oy++) {
              const iy = oy * sh - ph + ky;
              if (iy < 0 || iy >= h) continue;
              const row = iy * W - pw + kx;
              for (let ox = ox0; ox < ox1; ox++) acc[row + ox * sw] += wv * dy[dyp + oy * ow + ox];
            }
          }
        }
      }
      dx.set(acc, (ni * c + ic) * h * W);
    }
  }
  return dx;
}

// dy: (N, O, OH, OW), x: (N, C, H, W) -> dw: (O, C/g, KH, KW)
function conv2dBackwardWeight(dy: F32, x: F32, g: ConvGeom): F32 {
  const { n, c, h, w: W, o, kh, kw, sh, sw, ph, pw, groups, oh, ow } = g;
  const cg = c / groups;
  const og = o / groups;
  const dw = new Float32Array(o * cg * kh * kw);
  for (let oc = 0; oc < o; oc++) {
    const grp = Math.floor(oc / og);
    for (let ci = 0; ci < cg; ci++) {
      for (let ky = 0; ky < kh; ky++) {
        for (let kx = 0; kx < kw; kx++) {
          let s = 0;
          const [ox0, ox1] = validRange(kx, sw, pw, W, ow);
          for (let ni = 0; ni < n; ni++) {
            const xc = (ni * c + grp * cg + ci) * h * W;
            const dyp = (ni * o + oc) * oh * ow;
            for (let oy = 0; oy < oh; oy++) {
              const iy = oy * sh - ph + ky;
              if (iy < 0 || iy >= h) continue;
              const row = xc + iy * W - pw + kx;
              for (let ox = ox0; ox < ox1; ox++) s += dy[dyp + oy * ow + ox] * x[row + ox * sw];
            }
          }
          dw[((oc * cg + ci) * kh + ky) * kw + kx] = s;
        }
      }
    }
  }
  return dw;
}

// ---- batch norm -------------------------------------------------------------------------

/** Mean and biased variance of channel ci of x: (N, C, HW), in float64 (two passes). */
function channelMeanVar(x: F32, n: number, c: number, hw: number, ci: number): [number, number] {
  const count = n * hw;
  let s = 0;
  for (let ni = 0; ni < n; ni++) {
    const p = (ni * c + ci) * hw;
    for (let i = 0; i < hw; i++) s += x[p + i];
  }
  const m = s / count;
  let ss = 0;
  for (let ni = 0; ni < n; ni++) {
    const p = (ni * c + ci) * hw;
    for (let i = 0; i < hw; i++) {
      const d = x[p + i] - m;
      ss += d * d;
    }
  }
  return [m, ss / count];
}

// x: (N, C, HW) -> y, mean, biased variance, invstd
function batchNormTrain(x: F32, weight: F32 | null, bias: F32 | null, n: number, c: number, hw: number, eps: number): BatchNormTrainResult {
  const y = new Float32Array(x.length);
  const mean = new Float32Array(c);
  const varBiased = new Float32Array(c);
  const invstd = new Float32Array(c);
  for (let ci = 0; ci < c; ci++) {
    const [m, v] = channelMeanVar(x, n, c, hw, ci);
    const is = 1 / Math.sqrt(v + eps);
    mean[ci] = m;
    varBiased[ci] = v;
    invstd[ci] = is;
    const gm = weight ? weight[ci] : 1;
    const bt = bias ? bias[ci] : 0;
    for (let ni = 0; ni < n; ni++) {
      const p = (ni * c + ci) * hw;
      for (let i = 0; i < hw; i++) y[p + i] = (x[p + i] - m) * is * gm + bt;
    }
  }
  return { y, mean, varBiased, invstd };
}

function batchNormEval(x: F32, mean: F32, varRunning: F32, weight: F32 | null, bias: F32 | null, n: number, c: number, hw: number, eps: number): F32 {
  const y = new Float32Array(x.length);
  for (let ci = 0; ci < c; ci++) {
    const is = 1 / Math.sqrt(varRunning[ci] + eps);
    const m = mean[ci];
    const gm = weight ? weight[ci] : 1;
    const bt = bias ? bias[ci] : 0;
    for (let ni = 0; ni < n; ni++) {
      const p = (ni * c + ci) * hw;
      for (let i = 0; i < hw; i++) y[p + i] = (x[p + i] - m) * is * gm + bt;
    }
  }
  return y;
}

// The statistics of batchNormTrain alone.
function batchNormStats(x: F32, n: number, c: number, hw: number, eps: number): BatchNormStats {
  const mean = new Float32Array(c);
  const varBiased = new Float32Array(c);
  const invstd = new Float32Array(c);
  for (let ci = 0; ci < c; ci++) {
    const [m, v] = channelMeanVar(x, n, c, hw, ci);
    mean[ci] = m;
    varBiased[ci] = v;
    invstd[ci] = 1 / Math.sqrt(v + eps);
  }
  return { mean, varBiased, invstd };
}

/** The normalised value before the activation, rounded to float32 like a stored output. */
function bnValue(x: number, m: number, k: number, bt: number): number {
  return Math.fround((x - m) * k + bt);
}

function applyAct(v: number, act: Act): number {
  if (act === 1) return v > 0 ? v : Number.isNaN(v) ? v : 0;
  if (act === 2) return Number.isNaN(v) ? v : Math.min(Math.max(v, 0), 6);
  return v;
}

/** Whether the activation passes the gradient at pre-activation value v. */
function actPasses(v: number, act: Act): boolean {
  return act === 2 ? v > 0 && v < 6 : v > 0;
}

// y = act((x - mean) * scale + shift (+ res))
function batchNormApply(x: F32, mean: F32, scale: F32, shift: F32, res: F32 | null, n: number, c: number, hw: number, act: Act): F32 {
  if (res) checkSame(x, res, 'batchNormApply');
  const y = new Float32Array(x.length);
  for (let ni = 0; ni < n; ni++) {
    for (let ci = 0; ci < c; ci++) {
      const p = (ni * c + ci) * hw;
      const m = mean[ci];
      const k = scale[ci];
      const bt = shift[ci];
      for (let i = 0; i < hw; i++) {
        let v = bnValue(x[p + i], m, k, bt);
        if (res) v = Math.fround(res[p + i] + v);
        y[p + i] = applyAct(v, act);
      }
    }
  }
  return y;
}

// Backward of act(batch norm): mask dy by the activation of the recomputed pre-activation value,
// then the ordinary batch-norm backward.
function batchNormActBackward(dy: F32, x: F32, mean: F32, invstd: F32, weight: F32 | null, scale: F32, shift: F32, n: number, c: number, hw: number, act: Act): BatchNormGrads {
  checkSame(dy, x, 'batchNormActBackward');
  let g = dy;
  if (act !== 0) {
    g = new Float32Array(dy.length);
    for (let ni = 0; ni < n; ni++) {
      for (let ci = 0; ci < c; ci++) {
        const p = (ni * c + ci) * hw;
        for (let i = 0; i < hw; i++) g[p + i] = actPasses(bnValue(x[p + i], mean[ci], scale[ci], shift[ci]), act) ? dy[p + i] : 0;
      }
    }
  }
  return batchNormBackward(g, x, mean, invstd, weight, n, c, hw);
}

// dx = invstd * gamma * (dy - mean(dy) - xhat * mean(dy * xhat))
function batchNormBackward(dy: F32, x: F32, mean: F32, invstd: F32, weight: F32 | null, n: number, c: number, hw: number): BatchNormGrads {
  const dx = new Float32Array(x.length);
  const dweight = new Float32Array(c);
  const dbias = new Float32Array(c);
  const count = n * hw;
  for (let ci = 0; ci < c; ci++) {
    const m = mean[ci];
    const is = invstd[ci];
    let sdy = 0;
    let sdyxh = 0;
    for (let ni = 0; ni < n; ni++) {
      const p = (ni * c + ci) * hw;
      for (let i = 0; i < hw; i++) {
        sdy += dy[p + i];
        sdyxh += dy[p + i] * (x[p + i] - m) * is;
      }
    }
    dweight[ci] = sdyxh;
    dbias[ci] = sdy;
    const gm = weight ? weight[ci] : 1;
    const mdy = sdy / count;
    const mdyxh = sdyxh / count;
    for (let ni = 0; ni < n; ni++) {
      const p = (ni * c + ci) * hw;
      for (let i = 0; i < hw; i++) {
        const xh = (x[p + i] - m) * is;
        dx[p + i] = gm * is * (dy[p + i] - mdy - xh * mdyxh);
      }
    }
  }
  return { dx, dweight, dbias };
}

// ---- elementwise --------------------------------------------------------------------------

function map1(x: F32, f: (v: number) => number): F32 {
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = f(x[i]);
  return y;
}

function checkSame(a: F32, b: F32, what: string): void {
  if (a.length !== b.length) throw new Error(`${what}: buffer sizes differ (${a.length} vs ${b.length})`);
}

// ---- pooling ------------------------------------------------------------------------------

function maxPool2d(x: F32, g: PoolGeom): { y: F32; argmax: Int32Array } {
  const { n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow } = g;
  const y = new Float32Array(n * c * oh * ow);
  const argmax = new Int32Array(n * c * oh * ow);
  for (let p = 0; p < n * c; p++) {
    const xp = p * h * w;
    for (let oy = 0; oy < oh; oy++) {
      for (let ox = 0; ox < ow; ox++) {
        let best = -Infinity;
        let bi = -1;
        for (let ky = 0; ky < kh; ky++) {
          const iy = oy * sh - ph + ky;
          if (iy < 0 || iy >= h) continue;
          for (let kx = 0; kx < kw; kx++) {
            const ix = ox * sw - pw + kx;
            if (ix < 0 || ix >= w) continue;
            const v = x[xp + iy * w + ix];
            if (v > best || Number.isNaN(v) || bi < 0) {
              best = v;
              bi = iy * w + ix;
              if (Number.isNaN(v)) break;
            }
          }
        }
        const o = (p * oh + oy) * ow + ox;
        y[o] = best;
        argmax[o] = bi;
      }
    }
  }
  return { y, argmax };
}

function maxPool2dBackward(dy: F32, argmax: Int32Array, g: PoolGeom): F32 {
  const { n, c, h, w, oh, ow } = g;
  const dx = new Float32Array(n * c * h * w);
  for (let p = 0; p < n * c; p++) {
    for (let i = 0; i < oh * ow; i++) {
      const o = p * oh * ow + i;
      dx[p * h * w + argmax[o]] += dy[o];
    }
  }
  return dx;
}

function adaptiveRange(i: number, inSize: number, outSize: number): [number, number] {
  return [Math.floor((i * inSize) / outSize), Math.ceil(((i + 1) * inSize) / outSize)];
}

function adaptiveAvgPool2d(x: F32, n: number, c: number, h: number, w: number, oh: number, ow: number): F32 {
  const y = new Float32Array(n * c * oh * ow);
  for (let p = 0; p < n * c; p++) {
    for (let oy = 0; oy < oh; oy++) {
      const [y0, y1] = adaptiveRange(oy, h, oh);
      for (let ox = 0; ox < ow; ox++) {
        const [x0, x1] = adaptiveRange(ox, w, ow);
        let s = 0;
        for (let iy = y0; iy < y1; iy++) for (let ix = x0; ix < x1; ix++) s += x[p * h * w + iy * w + ix];
        y[(p * oh + oy) * ow + ox] = s / ((y1 - y0) * (x1 - x0));
      }
    }
  }
  return y;
}

function adaptiveAvgPool2dBackward(dy: F32, n: number, c: number, h: number, w: number, oh: number, ow: number): F32 {
  const dx = new Float32Array(n * c * h * w);
  for (let p = 0; p < n * c; p++) {
    for (let oy = 0; oy < oh; oy++) {
      const [y0, y1] = adaptiveRange(oy, h, oh);
      for (let ox = 0; ox < ow; ox++) {
        const [x0, x1] = adaptiveRange(ox, w, ow);
        const g = dy[(p * oh + oy) * ow + ox] / ((y1 - y0) * (x1 - x0));
        for (let iy = y0; iy < y1; iy++) for (let ix = x0; ix < x1; ix++) dx[p * h * w + iy * w + ix] += g;
      }
    }
  }
  return dx;
}

// ---- dense --------------------------------------------------------------------------------

// C(M, N) = op(A) * op(B); A stored (M, K) or (K, M) if transA; B stored (K, N) or (N, K) if transB
function matmul(a: F32, b: F32, m: number, n: number, k: number, transA: boolean, transB: boolean): F32 {
  const c = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        const av = transA ? a[p * m + i] : a[i * k + p];
        const bv = transB ? b[j * k + p] : b[p * n + j];
        s += av * bv;
      }
      c[i * n + j] = s;
    }
  }
  return c;
}

function logSoftmax(x: F32, rows: number, cols: number): F32 {
  const y = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let mx = -Infinity;
    for (let j = 0; j < cols; j++) mx = Math.max(mx, x[r * cols + j]);
    let s = 0;
    for (let j = 0; j < cols; j++) s += Math.exp(x[r * cols + j] - mx);
    const lse = mx + Math.log(s);
    for (let j = 0; j < cols; j++) y[r * cols + j] = x[r * cols + j] - lse;
  }
  return y;
}

function logSoftmaxBackward(dy: F32, y: F32, rows: number, cols: number): F32 {
  const dx = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let j = 0; j < cols; j++) s += dy[r * cols + j];
    for (let j = 0; j < cols; j++) dx[r * cols + j] = dy[r * cols + j] - Math.exp(y[r * cols + j]) * s;
  }
  return dx;
}

// ---- optimisers ---------------------------------------------------------------------------

// PyTorch's Adam (amsgrad off): L2 weight decay added to the gradient, bias-corrected moments.
function adamStepInPlace(param: F32, grad: F32, m: F32, v: F32, h: AdamHyper): void {
  const bc1 = 1 - Math.pow(h.beta1, h.step);
  const bc2sqrt = Math.sqrt(1 - Math.pow(h.beta2, h.step));
  const stepSize = h.lr / bc1;
  for (let i = 0; i < param.length; i++) {
    const g = h.weightDecay !== 0 ? grad[i] + h.weightDecay * param[i] : grad[i];
    m[i] = h.beta1 * m[i] + (1 - h.beta1) * g;
    v[i] = h.beta2 * v[i] + (1 - h.beta2) * g * g;
    const denom = Math.sqrt(v[i]) / bc2sqrt + h.eps;
    param[i] = param[i] - (stepSize * m[i]) / denom;
  }
}

// PyTorch's SGD: weight decay, momentum with dampening (buffer starts as the gradient), nesterov.
function sgdStepInPlace(param: F32, grad: F32, buf: F32 | null, h: SgdHyper): void {
  for (let i = 0; i < param.length; i++) {
    let d = h.weightDecay !== 0 ? grad[i] + h.weightDecay * param[i] : grad[i];
    if (h.momentum !== 0 && buf) {
      buf[i] = h.firstStep ? d : h.momentum * buf[i] + (1 - h.dampening) * d;
      d = h.nesterov ? d + h.momentum * buf[i] : buf[i];
    }
    param[i] = param[i] - h.lr * d;
  }
}

// The input a convolution with an input transform reads: batchNormApply's output, materialised.
function transformedInput(x: F32, g: ConvGeom, tf: InputTransform | null | undefined): F32 {
  if (!tf) return x;
  if (!inputTransformApplies(g)) throw new Error('reference backend: an input transform needs a pointwise or depthwise convolution');
  return batchNormApply(x, tf.mean, tf.scale, tf.shift, null, g.n, g.c, g.h * g.w, tf.act);
}

export const referenceBackend: Backend = {
  name: 'reference',
  conv2d: (x, w, b, g, tf) => conv2d(transformedInput(x, g, tf), w, b, g),
  conv2dFused: (x: F32, w: F32, b: F32 | null, g: ConvGeom, e: ConvEpilogue): F32 =>
    batchNormApply(conv2d(x, w, b, g), e.mean, e.scale, e.shift, e.res, g.n, g.o, g.oh * g.ow, e.act),
  conv2dBackwardInput,
  conv2dBackwardWeight: (dy, x, g, tf) => conv2dBackwardWeight(dy, transformedInput(x, g, tf), g),
  batchNormTrain,
  batchNormEval,
  batchNormBackward,
  batchNormStats,
  batchNormApply,
  batchNormActBackward,
  relu: (x) => map1(x, (v) => (v > 0 ? v : Number.isNaN(v) ? v : 0)),
  reluBackward(dy, y) {
    checkSame(dy, y, 'reluBackward');
    const dx = new Float32Array(dy.length);
    for (let i = 0; i < dy.length; i++) dx[i] = y[i] > 0 ? dy[i] : 0;
    return dx;
  },
  relu6: (x) => map1(x, (v) => (Number.isNaN(v) ? v : Math.min(Math.max(v, 0), 6))),
  relu6Backward(dy, y) {
    checkSame(dy, y, 'relu6Backward');
    const dx = new Float32Array(dy.length);
    for (let i = 0; i < dy.length; i++) dx[i] = y[i] > 0 && y[i] < 6 ? dy[i] : 0;
    return dx;
  },
  add(a, b) {
    checkSame(a, b, 'add');
    const y = new Float32Array(a.length);
    for (let i = 0; i < a.length; i++) y[i] = a[i] + b[i];
    return y;
  },
  mul(a, b) {
    checkSame(a, b, 'mul');
    const y = new Float32Array(a.length);
    for (let i = 0; i < a.length; i++) y[i] = a[i] * b[i];
    return y;
  },
  scale: (a, s) => map1(a, (v) => v * s),
  addInPlace(acc, a) {
    checkSame(acc, a, 'addInPlace');
    for (let i = 0; i < acc.length; i++) acc[i] += a[i];
  },
  maxPool2d,
  maxPool2dBackward,
  adaptiveAvgPool2d,
  adaptiveAvgPool2dBackward,
  matmul,
  addRowVectorInPlace(y, bias, rows, cols) {
    for (let r = 0; r < rows; r++) for (let j = 0; j < cols; j++) y[r * cols + j] += bias[j];
  },
  sumRows(x, rows, cols) {
    const s = new Float64Array(cols);
    for (let r = 0; r < rows; r++) for (let j = 0; j < cols; j++) s[j] += x[r * cols + j];
    return Float32Array.from(s);
  },
  sumChannels(x, n, c, hw) {
    const s = new Float64Array(c);
    for (let ni = 0; ni < n; ni++) for (let ci = 0; ci < c; ci++) for (let i = 0; i < hw; i++) s[ci] += x[(ni * c + ci) * hw + i];
    return Float32Array.from(s);
  },
  logSoftmax,
  logSoftmaxBackward,
  adamStepInPlace,
  sgdStepInPlace,
};
