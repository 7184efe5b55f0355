// Loader for the native CPU backend: C kernels (native/*.c) compiled by node-gyp at install
// time into build/Release/convnets_native.node, called through Node-API. The addon works in
// place on Float32Array memory (zero copy); this wrapper allocates the outputs and passes them
// in. Loading never throws: if the addon is missing or broken, `backend` is null and `reason`
// says why (the registry then falls back to the reference backend).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Act, AdamHyper, Backend, DepthwiseStage, PointwiseStage, BatchNormGrads, BatchNormStats, BatchNormTrainResult, BnBackwardTransform, ConvEpilogue, ConvGeom, F32, InputTransform, PoolGeom, SgdHyper } from './backend.js';
import { isPointwise } from './backend.js';
import { allocOutput, releaseOutput, setAddressProbe, setHugePageAdvisor } from './arena.js';

/** The functions exported by the compiled addon (native/addon.c). */
interface NativeAddon {
  version: number;
  conv2d(x: F32, w: F32, b: F32 | null, y: F32, geom: Int32Array, tfMean?: F32 | null, tfScale?: F32 | null, tfShift?: F32 | null, tfAct?: number, partials?: F32 | null): boolean;
  conv2dFused(x: F32, w: F32, b: F32 | null, y: F32, geom: Int32Array, mean: F32, scale: F32, shift: F32, res: F32 | null, act: number): void;
  blockInfer(x: F32, y: F32, g1: Int32Array, w1: F32, e1: F32, g2: Int32Array, w2: F32, e2: F32, g3: Int32Array, w3: F32, e3: F32 | null, res: F32 | null, acts: Int32Array): boolean;
  conv2dDwPw(x: F32, wd: F32, bd: F32 | null, gd: Int32Array, md: F32, sd: F32, td: F32, actd: number, w: F32, b: F32 | null, y: F32, g: Int32Array, mean: F32 | null, scale: F32 | null, shift: F32 | null, res: F32 | null, act: number): boolean;
  conv2dBackwardInput(dy: F32, w: F32, dx: F32, geom: Int32Array, tMean?: F32 | null, tScale?: F32, tShift?: F32, tAct?: number, bx?: F32, bnParts?: F32): number;
  conv2dBackwardWeight(dy: F32, x: F32, dw: F32, geom: Int32Array, tfMean?: F32, tfScale?: F32, tfShift?: F32, tfAct?: number): void;
  conv2dBackwardPw(dy: F32, x: F32, w: F32, dx: F32, dw: F32, geom: Int32Array, tfMean?: F32 | null, tfScale?: F32 | null, tfShift?: F32 | null, tfAct?: number, bnParts?: F32 | null, dtX?: F32 | null, dtMean?: F32, dtScale?: F32, dtShift?: F32, dtCoef?: F32, dtAct?: number): number;
  bnTrain(x: F32, w: F32 | null, b: F32 | null, y: F32, mean: F32, varBiased: F32, invstd: F32, n: number, c: number, hw: number, eps: number): void;
  bnEval(x: F32, mean: F32, varRunning: F32, w: F32 | null, b: F32 | null, y: F32, n: number, c: number, hw: number, eps: number): void;
  bnBackward(dy: F32, x: F32, mean: F32, invstd: F32, w: F32 | null, dx: F32, dw: F32, db: F32, n: number, c: number, hw: number): void;
  bnStats(x: F32, mean: F32, varBiased: F32, invstd: F32, n: number, c: number, hw: number, eps: number): void;
  bnGroupImages(hw: number): number;
  bnStatsFromPartials(partials: F32, mean: F32, varBiased: F32, invstd: F32, n: number, c: number, hw: number, eps: number): void;
  bnApply(x: F32, mean: F32, scale: F32, shift: F32, res: F32 | null, y: F32, n: number, c: number, hw: number, act: number): void;
  bnBackwardAct(dy: F32, x: F32, mean: F32, invstd: F32, w: F32 | null, scale: F32, shift: F32, dx: F32, dw: F32, db: F32, n: number, c: number, hw: number, act: number): void;
  bnBwCoefs(parts: F32, invstd: F32, w: F32 | null, dw: F32, db: F32, coef: F32, n: number, c: number, hw: number): void;
  bnBwApply(dy: F32, x: F32, mean: F32, scale: F32, shift: F32, coef: F32, act: number, dx: F32, n: number, c: number, hw: number): void;
  elementwise(op: number, a: F32, b: F32 | null, y: F32, s: number): void;
  maxPool(x: F32, y: F32, argmax: Int32Array, geom: Int32Array): void;
  maxPoolBackward(dy: F32, argmax: Int32Array, dx: F32, geom: Int32Array): void;
  adaptiveAvgPool(x: F32, y: F32, n: number, c: number, h: number, w: number, oh: number, ow: number): void;
  adaptiveAvgPoolBackward(dy: F32, dx: F32, n: number, c: number, h: number, w: number, oh: number, ow: number): void;
  matmul(a: F32, b: F32, c: F32, m: number, n: number, k: number, transA: boolean, transB: boolean): void;
  addRowVector(y: F32, bias: F32, rows: number, cols: number): void;
  sumRows(x: F32, out: F32, rows: number, cols: number): void;
  sumChannels(x: F32, out: F32, n: number, c: number, hw: number): void;
  logSoftmax(x: F32, y: F32, rows: number, cols: number): void;
  logSoftmaxBackward(dy: F32, y: F32, dx: F32, rows: number, cols: number): void;
  adam(p: F32, g: F32, m: F32, v: F32, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number): void;
  sgd(p: F32, g: F32, buf: F32 | null, lr: number, momentum: number, dampening: number, weightDecay: number, nesterov: boolean, firstStep: boolean): void;
  getThreads(): number;
  setThreads(n: number): number;
  getIsa(): string;
  setIsa(name: string): boolean;
  byteAlignment(a: F32): number;
  adviseHugePages(a: F32): boolean;
}

const ADDON_VERSION = 11;
const ADDON_FILE = join('build', 'Release', 'convnets_native.node');

// Elementwise op codes (native/cn.h, CN_EW_*).
const EW_RELU = 0;
const EW_RELU6 = 1;
const EW_RELU_BW = 2;
const EW_RELU6_BW = 3;
const EW_ADD = 4;
const EW_MUL = 5;
const EW_SCALE = 6;
const EW_ADD_INPLACE = 7;

/** Find build/Release/convnets_native.node above this module (src/backend or dist/src/backend). */
function findAddon(): string | null {
  const override = process.env.CONVNETS_NATIVE_ADDON;
  if (override) return override;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const p = join(dir, ADDON_FILE);
    if (existsSync(p)) return p;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return null;
}

// Outputs are fully overwritten by the kernels, so large ones are uninitialised memory; inside a
// step arena they are recycled buffers (arena.ts).
const out = allocOutput;

function sameLength(a: F32, b: F32, what: string): void {
  if (a.length !== b.length) throw new Error(`${what}: buffer sizes differ (${a.length} vs ${b.length})`);
}

function makeBackend(A: NativeAddon): Backend {
  // Geometry is passed in a reused Int32Array (calls are synchronous).
  const cg = new Int32Array(14);
  const cgd = new Int32Array(14);
  const pg = new Int32Array(12);
  const convGeom = (g: ConvGeom): Int32Array => {
    cg[0] = g.n; cg[1] = g.c; cg[2] = g.h; cg[3] = g.w; cg[4] = g.o; cg[5] = g.kh; cg[6] = g.kw;
    cg[7] = g.sh; cg[8] = g.sw; cg[9] = g.ph; cg[10] = g.pw; cg[11] = g.groups; cg[12] = g.oh; cg[13] = g.ow;
    return cg;
  };
  // a fresh geometry array (for calls that take several)
  const geomOf = (g: ConvGeom): Int32Array => new Int32Array([g.n, g.c, g.h, g.w, g.o, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.groups, g.oh, g.ow]);
  // conv2dBlock's per-stage epilogue: [mean | scale | shift | bias?] (see blockInfer)
  const blockEpi = (e: ConvEpilogue, b: F32 | null, c: number): F32 => {
    for (const [a, what] of [[e.mean, 'mean'], [e.scale, 'scale'], [e.shift, 'shift'], [b, 'bias']] as const) {
      if (a && a.length < c) throw new RangeError(`convnets native: block epilogue ${what} has ${a.length} elements, expected ${c}`);
    }
    const v = new Float32Array((b ? 4 : 3) * c);
    v.set(e.mean.subarray(0, c), 0);
    v.set(e.scale.subarray(0, c), c);
    v.set(e.shift.subarray(0, c), 2 * c);
    if (b) v.set(b.subarray(0, c), 3 * c);
    return v;
  };
  // per-channel batch statistics written by fill
  const statsOf = (c: number, fill: (mean: F32, varBiased: F32, invstd: F32) => void): BatchNormStats => {
    const st = { mean: out(c), varBiased: out(c), invstd: out(c) };
    fill(st.mean, st.varBiased, st.invstd);
    return st;
  };
  const poolGeom = (g: PoolGeom): Int32Array => {
    pg[0] = g.n; pg[1] = g.c; pg[2] = g.h; pg[3] = g.w; pg[4] = g.kh; pg[5] = g.kw;
    pg[6] = g.sh; pg[7] = g.sw; pg[8] = g.ph; pg[9] = g.pw; pg[10] = g.oh; pg[11] = g.ow;
    return pg;
  };
  // floats of per-image-group partials (two per group and channel), as the addon checks them
  const groupPartsLength = (n: number, c: number, hw: number): number => 2 * Math.ceil(n / A.bnGroupImages(hw)) * c;
  const unary = (op: number, x: F32, s = 0): F32 => {
    const y = out(x.length);
    A.elementwise(op, x, null, y, s);
    return y;
  };
  const binary = (op: number, a: F32, b: F32, what: string): F32 => {
    sameLength(a, b, what);
    const y = out(a.length);
    A.elementwise(op, a, b, y, 0);
    return y;
  };

  return {
    name: 'native',

    conv2d(x: F32, w: F32, b: F32 | null, g: ConvGeom, tf?: InputTransform | null): F32 {
      const y = out(g.n * g.o * g.oh * g.ow);
      if (tf) A.conv2d(x, w, b, y, convGeom(g), tf.mean, tf.scale, tf.shift, tf.act);
      else A.conv2d(x, w, b, y, convGeom(g));
      return y;
    },
    conv2dWithStats(x: F32, w: F32, g: ConvGeom, tf?: InputTransform | null): { y: F32; partials: F32 | null } {
      const y = out(g.n * g.o * g.oh * g.ow);
      const partials = out(groupPartsLength(g.n, g.o, g.oh * g.ow));
      const done = A.conv2d(x, w, null, y, convGeom(g), tf ? tf.mean : null, tf ? tf.scale : null, tf ? tf.shift : null, tf ? tf.act : 0, partials);
      if (done) return { y, partials };
      releaseOutput(partials);
      return { y, partials: null };
    },
    batchNormStatsFromPartials(partials: F32, n: number, c: number, hw: number, eps: number): BatchNormStats {
      return statsOf(c, (mean, varBiased, invstd) => A.bnStatsFromPartials(partials, mean, varBiased, invstd, n, c, hw, eps));
    },
    conv2dFused(x: F32, w: F32, b: F32 | null, g: ConvGeom, epi: ConvEpilogue): F32 {
      const y = out(g.n * g.o * g.oh * g.ow);
      A.conv2dFused(x, w, b, y, convGeom(g), epi.mean, epi.scale, epi.shift, epi.res, epi.act);
      return y;
    },
    conv2dAfterDepthwise(dw: DepthwiseStage, w: F32, b: F32 | null, g: ConvGeom, epi: ConvEpilogue | null): F32 | null {
      const gd = dw.g;
      cgd.set([gd.n, gd.c, gd.h, gd.w, gd.o, gd.kh, gd.kw, gd.sh, gd.sw, gd.ph, gd.pw, gd.groups, gd.oh, gd.ow]);
      const y = out(g.n * g.o * g.oh * g.ow);
      const e = dw.epi;
      const ok = A.conv2dDwPw(dw.x, dw.w, dw.b, cgd, e.mean, e.scale, e.shift, e.act, w, b, y, convGeom(g), epi ? epi.mean : null, epi ? epi.scale : null, epi ? epi.shift : null, epi ? epi.res : null, epi ? epi.act : 0);
      if (ok) return y;
      releaseOutput(y);
      return null;
    },
    conv2dBlock(ex: PointwiseStage, dw: DepthwiseStage, w: F32, b: F32 | null, g: ConvGeom, epi: ConvEpilogue | null): F32 | null {
      // bias rows only where there is a bias; no bias and no epilogue: plain project convolution
      if (!epi && b) return null;
      const e1 = blockEpi(ex.epi, ex.b, ex.g.o);
      const e2 = blockEpi(dw.epi, dw.b, dw.g.o);
      const e3 = epi ? blockEpi(epi, b, g.o) : null;
      const y = out(g.n * g.o * g.oh * g.ow);
      let ok = false;
      try {
        ok = A.blockInfer(ex.x, y, geomOf(ex.g), ex.w, e1, geomOf(dw.g), dw.w, e2, geomOf(g), w, e3, epi ? epi.res : null, new Int32Array([ex.epi.act, dw.epi.act, epi ? epi.act : 0]));
      } finally {
        if (!ok) releaseOutput(y);
      }
      return ok ? y : null;
    },
    conv2dBackwardInput(dy: F32, w: F32, g: ConvGeom): F32 {
      const dx = out(g.n * g.c * g.h * g.w);
      A.conv2dBackwardInput(dy, w, dx, convGeom(g));
      return dx;
    },
    conv2dBackwardInputBnParts(dy: F32, w: F32, g: ConvGeom, bx: F32, t: InputTransform): { dx: F32; bnParts: F32 | null } {
      const dx = out(g.n * g.c * g.h * g.w);
      if (!isPointwise(g) || g.h * g.w < 256) {
        // (the native path computes partials for pointwise convolutions of 16x16 planes and up)
        A.conv2dBackwardInput(dy, w, dx, convGeom(g));
        return { dx, bnParts: null };
      }
      const parts = out(groupPartsLength(g.n, g.c, g.h * g.w));
      if (A.conv2dBackwardInput(dy, w, dx, convGeom(g), t.mean, t.scale, t.shift, t.act, bx, parts) === 1) return { dx, bnParts: parts };
      releaseOutput(parts);
      return { dx, bnParts: null };
    },
    conv2dBackwardBoth(dy: F32, x: F32, w: F32, g: ConvGeom, tf?: InputTransform | null, bnParts?: boolean, dyT?: BnBackwardTransform | null): { dx: F32; dw: F32; bnParts: F32 | null } | null {
      const depthwise = g.groups === g.c && g.o === g.c && g.c > 1;
      if (!isPointwise(g) && !depthwise) return null;
      const dx = out(g.n * g.c * g.h * g.w);
      const dw = out(g.o * (g.c / g.groups) * g.kh * g.kw);
      const parts = bnParts && tf && tf.act !== 0 ? out(groupPartsLength(g.n, g.c, g.h * g.w)) : null;
      const done = A.conv2dBackwardPw(dy, x, w, dx, dw, convGeom(g), tf ? tf.mean : null, tf ? tf.scale : null, tf ? tf.shift : null, tf ? tf.act : 0, parts, dyT ? dyT.x : null, dyT?.mean, dyT?.scale, dyT?.shift, dyT?.coef, dyT?.act);
      if (parts !== null && done !== 2) releaseOutput(parts);
      if (done) return { dx, dw, bnParts: done === 2 ? parts : null };
      releaseOutput(dx);
      releaseOutput(dw);
      return null;
    },
    conv2dBackwardWeight(dy: F32, x: F32, g: ConvGeom, tf?: InputTransform | null): F32 {
      const dw = out(g.o * (g.c / g.groups) * g.kh * g.kw);
      if (tf) A.conv2dBackwardWeight(dy, x, dw, convGeom(g), tf.mean, tf.scale, tf.shift, tf.act);
      else A.conv2dBackwardWeight(dy, x, dw, convGeom(g));
      return dw;
    },

    batchNormTrain(x: F32, weight: F32 | null, bias: F32 | null, n: number, c: number, hw: number, eps: number): BatchNormTrainResult {
      const y = out(n * c * hw);
      const mean = out(c);
      const varBiased = out(c);
      const invstd = out(c);
      A.bnTrain(x, weight, bias, y, mean, varBiased, invstd, n, c, hw, eps);
      return { y, mean, varBiased, invstd };
    },
    batchNormEval(x: F32, mean: F32, varRunning: F32, weight: F32 | null, bias: F32 | null, n: number, c: number, hw: number, eps: number): F32 {
      const y = out(n * c * hw);
      A.bnEval(x, mean, varRunning, weight, bias, y, n, c, hw, eps);
      return y;
    },
    batchNormBackward(dy: F32, x: F32, mean: F32, invstd: F32, weight: F32 | null, n: number, c: number, hw: number): BatchNormGrads {
      const dx = out(n * c * hw);
      const dweight = out(c);
      const dbias = out(c);
      A.bnBackward(dy, x, mean, invstd, weight, dx, dweight, dbias, n, c, hw);
      return { dx, dweight, dbias };
    },

    batchNormStats(x: F32, n: number, c: number, hw: number, eps: number): BatchNormStats {
      return statsOf(c, (mean, varBiased, invstd) => A.bnStats(x, mean, varBiased, invstd, n, c, hw, eps));
    },
    batchNormApply(x: F32, mean: F32, scale: F32, shift: F32, res: F32 | null, n: number, c: number, hw: number, act: Act): F32 {
      if (res) sameLength(x, res, 'batchNormApply');
      const y = out(n * c * hw);
      A.bnApply(x, mean, scale, shift, res, y, n, c, hw, act);
      return y;
    },
    batchNormActBackward(dy: F32, x: F32, mean: F32, invstd: F32, weight: F32 | null, scale: F32, shift: F32, n: number, c: number, hw: number, act: Act): BatchNormGrads {
      const dx = out(n * c * hw);
      const dweight = out(c);
      const dbias = out(c);
      A.bnBackwardAct(dy, x, mean, invstd, weight, scale, shift, dx, dweight, dbias, n, c, hw, act);
      return { dx, dweight, dbias };
    },
    batchNormActBackwardCoefs(parts: F32, invstd: F32, weight: F32 | null, n: number, c: number, hw: number): { dweight: F32; dbias: F32; coef: F32 } {
      const dweight = out(c);
      const dbias = out(c);
      const coef = out(3 * c);
      A.bnBwCoefs(parts, invstd, weight, dweight, dbias, coef, n, c, hw);
      return { dweight, dbias, coef };
    },
    batchNormActBackwardApply(dy: F32, t: BnBackwardTransform, n: number, c: number, hw: number): F32 {
      const dx = out(n * c * hw);
      A.bnBwApply(dy, t.x, t.mean, t.scale, t.shift, t.coef, t.act, dx, n, c, hw);
      return dx;
    },

    relu: (x: F32): F32 => unary(EW_RELU, x),
    reluBackward: (dy: F32, y: F32): F32 => binary(EW_RELU_BW, dy, y, 'reluBackward'),
    relu6: (x: F32): F32 => unary(EW_RELU6, x),
    relu6Backward: (dy: F32, y: F32): F32 => binary(EW_RELU6_BW, dy, y, 'relu6Backward'),
    add: (a: F32, b: F32): F32 => binary(EW_ADD, a, b, 'add'),
    mul: (a: F32, b: F32): F32 => binary(EW_MUL, a, b, 'mul'),
    scale: (a: F32, s: number): F32 => unary(EW_SCALE, a, s),
    addInPlace(acc: F32, a: F32): void {
      sameLength(acc, a, 'addInPlace');
      A.elementwise(EW_ADD_INPLACE, a, null, acc, 0);
    },

    maxPool2d(x: F32, g: PoolGeom): { y: F32; argmax: Int32Array } {
      const y = out(g.n * g.c * g.oh * g.ow);
      const argmax = new Int32Array(y.length);
      A.maxPool(x, y, argmax, poolGeom(g));
      return { y, argmax };
    },
    maxPool2dBackward(dy: F32, argmax: Int32Array, g: PoolGeom): F32 {
      const dx = out(g.n * g.c * g.h * g.w);
      A.maxPoolBackward(dy, argmax, dx, poolGeom(g));
      return dx;
    },
    adaptiveAvgPool2d(x: F32, n: number, c: number, h: number, w: number, oh: number, ow: number): F32 {
      const y = out(n * c * oh * ow);
      A.adaptiveAvgPool(x, y, n, c, h, w, oh, ow);
      return y;
    },
    adaptiveAvgPool2dBackward(dy: F32, n: number, c: number, h: number, w: number, oh: number, ow: number): F32 {
      const dx = out(n * c * h * w);
      A.adaptiveAvgPoolBackward(dy, dx, n, c, h, w, oh, ow);
      return dx;
    },

    matmul(a: F32, b: F32, m: number, n: number, k: number, transA: boolean, transB: boolean): F32 {
      const c = out(m * n);
      A.matmul(a, b, c, m, n, k, transA, transB);
      return c;
    },
    addRowVectorInPlace(y: F32, bias: F32, rows: number, cols: number): void {
      A.addRowVector(y, bias, rows, cols);
    },
    sumRows(x: F32, rows: number, cols: number): F32 {
      const s = out(cols);
      A.sumRows(x, s, rows, cols);
      return s;
    },
    sumChannels(x: F32, n: number, c: number, hw: number): F32 {
      const s = out(c);
      A.sumChannels(x, s, n, c, hw);
      return s;
    },

    logSoftmax(x: F32, rows: number, cols: number): F32 {
      const y = out(rows * cols);
      A.logSoftmax(x, y, rows, cols);
      return y;
    },
    logSoftmaxBackward(dy: F32, y: F32, rows: number, cols: number): F32 {
      const dx = out(rows * cols);
      A.logSoftmaxBackward(dy, y, dx, rows, cols);
      return dx;
    },

    adamStepInPlace(param: F32, grad: F32, expAvg: F32, expAvgSq: F32, h: AdamHyper): void {
      sameLength(param, grad, 'adamStepInPlace');
      sameLength(param, expAvg, 'adamStepInPlace');
      sameLength(param, expAvgSq, 'adamStepInPlace');
      A.adam(param, grad, expAvg, expAvgSq, h.lr, h.beta1, h.beta2, h.eps, h.weightDecay, h.step);
    },
    sgdStepInPlace(param: F32, grad: F32, momentumBuf: F32 | null, h: SgdHyper): void {
      sameLength(param, grad, 'sgdStepInPlace');
      if (momentumBuf) sameLength(param, momentumBuf, 'sgdStepInPlace');
      A.sgd(param, grad, momentumBuf, h.lr, h.momentum, h.dampening, h.weightDecay, h.nesterov, h.firstStep);
    },
  };
}

let cached: { backend: Backend | null; reason: string } | null = null;
let addon: NativeAddon | null = null;

/** Load the native backend; never throws. */
export function loadNativeBackend(): { backend: Backend | null; reason: string } {
  if (cached) return cached;
  cached = tryLoad();
  return cached;
}

function tryLoad(): { backend: Backend | null; reason: string } {
  try {
    const path = findAddon();
    if (!path) return { backend: null, reason: `the native addon (${ADDON_FILE}) was not built` };
    const req = createRequire(import.meta.url);
    let mod: NativeAddon;
    try {
      mod = req(path) as NativeAddon;
    } catch (e) {
      return { backend: null, reason: `the native addon ${path} failed to load: ${firstLine(e)}` };
    }
    if (!mod || mod.version !== ADDON_VERSION || typeof mod.conv2d !== 'function') {
      return { backend: null, reason: `the native addon ${path} is out of date (rebuild it)` };
    }
    addon = mod;
    setAddressProbe((a) => mod.byteAlignment(a));
    setHugePageAdvisor((a) => mod.adviseHugePages(a));
    return { backend: makeBackend(mod), reason: `native CPU backend (${mod.getIsa()})` };
  } catch (e) {
    return { backend: null, reason: `the native addon could not be loaded: ${firstLine(e)}` };
  }
}

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0];
}

/** Threads used by the native kernels (null if the addon is not loaded). */
export function nativeThreads(): number | null {
  loadNativeBackend();
  return addon ? addon.getThreads() : null;
}

/** Set the native thread count (n <= 0: default, i.e. CONVNETS_THREADS or the number of cores). */
export function setNativeThreads(n: number): number | null {
  loadNativeBackend();
  return addon ? addon.setThreads(n) : null;
}

/** Instruction set of the native kernels: "avx512", "avx2", "neon" or "scalar" (null if not loaded). */
export function nativeIsa(): string | null {
  loadNativeBackend();
  return addon ? addon.getIsa() : null;
}

/** Force an instruction set ("auto" to restore); returns false if this CPU or build lacks it. */
export function setNativeIsa(name: string): boolean {
  loadNativeBackend();
  return addon ? addon.setIsa(name) : false;
}
