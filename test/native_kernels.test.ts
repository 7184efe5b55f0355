// The native CPU backend (C kernels via Node-API) against the reference backend, kernel by
// kernel, for every instruction set this CPU supports (AVX-512, AVX2, NEON, scalar), plus
// thread-count determinism and argument checking. Skipped when the addon is not built.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { convOutSize, type Backend, type ConvGeom, type F32, type PoolGeom } from '../src/backend/backend.js';
import { referenceBackend as ref } from '../src/backend/reference.js';
import { loadNativeBackend, nativeIsa, nativeThreads, setNativeIsa, setNativeThreads } from '../src/backend/native.js';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const loaded = loadNativeBackend();
const nb = loaded.backend;

// ---- helpers ------------------------------------------------------------------------------

let seed = 12345;
function rnd(): number {
  // xorshift32 in [-1, 1)
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed / 2147483648 - 1;
}
function randn(n: number, scale = 1, offset = 0): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = offset + scale * rnd();
  return a;
}

function relL2(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length, 'length');
  let d = 0;
  let s = 0;
  for (let i = 0; i < want.length; i++) {
    const e = got[i] - want[i];
    d += e * e;
    s += want[i] * want[i];
  }
  if (s === 0) return Math.sqrt(d);
  return Math.sqrt(d / s);
}

function close(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  const r = relL2(got, want);
  assert.ok(Number.isFinite(r) && r <= tol, `${what}: relative L2 error ${r.toExponential(3)} > ${tol}`);
}

function convGeom(n: number, c: number, h: number, w: number, o: number, kh: number, kw: number, sh: number, sw: number, ph: number, pw: number, groups: number): ConvGeom {
  return { n, c, h, w, o, kh, kw, sh, sw, ph, pw, groups, oh: convOutSize(h, kh, sh, ph), ow: convOutSize(w, kw, sw, pw) };
}

function poolGeom(n: number, c: number, h: number, w: number, kh: number, kw: number, sh: number, sw: number, ph: number, pw: number): PoolGeom {
  return { n, c, h, w, kh, kw, sh, sw, ph, pw, oh: convOutSize(h, kh, sh, ph), ow: convOutSize(w, kw, sw, pw) };
}

const FWD = 1e-5;
const BWD = 1e-4;

// Instruction sets to run: every one this CPU and build support.
const isas = nb ? ['avx512', 'avx2', 'neon', 'scalar'].filter((i) => setNativeIsa(i)) : [];
if (nb) setNativeIsa('auto');

function forEachIsa(fn: (isa: string) => void): void {
  try {
    for (const isa of isas) {
      assert.ok(setNativeIsa(isa));
      fn(isa);
    }
  } finally {
    setNativeIsa('auto');
  }
}

// ---- tests ----------------------------------------------------------------------------------

describe('native kernels', { skip: nb ? false : `native backend unavailable: ${loaded.reason}` }, () => {
  const be = nb as Backend;

  /** A batch norm + activation over x (n, c, hw) in training: its statistics, a random weight,
   *  and the forward scale / shift it applies with */
  const bnActOf = (x: F32, n: number, c: number, hw: number) => {
    const st = be.batchNormStats(x, n, c, hw, 1e-5);
    const gamma = randn(c, 0.5, 1);
    const scale = new Float32Array(c).map((_, i) => Math.fround(st.invstd[i] * gamma[i]));
    return { st, gamma, scale, shift: randn(c, 0.5) };
  };

  /** its backward from the partials (parameter gradients, then the apply pass) == its own, on gy */
  const sameFromPartials = (what: string, parts: F32, gy: F32, x: F32, bn: ReturnType<typeof bnActOf>, n: number, c: number, hw: number, act: 1 | 2): void => {
    const k = be.batchNormActBackwardCoefs!(parts, bn.st.invstd, bn.gamma, n, c, hw);
    const dx = be.batchNormActBackwardApply!(gy, { x, mean: bn.st.mean, scale: bn.scale, shift: bn.shift, coef: k.coef, act }, n, c, hw);
    const want = be.batchNormActBackward(gy, x, bn.st.mean, bn.st.invstd, bn.gamma, bn.scale, bn.shift, n, c, hw, act);
    assert.deepEqual(dx, want.dx, `${what}: dx`);
    assert.deepEqual(k.dweight, want.dweight, `${what}: dweight`);
    assert.deepEqual(k.dbias, want.dbias, `${what}: dbias`);
  };

  after(() => {
    setNativeIsa('auto');
    setNativeThreads(0);
  });

  test('reports its instruction set and threads', () => {
    assert.equal(be.name, 'native');
    assert.ok(isas.length >= 1);
    assert.ok(['avx512', 'avx2', 'neon', 'scalar'].includes(nativeIsa()!));
    assert.ok(nativeThreads()! >= 1);
  });

  // name, n, c, h, w, o, kh, kw, sh, sw, ph, pw, groups, bias
  const convCases: [string, number, number, number, number, number, number, number, number, number, number, number, number, boolean][] = [
    ['3x3 s1 p1', 2, 5, 7, 9, 6, 3, 3, 1, 1, 1, 1, 1, false],
    ['3x3 s1 p1 bias, batch 1', 1, 32, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, true],
    ['3x3 s2 p1', 2, 8, 9, 8, 16, 3, 3, 2, 2, 1, 1, 1, false],
    ['3x3 s1 p1, K > KC, N > NC', 4, 64, 16, 16, 40, 3, 3, 1, 1, 1, 1, 1, false],
    ['3x3 s2 p1, K > KC', 3, 64, 8, 8, 24, 3, 3, 2, 2, 1, 1, 1, true],
    ['1x1 s1', 3, 17, 5, 6, 33, 1, 1, 1, 1, 0, 0, 1, false],
    ['1x1 s1 large channels', 2, 300, 4, 4, 20, 1, 1, 1, 1, 0, 0, 1, false],
    ['1x1 s2', 2, 16, 8, 8, 8, 1, 1, 2, 2, 0, 0, 1, false],
    ['1x1 s1 p1 (padding beyond the kernel)', 2, 6, 4, 5, 7, 1, 1, 1, 1, 1, 1, 1, true],
    ['5x5 s1 p0', 2, 3, 11, 10, 5, 5, 5, 1, 1, 0, 0, 1, true],
    ['rectangular 3x5 s(2,1) p(1,2)', 2, 4, 9, 11, 6, 3, 5, 2, 1, 1, 2, 1, false],
    ['rectangular 1x3 p(0,1)', 2, 6, 5, 7, 10, 1, 3, 1, 1, 0, 1, 1, false],
    ['7x7 s2 p3 odd sizes', 1, 3, 19, 17, 9, 7, 7, 2, 2, 3, 3, 1, true],
    ['groups=2 3x3 s1 p1', 2, 8, 7, 7, 12, 3, 3, 1, 1, 1, 1, 2, false],
    ['groups=2 3x3 s2 p1', 2, 8, 9, 9, 6, 3, 3, 2, 2, 1, 1, 2, true],
    ['groups=4 1x1, one output per group', 2, 8, 5, 5, 4, 1, 1, 1, 1, 0, 0, 4, false],
    ['depthwise 3x3 s1 p1', 2, 12, 9, 10, 12, 3, 3, 1, 1, 1, 1, 12, false],
    ['depthwise 3x3 s1 p1 32x32', 2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 16, true],
    ['depthwise 3x3 s2 p1', 2, 16, 10, 9, 16, 3, 3, 2, 2, 1, 1, 16, false],
    ['depthwise 3x3 s2 p1 4x4', 3, 8, 4, 4, 8, 3, 3, 2, 2, 1, 1, 8, false],
    ['depthwise 3x3 s2 p1 4x4, 7 channels (four planes per vector, then one)', 3, 7, 4, 4, 7, 3, 3, 2, 2, 1, 1, 7, true],
    ['depthwise 3x3 s2 p1 4x4, multiplier 2', 2, 5, 4, 4, 10, 3, 3, 2, 2, 1, 1, 5, false],
    ['depthwise 3x3 s1 p1 2x2', 2, 24, 2, 2, 24, 3, 3, 1, 1, 1, 1, 24, false],
    ['depthwise multiplier 2', 2, 6, 7, 8, 12, 3, 3, 1, 1, 1, 1, 6, true],
    ['depthwise 5x5 s1 p2', 2, 8, 9, 9, 8, 5, 5, 1, 1, 2, 2, 8, false],
    ['depthwise 3x1 s(2,1) p(1,0)', 2, 5, 9, 6, 5, 3, 1, 2, 1, 1, 0, 5, false],
    ['depthwise s1 p0 (flip path with padding 2)', 2, 4, 6, 7, 4, 3, 3, 1, 1, 0, 0, 4, false],
    ['depthwise 1x1 p1 (padding beyond the kernel)', 2, 4, 5, 6, 4, 1, 1, 1, 1, 1, 1, 4, true],
    ['depthwise 3x3 s3 p1', 2, 6, 11, 10, 6, 3, 3, 3, 3, 1, 1, 6, false],
    ['depthwise 2x2 s2 p0, multiplier 3', 2, 3, 8, 7, 9, 2, 2, 2, 2, 0, 0, 3, false],
    ['depthwise 3x3 s1 p1 16x16, multiplier 2', 3, 8, 16, 16, 16, 3, 3, 1, 1, 1, 1, 8, true],
    ['depthwise 3x3 s1 p1 16x48 (rectangular plane)', 2, 4, 16, 48, 4, 3, 3, 1, 1, 1, 1, 4, false],
    ['single input channel (groups=1, c=1)', 2, 1, 8, 8, 5, 3, 3, 1, 1, 1, 1, 1, false],
    ['3x3 s1 p1 4x4, 16 channels (tiles across images)', 4, 16, 4, 4, 16, 3, 3, 1, 1, 1, 1, 1, true],
    ['1x1 8x8 planes, 40 -> 24 channels', 3, 40, 8, 8, 24, 1, 1, 1, 1, 0, 0, 1, false],
    // the pointwise weight gradient as dot products (AVX-512, planes of 16x16 and up): 6x4 tiles
    // with edge tiles in both directions, and positions that are not a multiple of 16
    ['1x1 32x32 planes, 22 -> 38 channels (dot-product weight gradient)', 3, 22, 32, 32, 38, 1, 1, 1, 1, 0, 0, 1, false],
    ['1x1 17x17 planes, 9 -> 13 channels (masked tail)', 2, 9, 17, 17, 13, 1, 1, 1, 1, 0, 0, 1, true],
    ['1x1 16x16 planes, 12 -> 24 channels (whole tiles only)', 9, 12, 16, 16, 24, 1, 1, 1, 1, 0, 0, 1, false],
    // input gradients with few input channels read the output gradient in place (gemm.c
    // bdirect): a partial row tile (22 = 8 + 8 + 6), 8x8 planes (a panel per 32 values)
    ['1x1 8x8 planes, 22 -> 40 channels (input gradient reads dy in place)', 5, 22, 8, 8, 40, 1, 1, 1, 1, 0, 0, 1, false],
    ['1x1 2x2 planes (a tile spans 8 images)', 16, 40, 2, 2, 24, 1, 1, 1, 1, 0, 0, 1, true],
    ['3x3 s1 p1 2x4 planes (pieces of 8)', 8, 16, 2, 4, 16, 3, 3, 1, 1, 1, 1, 1, false],
    // small planes (<= 64 values: the AVX-512 register-permute path) and stride-2 planes
    ['depthwise 3x3 s1 p1 8x8', 3, 20, 8, 8, 20, 3, 3, 1, 1, 1, 1, 20, true],
    ['depthwise 3x3 s1 p1 8x8, multiplier 2 (input gradient accumulates)', 2, 6, 8, 8, 12, 3, 3, 1, 1, 1, 1, 6, false],
    ['depthwise 3x3 s2 p1 8x8', 3, 20, 8, 8, 20, 3, 3, 2, 2, 1, 1, 20, false],
    ['depthwise 3x3 s2 p1 8x8, multiplier 2 (input gradient accumulates)', 3, 6, 8, 8, 12, 3, 3, 2, 2, 1, 1, 6, true],
    ['depthwise 3x3 s1 p1 4x4', 5, 12, 4, 4, 12, 3, 3, 1, 1, 1, 1, 12, false],
    // 4x4 and 8x8 3x3 s1 p1: constant-mask kernels (input gradient four planes at a time, groups
    // of four spanning images, then single planes: 3 x 7 planes)
    ['depthwise 3x3 s1 p1 4x4, 7 channels (planes in fours across images)', 3, 7, 4, 4, 7, 3, 3, 1, 1, 1, 1, 7, true],
    ['depthwise 3x3 s1 p1 4x4, multiplier 2', 3, 5, 4, 4, 10, 3, 3, 1, 1, 1, 1, 5, false],
    // 2x2: four adjacent channels' planes in one vector (7 channels: fours, then single planes)
    ['depthwise 3x3 s1 p1 2x2, 7 channels (four planes per vector, then one)', 3, 7, 2, 2, 7, 3, 3, 1, 1, 1, 1, 7, true],
    ['depthwise 3x3 s1 p1 2x2, multiplier 2', 2, 6, 2, 2, 12, 3, 3, 1, 1, 1, 1, 6, false],
    ['depthwise 5x5 s2 p2 8x8, multiplier 2', 2, 6, 8, 8, 12, 5, 5, 2, 2, 2, 2, 6, true],
    ['depthwise 7x7 s1 p3 6x5', 2, 4, 6, 5, 4, 7, 7, 1, 1, 3, 3, 4, false],
    ['depthwise 3x3 s2 p1 16x16', 3, 10, 16, 16, 10, 3, 3, 2, 2, 1, 1, 10, false],
    ['depthwise 3x3 s2 p1 32x32', 2, 6, 32, 32, 6, 3, 3, 2, 2, 1, 1, 6, true],
    ['depthwise 3x3 s2 p1 15x17 (odd sizes)', 2, 5, 15, 17, 5, 3, 3, 2, 2, 1, 1, 5, false],
    ['depthwise 3x3 s2 p1 16x48, multiplier 2', 2, 4, 16, 48, 8, 3, 3, 2, 2, 1, 1, 4, true],
    ['odd sizes spanning column blocks and images', 3, 40, 20, 20, 50, 3, 3, 1, 1, 1, 1, 1, true],
    // the direct stride-1 convolution (conv_direct.c): 32x32 planes run in channel blocks of 32
    // (here 32 + 8) with partial sums kept in the output; 12 outputs = a partial channel block
    // B packed once for all row tasks (gemm.c prepack): pointwise, 2x2 and 4x4 planes, deep
    ['1x1 2x2 planes, 256 -> 64 channels (B packed once)', 32, 256, 2, 2, 64, 1, 1, 1, 1, 0, 0, 1, true],
    ['1x1 4x4 planes, 300 -> 72 channels (B packed once, K > KC)', 12, 300, 4, 4, 72, 1, 1, 1, 1, 0, 0, 1, false],
    ['direct 3x3 32x32, channel blocks, 12 outputs', 1, 40, 32, 32, 12, 3, 3, 1, 1, 1, 1, 1, true],
    ['direct 3x3 16x16 with the direct weight gradient (planes > 8x8, outputs % 8 == 0)', 3, 24, 16, 16, 16, 3, 3, 1, 1, 1, 1, 1, false],
    ['direct 5x5 s1 p2 8x8 (25 taps)', 3, 6, 8, 8, 10, 5, 5, 1, 1, 2, 2, 1, true],
    ['direct 3x5 s1 p(1,2) 4x8 (rectangular kernel)', 2, 5, 4, 8, 9, 3, 5, 1, 1, 1, 2, 1, false],
  ];

  for (const [name, n, c, h, w, o, kh, kw, sh, sw, ph, pw, groups, bias] of convCases) {
    test(`conv2d forward/backward: ${name}`, () => {
      const g = convGeom(n, c, h, w, o, kh, kw, sh, sw, ph, pw, groups);
      const x = randn(n * c * h * w);
      const wt = randn(o * (c / groups) * kh * kw, 0.5);
      const b = bias ? randn(o) : null;
      const dy = randn(n * o * g.oh * g.ow);
      const y0 = ref.conv2d(x, wt, b, g);
      const dx0 = ref.conv2dBackwardInput(dy, wt, g);
      const dw0 = ref.conv2dBackwardWeight(dy, x, g);
      forEachIsa((isa) => {
        close(be.conv2d(x, wt, b, g), y0, FWD, `${isa} forward`);
        close(be.conv2dBackwardInput(dy, wt, g), dx0, BWD, `${isa} backward input`);
        close(be.conv2dBackwardWeight(dy, x, g), dw0, BWD, `${isa} backward weight`);
      });
    });
  }

  // m, n, k
  const mmCases: [number, number, number][] = [
    [1, 1, 1],
    [7, 13, 5],
    [33, 65, 300],
    [128, 10, 512],
    [100, 37, 513],
    [17, 257, 31],
  ];
  test('matmul with all transposes', () => {
    for (const [m, n, k] of mmCases) {
      for (const ta of [false, true]) {
        for (const tb of [false, true]) {
          const a = randn(m * k);
          const b = randn(k * n);
          const want = ref.matmul(a, b, m, n, k, ta, tb);
          forEachIsa((isa) => close(be.matmul(a, b, m, n, k, ta, tb), want, FWD, `${isa} matmul ${m}x${n}x${k} ${ta} ${tb}`));
        }
      }
    }
  });

  test('matmul with K = 0 gives zeros', () => {
    const c = be.matmul(new Float32Array(0), new Float32Array(0), 3, 4, 0, false, false);
    assert.deepEqual(Array.from(c), new Array(12).fill(0));
  });

  // n, c, hw, offset (a large mean tests the variance accumulation)
  const bnCases: [number, number, number, number][] = [
    [2, 3, 5, 0],
    [4, 16, 64, 0.5],
    [3, 7, 1, 0],
    [8, 32, 100, 0],
    [5, 4, 33, 100],
    [16, 24, 256, -3],
    // 4x4 planes: per-element coefficients, tasks of 1024 planes that end inside an image,
    // channel blocks walked over 3 groups of 64 images (the last one partial)
    [160, 48, 16, 0.5],
    // 2x2 planes: 70 channels = a block of 64 + 6, 300 images = 2 groups of 256 (vector backward)
    [300, 70, 4, -1],
    // 32x32 and 48x48 planes: statistics walk blocks of channels image by image (32 KB rows)
    [3, 10, 1024, 2],
    [2, 9, 2304, -1],
  ];
  test('batch norm train / eval / backward', () => {
    for (const [n, c, hw, off] of bnCases) {
      for (const affine of [true, false]) {
        const x = randn(n * c * hw, 2, off);
        const wt = affine ? randn(c, 1, 1) : null;
        const bs = affine ? randn(c) : null;
        const dy = randn(n * c * hw);
        const r0 = ref.batchNormTrain(x, wt, bs, n, c, hw, 1e-5);
        const rm = randn(c, 0.1);
        const rv = randn(c, 0.5, 1.5);
        const e0 = ref.batchNormEval(x, rm, rv, wt, bs, n, c, hw, 1e-5);
        const g0 = ref.batchNormBackward(dy, x, r0.mean, r0.invstd, wt, n, c, hw);
        forEachIsa((isa) => {
          const what = `${isa} bn ${n}x${c}x${hw}${affine ? '' : ' no affine'}`;
          const r = be.batchNormTrain(x, wt, bs, n, c, hw, 1e-5);
          close(r.y, r0.y, FWD, `${what} y`);
          close(r.mean, r0.mean, FWD, `${what} mean`);
          close(r.varBiased, r0.varBiased, FWD, `${what} var`);
          close(r.invstd, r0.invstd, FWD, `${what} invstd`);
          close(be.batchNormEval(x, rm, rv, wt, bs, n, c, hw, 1e-5), e0, FWD, `${what} eval`);
          const g = be.batchNormBackward(dy, x, r0.mean, r0.invstd, wt, n, c, hw);
          close(g.dx, g0.dx, BWD, `${what} dx`);
          close(g.dweight, g0.dweight, BWD, `${what} dweight`);
          close(g.dbias, g0.dbias, BWD, `${what} dbias`);
        });
      }
    }
  });

  test('batch norm fused with ReLU/ReLU6 and a residual add: equal to the unfused kernels', () => {
    for (const [n, c, hw, off] of bnCases) {
      const x = randn(n * c * hw, 2, off);
      const wt = randn(c, 3, 1);
      const bs = randn(c, 3);
      const res = randn(n * c * hw, 3);
      const dy = randn(n * c * hw);
      const s0 = ref.batchNormStats(x, n, c, hw, 1e-5);
      const scale = Float32Array.from(s0.invstd, (v, i) => Math.fround(v * wt[i]));
      forEachIsa((isa) => {
        const what = `${isa} bn+act ${n}x${c}x${hw}`;
        const s = be.batchNormStats(x, n, c, hw, 1e-5);
        close(s.mean, s0.mean, FWD, `${what} mean`);
        close(s.varBiased, s0.varBiased, FWD, `${what} var`);
        close(s.invstd, s0.invstd, FWD, `${what} invstd`);
        const t = be.batchNormTrain(x, wt, bs, n, c, hw, 1e-5);
        assert.deepEqual(s.mean, t.mean, `${what}: stats equal batchNormTrain's`);
        assert.deepEqual(s.invstd, t.invstd, `${what}: invstd equals batchNormTrain's`);
        const sc = Float32Array.from(s.invstd, (v, i) => Math.fround(v * wt[i]));
        // apply == batchNormTrain's y, bit for bit; act/res == the separate kernels
        assert.deepEqual(be.batchNormApply(x, s.mean, sc, bs, null, n, c, hw, 0), t.y, `${what}: apply`);
        for (const act of [0, 1, 2] as const) {
          const sep = (v: F32): F32 => (act === 1 ? be.relu(v) : act === 2 ? be.relu6(v) : v);
          const fused = be.batchNormApply(x, s.mean, sc, bs, null, n, c, hw, act);
          close(fused, sep(t.y), 1e-6, `${what} act ${act}`);
          const fusedRes = be.batchNormApply(x, s.mean, sc, bs, res, n, c, hw, act);
          close(fusedRes, sep(be.add(res, t.y)), 1e-6, `${what} act ${act} + residual`);
          // against the reference (its own stats, so a float32 tolerance)
          close(fusedRes, ref.batchNormApply(x, s0.mean, scale, bs, res, n, c, hw, act), FWD, `${what} act ${act} + residual vs reference`);
          if (act === 0) continue;
          // backward through act(bn(x)) == batch norm backward of the activation's backward
          const z = fused;
          const gAct = act === 1 ? be.reluBackward(dy, z) : be.relu6Backward(dy, z);
          const g0 = be.batchNormBackward(gAct, x, s.mean, s.invstd, wt, n, c, hw);
          const g = be.batchNormActBackward(dy, x, s.mean, s.invstd, wt, sc, bs, n, c, hw, act);
          close(g.dx, g0.dx, 1e-6, `${what} act ${act} dx`);
          close(g.dweight, g0.dweight, 1e-6, `${what} act ${act} dweight`);
          close(g.dbias, g0.dbias, 1e-6, `${what} act ${act} dbias`);
          const r = ref.batchNormActBackward(dy, x, s0.mean, s0.invstd, wt, scale, bs, n, c, hw, act);
          close(g.dx, r.dx, BWD, `${what} act ${act} dx vs reference`);
          close(g.dweight, r.dweight, BWD, `${what} act ${act} dweight vs reference`);
        }
      });
    }
  });

  test('pointwise convolution after a depthwise one, fused (inference: 4x4 in packing, 8x8+ image by image) == the two fused kernels, bit for bit', () => {
    for (const [n, c, o, act] of [[5, 24, 40, 2], [3, 16, 8, 1], [2, 8, 16, 0]] as const) {
      const gd = convGeom(n, c, 4, 4, c, 3, 3, 1, 1, 1, 1, c);
      const g = convGeom(n, c, 4, 4, o, 1, 1, 1, 1, 0, 0, 1);
      const x = randn(n * c * 16, 1, 0.2);
      const wd = randn(c * 9, 0.5);
      const bd = act === 1 ? randn(c, 0.1) : null;
      const dwEpi = { mean: randn(c, 0.1), scale: randn(c, 0.5, 1), shift: randn(c, 0.1), res: null, act };
      const w = randn(o * c, 0.3);
      const epi = { mean: randn(o, 0.1), scale: randn(o, 0.5, 1), shift: randn(o, 0.1), res: randn(n * o * 16), act: 1 as const };
      const mid = be.conv2dFused(x, wd, bd, gd, dwEpi);
      const stage = { x, w: wd, b: bd, g: gd, epi: dwEpi };
      const fused = be.conv2dAfterDepthwise!(stage, w, null, g, epi);
      if (nativeIsa() !== 'avx512') {
        assert.equal(fused, null, 'fused only with AVX-512');
        continue;
      }
      assert.ok(fused !== null, `${n}x${c}->${o}: fused`);
      assert.deepEqual(fused, be.conv2dFused(mid, w, null, g, epi), `${n}x${c}->${o} act ${act}: with epilogue`);
      const plain = be.conv2dAfterDepthwise!(stage, w, null, g, null);
      assert.deepEqual(plain, be.conv2d(mid, w, null, g), `${n}x${c}->${o}: without epilogue`);
      close(fused!, ref.conv2dFused(ref.conv2dFused(x, wd, bd, gd, dwEpi), w, null, g, epi), FWD, 'vs reference');
    }
    // 16x16 and larger input planes: image by image (any ISA), stride 1 or 2
    for (const [n, c, o, h, st, act] of [[3, 16, 24, 32, 1, 2], [2, 24, 16, 32, 2, 1], [2, 40, 24, 16, 1, 1], [2, 8, 12, 16, 2, 0], [3, 24, 40, 8, 1, 2]] as const) {
      const gd = convGeom(n, c, h, h, c, 3, 3, st, st, 1, 1, c);
      const g = convGeom(n, c, h / st, h / st, o, 1, 1, 1, 1, 0, 0, 1);
      const x = randn(n * c * h * h, 1, 0.2);
      const wd = randn(c * 9, 0.5);
      const dwEpi = { mean: randn(c, 0.1), scale: randn(c, 0.5, 1), shift: randn(c, 0.1), res: null, act };
      const w = randn(o * c, 0.3);
      const epi = { mean: randn(o, 0.1), scale: randn(o, 0.5, 1), shift: randn(o, 0.1), res: randn(n * o * g.oh * g.ow), act: 2 as const };
      const stage = { x, w: wd, b: null, g: gd, epi: dwEpi };
      forEachIsa((isa) => {
        const mid = be.conv2dFused(x, wd, null, gd, dwEpi);
        const what = `${isa} ${n}x${c}->${o} ${h}x${h} s${st}`;
        assert.deepEqual(be.conv2dAfterDepthwise!(stage, w, null, g, epi), be.conv2dFused(mid, w, null, g, epi), `${what}: with epilogue`);
        assert.deepEqual(be.conv2dAfterDepthwise!(stage, w, null, g, null), be.conv2d(mid, w, null, g), `${what}: without epilogue`);
      });
    }
    // other geometries (8x8 planes at stride 2): not fused (the caller computes the two layers)
    const gd = convGeom(2, 8, 8, 8, 8, 3, 3, 2, 2, 1, 1, 8);
    const g = convGeom(2, 8, 4, 4, 16, 1, 1, 1, 1, 0, 0, 1);
    const epi = { mean: randn(8), scale: randn(8), shift: randn(8), res: null, act: 0 as const };
    assert.equal(be.conv2dAfterDepthwise!({ x: randn(2 * 8 * 64), w: randn(72), b: null, g: gd, epi }, randn(128), null, g, null), null);
  });

  test('inverted residual block fused (inference) == the three fused convolutions, bit for bit', () => {
    const epi = (c: number, act: 0 | 1 | 2, res: F32 | null = null) => ({ mean: randn(c, 0.2), scale: randn(c, 0.5, 1), shift: randn(c, 0.5), res, act });
    const cases: [string, number, number, number, number, number, number, boolean, boolean][] = [
      // name, n, cin, expanded, cout, size, stride, residual, biases
      ['16 -> 96 -> 24, 32x32', 3, 16, 96, 24, 32, 1, false, false],
      ['24 -> 144 -> 24, 32x32, residual', 2, 24, 144, 24, 32, 1, true, false],
      ['24 -> 144 -> 32, 32x32 stride 2', 2, 24, 144, 32, 32, 2, false, false],
      ['32 -> 40 -> 32, 16x16, residual, biases, ReLU', 3, 32, 40, 32, 16, 1, true, true],
      ['12 -> 20 -> 9, 16x16, no project epilogue', 2, 12, 20, 9, 16, 1, false, false],
      ['16 -> 48 -> 16, 8x8, residual', 3, 16, 48, 16, 8, 1, true, false],
    ];
    for (const [name, n, cin, e, cout, h, s, withRes, withBias] of cases) {
      const oh = h / s;
      const g1 = convGeom(n, cin, h, h, e, 1, 1, 1, 1, 0, 0, 1);
      const g2 = convGeom(n, e, h, h, e, 3, 3, s, s, 1, 1, e);
      const g3 = convGeom(n, e, oh, oh, cout, 1, 1, 1, 1, 0, 0, 1);
      const x = randn(n * cin * h * h);
      const w1 = randn(e * cin, 0.5);
      const w2 = randn(e * 9, 0.5);
      const w3 = randn(cout * e, 0.3);
      const b1 = withBias ? randn(e, 0.2) : null;
      const b2 = withBias ? randn(e, 0.2) : null;
      const b3 = withBias ? randn(cout, 0.2) : null;
      const act = withBias ? 1 : 2;
      const e1 = epi(e, act);
      const e2 = epi(e, act);
      const noEpi3 = name.includes('no project');
      const e3 = noEpi3 ? null : epi(cout, withRes ? 1 : 0, withRes ? randn(n * cout * oh * oh) : null);
      let got: F32 | null = null;
      forEachIsa((isa) => {
        const mid = be.conv2dFused(be.conv2dFused(x, w1, b1, g1, e1), w2, b2, g2, e2);
        const want = e3 ? be.conv2dFused(mid, w3, b3, g3, e3) : be.conv2d(mid, w3, b3, g3);
        got = be.conv2dBlock!({ x, w: w1, b: b1, g: g1, epi: e1 }, { x: new Float32Array(0), w: w2, b: b2, g: g2, epi: e2 }, w3, b3, g3, e3);
        assert.ok(got !== null, `${isa} ${name}: fused`);
        assert.deepEqual(got, want, `${isa} ${name}: bit-identical`);
      });
      const refMid = ref.conv2dFused(ref.conv2dFused(x, w1, b1, g1, e1), w2, b2, g2, e2);
      close(got!, e3 ? ref.conv2dFused(refMid, w3, b3, g3, e3) : ref.conv2d(refMid, w3, b3, g3), FWD, `${name}: vs reference`);
    }
    // 8x8 planes at stride 2 (and smaller planes): declined (nothing computed), the caller runs the three layers
    const g1 = convGeom(2, 8, 8, 8, 16, 1, 1, 1, 1, 0, 0, 1);
    const g2 = convGeom(2, 16, 8, 8, 16, 3, 3, 2, 2, 1, 1, 16);
    const g3 = convGeom(2, 16, 4, 4, 8, 1, 1, 1, 1, 0, 0, 1);
    assert.equal(be.conv2dBlock!({ x: randn(2 * 8 * 64), w: randn(128), b: null, g: g1, epi: epi(16, 2) }, { x: new Float32Array(0), w: randn(144), b: null, g: g2, epi: epi(16, 2) }, randn(128), null, g3, epi(8, 0)), null);
  });

  test('convolution fused with batch norm, residual and activation (inference) == the separate kernels', () => {
    const cases: [string, ConvGeom, boolean][] = [
      ['pointwise 32x32', convGeom(2, 24, 32, 32, 40, 1, 1, 1, 1, 0, 0, 1), false],
      ['3x3 4x4 planes (tiles across images)', convGeom(4, 16, 4, 4, 24, 3, 3, 1, 1, 1, 1, 1), true],
      ['pointwise 2x2 planes', convGeom(16, 40, 2, 2, 24, 1, 1, 1, 1, 0, 0, 1), true],
      ['3x3 s1 deep (several depth blocks)', convGeom(2, 40, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1), false],
      ['3x3 32x32 (direct, channel blocks)', convGeom(1, 36, 32, 32, 12, 3, 3, 1, 1, 1, 1, 1), true],
      ['depthwise 32x32', convGeom(2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 16), true],
      ['depthwise 8x8 s1', convGeom(3, 20, 8, 8, 20, 3, 3, 1, 1, 1, 1, 20), false],
      ['depthwise 4x4 s1 (four planes at a time, 22 channels)', convGeom(3, 22, 4, 4, 22, 3, 3, 1, 1, 1, 1, 22), true],
      ['depthwise 2x2 s1 (four planes at a time)', convGeom(2, 8, 2, 2, 8, 3, 3, 1, 1, 1, 1, 8), false],
      ['depthwise 8x8 s2', convGeom(3, 20, 8, 8, 20, 3, 3, 2, 2, 1, 1, 20), false],
      ['depthwise 16x16', convGeom(2, 8, 16, 16, 8, 3, 3, 1, 1, 1, 1, 8), false],
      ['depthwise 32x32 s2', convGeom(2, 8, 32, 32, 8, 3, 3, 2, 2, 1, 1, 8), true],
      ['depthwise 16x48 s2', convGeom(2, 4, 16, 48, 4, 3, 3, 2, 2, 1, 1, 4), false],
      ['depthwise 9x10 (general path)', convGeom(2, 6, 9, 10, 6, 3, 3, 1, 1, 1, 1, 6), true],
      ['grouped', convGeom(2, 8, 7, 7, 12, 3, 3, 1, 1, 1, 1, 2), true],
    ];
    for (const [name, g, withBias] of cases) {
      const x = randn(g.n * g.c * g.h * g.w);
      const wt = randn(g.o * (g.c / g.groups) * g.kh * g.kw, 0.5);
      const b = withBias ? randn(g.o) : null;
      const ny = g.n * g.o * g.oh * g.ow;
      const mean = randn(g.o, 0.2);
      const scale = randn(g.o, 1, 0.5);
      const shift = randn(g.o, 2);
      const res = randn(ny, 2);
      forEachIsa((isa) => {
        const y = be.conv2d(x, wt, b, g);
        for (const act of [0, 1, 2] as const) {
          for (const r of [null, res]) {
            const want = be.batchNormApply(y, mean, scale, shift, r, g.n, g.o, g.oh * g.ow, act);
            const got = be.conv2dFused(x, wt, b, g, { mean, scale, shift, res: r, act });
            close(got, want, 1e-6, `${isa} ${name} act ${act}${r ? ' + residual' : ''}`);
            if (isa === 'avx512') assert.deepEqual(got, want, `${isa} ${name} act ${act}${r ? ' + residual' : ''}: bit-identical`);
          }
        }
      });
    }
  });

  test('convolution of a transformed input (training fusion) == convolution of the batch norm apply output', () => {
    const cases: [string, ConvGeom][] = [
      ['pointwise 32x32', convGeom(2, 24, 32, 32, 40, 1, 1, 1, 1, 0, 0, 1)],
      ['pointwise 16x16, 20 outputs (few rows: the panel read in place, transformed by the first row tile; a partial tile)', convGeom(3, 36, 16, 16, 20, 1, 1, 1, 1, 0, 0, 1)],
      ['pointwise 8x8, deep (several depth blocks)', convGeom(3, 300, 8, 8, 24, 1, 1, 1, 1, 0, 0, 1)],
      ['pointwise 4x4, large weight gradient (not chunked)', convGeom(2, 600, 4, 4, 480, 1, 1, 1, 1, 0, 0, 1)],
      ['pointwise 2x2', convGeom(16, 40, 2, 2, 24, 1, 1, 1, 1, 0, 0, 1)],
      ['depthwise 32x32', convGeom(2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 16)],
      ['depthwise 16x16', convGeom(2, 8, 16, 16, 8, 3, 3, 1, 1, 1, 1, 8)],
      ['depthwise 8x8', convGeom(3, 20, 8, 8, 20, 3, 3, 1, 1, 1, 1, 20)],
      ['depthwise 4x4 (four planes at a time, 22 channels)', convGeom(3, 22, 4, 4, 22, 3, 3, 1, 1, 1, 1, 22)],
      ['depthwise 2x2', convGeom(2, 8, 2, 2, 8, 3, 3, 1, 1, 1, 1, 8)],
      ['depthwise 32x32 s2', convGeom(2, 8, 32, 32, 8, 3, 3, 2, 2, 1, 1, 8)],
      ['depthwise 8x8 s2', convGeom(3, 20, 8, 8, 20, 3, 3, 2, 2, 1, 1, 20)],
      ['depthwise 9x10 (general path)', convGeom(2, 6, 9, 10, 6, 3, 3, 1, 1, 1, 1, 6)],
      ['depthwise, channel multiplier 2', convGeom(2, 6, 8, 8, 12, 3, 3, 1, 1, 1, 1, 6)],
    ];
    // equal as numbers (the transform may keep a -0 where the apply pass writes +0; no sum sees it)
    const same = (got: F32, want: F32, what: string): void => {
      assert.equal(got.length, want.length, what);
      for (let i = 0; i < want.length; i++) if (!(got[i] === want[i] || (Number.isNaN(got[i]) && Number.isNaN(want[i])))) assert.fail(`${what}: [${i}] ${got[i]} != ${want[i]}`);
    };
    for (const [name, g] of cases) {
      const hw = g.h * g.w;
      const x = randn(g.n * g.c * hw, 2);
      x[5] = NaN; // propagates through the activation like the apply pass
      const wt = randn(g.o * (g.c / g.groups) * g.kh * g.kw, 0.5);
      const b = randn(g.o, 0.1);
      const dy = randn(g.n * g.o * g.oh * g.ow);
      const tf = { mean: randn(g.c, 0.2), scale: randn(g.c, 1, 0.5), shift: randn(g.c, 2), act: 0 as 0 | 1 | 2 };
      tf.scale[1] = 0; // a whole channel of exact zeros (-0 after the transform for some values)
      forEachIsa((isa) => {
        for (const act of [0, 1, 2] as const) {
          tf.act = act;
          const xt = be.batchNormApply(x, tf.mean, tf.scale, tf.shift, null, g.n, g.c, hw, act);
          const what = `${isa} ${name} act ${act}`;
          same(be.conv2d(x, wt, b, g, tf), be.conv2d(xt, wt, b, g), `${what}: forward`);
          const dwWant = be.conv2dBackwardWeight(dy, xt, g);
          same(be.conv2dBackwardWeight(dy, x, g, tf), dwWant, `${what}: weight gradient`);
          if (isa === 'avx512' && act === 2) close(ref.conv2dBackwardWeight(dy, x, g, tf).map((v) => (Number.isNaN(v) ? 0 : v)), dwWant.map((v) => (Number.isNaN(v) ? 0 : v)), BWD, `${what}: vs reference`);
        }
      });
    }
    const g3 = convGeom(1, 4, 4, 4, 4, 3, 3, 1, 1, 1, 1, 1);
    const tf = { mean: randn(4), scale: randn(4), shift: randn(4), act: 1 as const };
    assert.throws(() => be.conv2d(randn(64), randn(144), null, g3, tf), /pointwise or depthwise/);
    assert.throws(() => be.conv2dBackwardWeight(randn(64), randn(64), g3, tf), /pointwise or depthwise/);
  });

  test('convolution with batch statistics partials (training fusion): the same output, and the same statistics as reading it', () => {
    // [name, geometry, whether the path computes partials]
    const cases: [string, ConvGeom, boolean][] = [
      ['pointwise 32x32 (groups of one image)', convGeom(3, 12, 32, 32, 20, 1, 1, 1, 1, 0, 0, 1), true],
      ['pointwise 16x16, 9 images (groups of 4: the last one partial)', convGeom(9, 8, 16, 16, 14, 1, 1, 1, 1, 0, 0, 1), true],
      ['pointwise 16x16, 30 images, few rows (in-place panels)', convGeom(30, 24, 16, 16, 16, 1, 1, 1, 1, 0, 0, 1), true],
      ['pointwise 16x16, 10 images, 200 outputs (row-split tasks, a last group of 2 images)', convGeom(10, 32, 16, 16, 200, 1, 1, 1, 1, 0, 0, 1), true],
      ['pointwise 8x8 (smaller planes: no partials)', convGeom(40, 24, 8, 8, 16, 1, 1, 1, 1, 0, 0, 1), false],
      // image groups of 867 columns (17x17, 3 images): column ranges that do not start on a GEMM
      // panel, with row-split tasks (B must not be prepacked then)
      ['pointwise 17x17, 9 images, 256 -> 512', convGeom(9, 256, 17, 17, 512, 1, 1, 1, 1, 0, 0, 1), true],
      ['pointwise 16x16, 4 images (one image group: no partials, the columns split as usual)', convGeom(4, 16, 16, 16, 24, 1, 1, 1, 1, 0, 0, 1), false],
      ['3x3 stride 2 on the packed GEMM (16x16 outputs)', convGeom(9, 8, 32, 32, 24, 3, 3, 2, 2, 1, 1, 1), true],
      ['depthwise 32x32', convGeom(3, 10, 32, 32, 10, 3, 3, 1, 1, 1, 1, 10), true],
      ['depthwise 16x16 (groups of 4 images span tasks: no partials)', convGeom(5, 10, 16, 16, 10, 3, 3, 1, 1, 1, 1, 10), false],
      ['depthwise with channel multiplier 2 (no partials)', convGeom(2, 6, 32, 32, 12, 3, 3, 1, 1, 1, 1, 6), false],
      ['3x3 stride 1 32x32 (the direct kernel: no partials)', convGeom(2, 8, 32, 32, 16, 3, 3, 1, 1, 1, 1, 1), false],
    ];
    const same = (got: ArrayLike<number>, want: ArrayLike<number>, what: string): void => {
      assert.equal(got.length, want.length, what);
      for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) assert.fail(`${what}: [${i}] ${got[i]} != ${want[i]}`);
    };
    for (const [name, g, computes] of cases) {
      const x = randn(g.n * g.c * g.h * g.w, 1.5, 0.3);
      const w = randn(g.o * (g.c / g.groups) * g.kh * g.kw, 0.5);
      const hw = g.oh * g.ow;
      for (const withTf of [false, true]) {
        if (withTf && !(g.kh === 1 || g.groups === g.c)) continue;
        const tf = withTf ? { mean: randn(g.c, 0.2), scale: randn(g.c, 1, 0.5), shift: randn(g.c, 1), act: 2 as const } : null;
        forEachIsa((isa) => {
          const what = `${isa} ${name}${withTf ? ' (input transform)' : ''}`;
          const r = be.conv2dWithStats!(x, w, g, tf);
          same(r.y, be.conv2d(x, w, null, g, tf), `${what}: output`);
          if (!computes || isa !== 'avx512') {
            if (isa === 'avx512') assert.equal(r.partials, null, `${what}: no partials expected`);
            if (r.partials === null) return;
          }
          assert.ok(r.partials !== null, `${what}: partials expected`);
          const got = be.batchNormStatsFromPartials!(r.partials, g.n, g.o, hw, 1e-5);
          const want = be.batchNormStats(r.y, g.n, g.o, hw, 1e-5);
          same(got.mean, want.mean, `${what}: mean`);
          same(got.varBiased, want.varBiased, `${what}: variance`);
          same(got.invstd, want.invstd, `${what}: invstd`);
        });
      }
    }
  });

  test('both gradients of a pointwise or depthwise convolution in one pass == the input and weight gradients computed apart, bit for bit', () => {
    // [name, geometry, whether the path applies on AVX-512 (null: it depends on the thread count)]
    const cases: [string, ConvGeom, boolean | null][] = [
      ['32x32, 24 -> 40', convGeom(5, 24, 32, 32, 40, 1, 1, 1, 1, 0, 0, 1), true],
      ['16x16, 36 -> 22 (partial row tiles both ways)', convGeom(3, 36, 16, 16, 22, 1, 1, 1, 1, 0, 0, 1), true],
      ['17x17 (panels cross images: packed per image)', convGeom(2, 12, 17, 17, 20, 1, 1, 1, 1, 0, 0, 1), true],
      ['16x16, 80 input channels (not this path)', convGeom(2, 80, 16, 16, 16, 1, 1, 1, 1, 0, 0, 1), false],
      ['8x8 planes (not this path)', convGeom(4, 16, 8, 8, 16, 1, 1, 1, 1, 0, 0, 1), false],
      ['16x16, 16 -> 512 (the input gradient over two depth blocks)', convGeom(3, 16, 16, 16, 512, 1, 1, 1, 1, 0, 0, 1), true],
      ['16x32 planes', convGeom(3, 12, 16, 32, 20, 1, 1, 1, 1, 0, 0, 1), true],
      ['one input channel (the separate kernels take the depthwise path: not this path)', convGeom(3, 1, 16, 16, 8, 1, 1, 1, 1, 0, 0, 1), false],
      // one image: fewer image chunks than threads falls back (where there are several threads)
      ['one image', convGeom(1, 12, 16, 16, 20, 1, 1, 1, 1, 0, 0, 1), null],
      ['depthwise, one image', convGeom(1, 12, 32, 32, 12, 3, 3, 1, 1, 1, 1, 12), null],
      ['depthwise 32x32', convGeom(3, 12, 32, 32, 12, 3, 3, 1, 1, 1, 1, 12), true],
      ['depthwise 32x32 stride 2', convGeom(3, 12, 32, 32, 12, 3, 3, 2, 2, 1, 1, 12), true],
      ['depthwise 16x16', convGeom(5, 20, 16, 16, 20, 3, 3, 1, 1, 1, 1, 20), true],
      ['depthwise 20x20 (the stride-1 plan path)', convGeom(3, 10, 20, 20, 10, 3, 3, 1, 1, 1, 1, 10), true],
      ['depthwise 20x20 stride 2, 10x10 outputs (not this path)', convGeom(3, 10, 20, 20, 10, 3, 3, 2, 2, 1, 1, 10), false],
      ['depthwise 8x8 (not this path)', convGeom(3, 12, 8, 8, 12, 3, 3, 1, 1, 1, 1, 12), false],
      ['depthwise, channel multiplier 2 (not this path)', convGeom(2, 6, 32, 32, 12, 3, 3, 1, 1, 1, 1, 6), false],
    ];
    for (const [name, g, applies] of cases) {
      const x = randn(g.n * g.c * g.h * g.w, 1.5);
      const w = randn(g.o * (g.c / g.groups) * g.kh * g.kw, 0.5);
      const dy = randn(g.n * g.o * g.oh * g.ow);
      for (const tf of [null, { mean: randn(g.c, 0.2), scale: randn(g.c, 1, 0.5), shift: randn(g.c, 1), act: 2 as const }]) {
        forEachIsa((isa) => {
          const what = `${isa} ${name}${tf ? ' (input transform)' : ''}`;
          const r = be.conv2dBackwardBoth!(dy, x, w, g, tf);
          if (applies !== true || isa !== 'avx512') {
            if (isa === 'avx512' && applies === false) assert.equal(r, null, `${what}: not expected`);
            if (applies === null && isa === 'avx512') assert.equal(r === null, (nativeThreads() ?? 1) > 1, `${what}: falls back with several threads`);
            if (r === null) return;
          }
          assert.ok(r !== null, `${what}: expected`);
          assert.deepEqual(r.dx, be.conv2dBackwardInput(dy, w, g), `${what}: dx`);
          assert.deepEqual(r.dw, be.conv2dBackwardWeight(dy, x, g, tf), `${what}: dw`);
        });
      }
    }
  });

  test('batch norm + activation backward from the partials of the both-gradients passes == its own reductions, bit for bit', () => {
    // [name, geometry of the convolution whose input transform is the batch norm + act, whether
    //  partials are computed on AVX-512 (null: it depends on the thread count)]
    const cases: [string, ConvGeom, boolean | null][] = [
      ['pointwise 32x32, 96 -> 24 (more than 64 input channels: for the partials)', convGeom(4, 96, 32, 32, 24, 1, 1, 1, 1, 0, 0, 1), true],
      ['pointwise 32x32, 16 -> 40', convGeom(3, 16, 32, 32, 40, 1, 1, 1, 1, 0, 0, 1), true],
      ['pointwise 16x16, 72 -> 16, 64 images (groups of 4 images: 8 chunks of 8)', convGeom(64, 72, 16, 16, 16, 1, 1, 1, 1, 0, 0, 1), true],
      ['pointwise 16x16, 72 -> 16, 12 images (8 chunks: groups of 4 span chunks, no partials)', convGeom(12, 72, 16, 16, 16, 1, 1, 1, 1, 0, 0, 1), false],
      ['32x32 (groups of one image)', convGeom(5, 12, 32, 32, 12, 3, 3, 1, 1, 1, 1, 12), true],
      ['32x32 stride 2', convGeom(3, 10, 32, 32, 10, 3, 3, 2, 2, 1, 1, 10), true],
      ['16x16, 64 images (groups of 4 images: 16 chunks of 4)', convGeom(64, 8, 16, 16, 8, 3, 3, 1, 1, 1, 1, 8), true],
      ['16x16, 40 images (16 chunks of 2 or 3 images: groups of 4 span chunks, no partials)', convGeom(40, 6, 16, 16, 6, 3, 3, 1, 1, 1, 1, 6), false],
      ['16x16, 9 images (chunks of one image: no partials)', convGeom(9, 6, 16, 16, 6, 3, 3, 1, 1, 1, 1, 6), false],
      ['20x20, 32 images (the stride-1 plan path; groups of 2 images)', convGeom(32, 8, 20, 20, 8, 3, 3, 1, 1, 1, 1, 8), true],
      ['one image', convGeom(1, 8, 32, 32, 8, 3, 3, 1, 1, 1, 1, 8), null],
    ];
    for (const [name, g, computes] of cases) {
      const hw = g.h * g.w;
      const x = randn(g.n * g.c * hw, 1.5, 0.3);
      const w = randn(g.o * (g.c / g.groups) * g.kh * g.kw, 0.5);
      const dy = randn(g.n * g.o * g.oh * g.ow);
      const bn = bnActOf(x, g.n, g.c, hw);
      const { st, scale, shift } = bn;
      for (const act of [1, 2] as const) {
        const tf = { mean: st.mean, scale, shift, act };
        forEachIsa((isa) => {
          const what = `${isa} ${name} act ${act}`;
          const r = be.conv2dBackwardBoth!(dy, x, w, g, tf, true);
          if (isa === 'avx512' && computes !== null) assert.equal(r !== null && r.bnParts != null, computes, `${what}: partials ${computes ? '' : 'not '}expected`);
          if (r === null || !r.bnParts) return;
          sameFromPartials(what, r.bnParts, r.dx, x, bn, g.n, g.c, hw, act);
        });
      }
      // no activation in the transform, or not asked for: no partials
      const r0 = be.conv2dBackwardBoth!(dy, x, w, g, { mean: st.mean, scale, shift, act: 0 }, true);
      assert.ok(r0 === null || !r0.bnParts, `${name}: no partials without an activation`);
      const r1 = be.conv2dBackwardBoth!(dy, x, w, g, { mean: st.mean, scale, shift, act: 2 });
      assert.ok(r1 === null || !r1.bnParts, `${name}: no partials unless asked`);
    }
  });

  test('pointwise both gradients with dy from a batch norm + activation backward applied while reading == on the applied dy, bit for bit', () => {
    // [name, geometry of the pointwise convolution (its output is the batch norm's input)]
    const cases: [string, ConvGeom][] = [
      ['32x32, 24 -> 40', convGeom(8, 24, 32, 32, 40, 1, 1, 1, 1, 0, 0, 1)],
      ['16x16, 12 -> 30', convGeom(9, 12, 16, 16, 30, 1, 1, 1, 1, 0, 0, 1)],
      ['17x17, 8 -> 20', convGeom(4, 8, 17, 17, 20, 1, 1, 1, 1, 0, 0, 1)],
    ];
    for (const [name, g] of cases) {
      const P = g.oh * g.ow;
      const x = randn(g.n * g.c * g.h * g.w, 1.5);
      const w = randn(g.o * g.c, 0.5);
      const gy = randn(g.n * g.o * P); // the activation output's gradient
      const xb = randn(g.n * g.o * P, 1.5, 0.3); // the batch norm's input (the convolution's output)
      const st = be.batchNormStats(xb, g.n, g.o, P, 1e-5);
      const scale = randn(g.o, 0.5, 1);
      const shift = randn(g.o, 0.5);
      const coef = randn(3 * g.o, 0.5);
      for (const act of [1, 2] as const) {
        const t = { x: xb, mean: st.mean, scale, shift, coef, act };
        for (const tf of [null, { mean: randn(g.c, 0.2), scale: randn(g.c, 1, 0.5), shift: randn(g.c, 1), act: 2 as const }]) {
          forEachIsa((isa) => {
            const what = `${isa} ${name} act ${act}${tf ? ' (input transform)' : ''}`;
            const dy = be.batchNormActBackwardApply!(gy, t, g.n, g.o, P);
            const r = be.conv2dBackwardBoth!(gy, x, w, g, tf, false, t);
            if (isa === 'avx512') assert.ok(r !== null, `${what}: expected`);
            if (r === null) return;
            assert.deepEqual(r.dx, be.conv2dBackwardInput(dy, w, g), `${what}: dx`);
            assert.deepEqual(r.dw, be.conv2dBackwardWeight(dy, x, g, tf), `${what}: dw`);
          });
        }
      }
    }
  });

  test('depthwise both gradients with dy from a batch norm + activation backward applied while reading == on the applied dy, bit for bit (with the partials of the batch norm before)', () => {
    const cases: [string, ConvGeom][] = [
      ['32x32', convGeom(4, 10, 32, 32, 10, 3, 3, 1, 1, 1, 1, 10)],
      ['32x32 stride 2', convGeom(3, 10, 32, 32, 10, 3, 3, 2, 2, 1, 1, 10)],
      ['16x16, 64 images', convGeom(64, 6, 16, 16, 6, 3, 3, 1, 1, 1, 1, 6)],
    ];
    for (const [name, g] of cases) {
      const hw = g.h * g.w, P = g.oh * g.ow;
      const x = randn(g.n * g.c * hw, 1.5, 0.3);
      const w = randn(g.c * 9, 0.5);
      const gy = randn(g.n * g.o * P);
      const xb = randn(g.n * g.o * P, 1.5, 0.3);
      const st = be.batchNormStats(xb, g.n, g.o, P, 1e-5);
      const t = { x: xb, mean: st.mean, scale: randn(g.o, 0.5, 1), shift: randn(g.o, 0.5), coef: randn(3 * g.o, 0.5), act: 2 as const };
      const sx = be.batchNormStats(x, g.n, g.c, hw, 1e-5);
      const tf = { mean: sx.mean, scale: randn(g.c, 0.5, 1), shift: randn(g.c, 0.5), act: 2 as const };
      forEachIsa((isa) => {
        const what = `${isa} ${name}`;
        const dy = be.batchNormActBackwardApply!(gy, t, g.n, g.o, P);
        const r = be.conv2dBackwardBoth!(gy, x, w, g, tf, true, t);
        if (isa === 'avx512') assert.ok(r !== null && r.bnParts, `${what}: expected, with partials`);
        if (r === null) return;
        const want = be.conv2dBackwardBoth!(dy, x, w, g, tf, true)!;
        assert.deepEqual(r.dx, want.dx, `${what}: dx`);
        assert.deepEqual(r.dw, want.dw, `${what}: dw`);
        assert.deepEqual(r.bnParts, want.bnParts, `${what}: partials`);
      });
    }
  });

  test('input gradient with the partials of the batch norm + activation before (pointwise, GEMM tasks of whole image groups) == batchNormActBackward\'s own reductions, bit for bit', () => {
    // [name, geometry, whether partials are computed]
    const cases: [string, ConvGeom, boolean][] = [
      ['32x32, 80 -> 16', convGeom(4, 80, 32, 32, 16, 1, 1, 1, 1, 0, 0, 1), true],
      ['16x16, 96 -> 24, 10 images (groups of 4: the last one partial)', convGeom(10, 96, 16, 16, 24, 1, 1, 1, 1, 0, 0, 1), true],
      ['16x16, 4 images (one image group: no partials)', convGeom(4, 72, 16, 16, 24, 1, 1, 1, 1, 0, 0, 1), false],
      ['8x8 (no partials)', convGeom(40, 72, 8, 8, 16, 1, 1, 1, 1, 0, 0, 1), false],
    ];
    for (const [name, g, computes] of cases) {
      const hw = g.h * g.w;
      const bx = randn(g.n * g.c * hw, 1.5, 0.3);
      const w = randn(g.o * g.c, 0.5);
      const dy = randn(g.n * g.o * hw);
      const bn = bnActOf(bx, g.n, g.c, hw);
      for (const act of [1, 2] as const) {
        forEachIsa((isa) => {
          const what = `${isa} ${name} act ${act}`;
          const r = be.conv2dBackwardInputBnParts!(dy, w, g, bx, { mean: bn.st.mean, scale: bn.scale, shift: bn.shift, act });
          assert.deepEqual(r.dx, be.conv2dBackwardInput(dy, w, g), `${what}: dx`);
          assert.equal(r.bnParts !== null, computes && isa === 'avx512', `${what}: partials ${computes && isa === 'avx512' ? '' : 'not '}expected (AVX-512 only)`);
          if (!r.bnParts) return;
          sameFromPartials(what, r.bnParts, r.dx, bx, bn, g.n, g.c, hw, act);
        });
      }
    }
  });

  test('elementwise kernels, including lengths that span several threads', () => {
    for (const len of [0, 1, 31, 1000, 200_003]) {
      const a = randn(len, 8);
      const b = randn(len, 8);
      const y6 = randn(len, 4, 3); // straddles 0 and 6
      forEachIsa((isa) => {
        const w = `${isa} len ${len}`;
        assert.deepEqual(be.relu(a), ref.relu(a), `${w} relu`);
        assert.deepEqual(be.relu6(a), ref.relu6(a), `${w} relu6`);
        assert.deepEqual(be.reluBackward(b, a), ref.reluBackward(b, a), `${w} reluBackward`);
        assert.deepEqual(be.relu6Backward(b, y6), ref.relu6Backward(b, y6), `${w} relu6Backward`);
        assert.deepEqual(be.add(a, b), ref.add(a, b), `${w} add`);
        assert.deepEqual(be.mul(a, b), ref.mul(a, b), `${w} mul`);
        close(be.scale(a, -0.37), ref.scale(a, -0.37), FWD, `${w} scale`);
        const acc1 = a.slice();
        const acc2 = a.slice();
        be.addInPlace(acc1, b);
        ref.addInPlace(acc2, b);
        assert.deepEqual(acc1, acc2, `${w} addInPlace`);
      });
    }
  });

  test('relu and relu6 propagate NaN like PyTorch; backward masks on the output', () => {
    const x = Float32Array.from([NaN, -1, 0, 3, 7, -0]);
    forEachIsa(() => {
      assert.deepEqual(Array.from(be.relu(x)), Array.from(ref.relu(x)));
      assert.deepEqual(Array.from(be.relu6(x)), Array.from(ref.relu6(x)));
      assert.deepEqual(Array.from(be.reluBackward(Float32Array.from([1, 1, 1, 1, 1, 1]), x)), [0, 0, 0, 1, 1, 0]);
      assert.deepEqual(Array.from(be.relu6Backward(Float32Array.from([1, 1, 1, 1, 1, 1]), x)), [0, 0, 0, 1, 0, 0]);
    });
  });

  test('max pool forward (values and argmax) and backward', () => {
    const cases: PoolGeom[] = [
      poolGeom(2, 3, 9, 9, 3, 3, 2, 2, 1, 1),
      poolGeom(2, 4, 8, 8, 2, 2, 2, 2, 0, 0),
      poolGeom(1, 2, 7, 6, 3, 2, 1, 2, 1, 0),
      poolGeom(3, 5, 32, 32, 3, 3, 2, 2, 1, 1),
    ];
    for (const g of cases) {
      const x = randn(g.n * g.c * g.h * g.w);
      const r0 = ref.maxPool2d(x, g);
      const dy = randn(r0.y.length);
      const dx0 = ref.maxPool2dBackward(dy, r0.argmax, g);
      forEachIsa((isa) => {
        const r = be.maxPool2d(x, g);
        assert.deepEqual(r.y, r0.y, `${isa} maxpool values`);
        assert.deepEqual(r.argmax, r0.argmax, `${isa} maxpool argmax`);
        close(be.maxPool2dBackward(dy, r0.argmax, g), dx0, BWD, `${isa} maxpool backward`);
      });
    }
    // ties pick the first maximum, like the reference
    const g = poolGeom(1, 1, 2, 2, 2, 2, 2, 2, 0, 0);
    assert.deepEqual(Array.from(be.maxPool2d(Float32Array.from([1, 1, 1, 1]), g).argmax), [0]);
  });

  test('adaptive average pool forward and backward (overlapping windows)', () => {
    // n, c, h, w, oh, ow
    const cases: [number, number, number, number, number, number][] = [
      [2, 3, 7, 7, 1, 1],
      [2, 3, 7, 9, 3, 4],
      [1, 2, 4, 4, 4, 4],
      [2, 2, 5, 5, 2, 2],
      [4, 64, 16, 16, 1, 1],
      [2, 8, 40, 40, 1, 1],
    ];
    for (const [n, c, h, w, oh, ow] of cases) {
      const x = randn(n * c * h * w);
      const dy = randn(n * c * oh * ow);
      const y0 = ref.adaptiveAvgPool2d(x, n, c, h, w, oh, ow);
      const dx0 = ref.adaptiveAvgPool2dBackward(dy, n, c, h, w, oh, ow);
      forEachIsa((isa) => {
        close(be.adaptiveAvgPool2d(x, n, c, h, w, oh, ow), y0, FWD, `${isa} avgpool ${h}x${w}->${oh}x${ow}`);
        close(be.adaptiveAvgPool2dBackward(dy, n, c, h, w, oh, ow), dx0, BWD, `${isa} avgpool backward`);
      });
    }
  });

  test('row vector, row sums, channel sums', () => {
    for (const [rows, cols] of [
      [1, 1],
      [128, 10],
      [7, 1000],
    ]) {
      const y = randn(rows * cols);
      const bias = randn(cols);
      const y1 = y.slice();
      const y2 = y.slice();
      be.addRowVectorInPlace(y1, bias, rows, cols);
      ref.addRowVectorInPlace(y2, bias, rows, cols);
      close(y1, y2, FWD, 'addRowVectorInPlace');
      close(be.sumRows(y, rows, cols), ref.sumRows(y, rows, cols), FWD, 'sumRows');
    }
    for (const [n, c, hw] of [
      [2, 3, 5],
      [16, 32, 64],
      [3, 5, 1],
      [8, 64, 256],
    ]) {
      const x = randn(n * c * hw, 1, 0.25);
      const want = ref.sumChannels(x, n, c, hw);
      forEachIsa((isa) => close(be.sumChannels(x, n, c, hw), want, FWD, `${isa} sumChannels`));
    }
  });

  test('log softmax forward and backward', () => {
    for (const [rows, cols] of [
      [5, 10],
      [3, 1000],
      [1, 1],
    ]) {
      const x = randn(rows * cols, 10);
      const y0 = ref.logSoftmax(x, rows, cols);
      const dy = randn(rows * cols);
      close(be.logSoftmax(x, rows, cols), y0, FWD, 'logSoftmax');
      close(be.logSoftmaxBackward(dy, y0, rows, cols), ref.logSoftmaxBackward(dy, y0, rows, cols), BWD, 'logSoftmaxBackward');
    }
  });

  test('Adam and SGD fused updates', () => {
    seed = 4242; // data independent of the tests before this one
    // m = b1*m + (1-b1)*g can cancel to near zero: measure its error against the terms' size
    const closeM = (got: Float32Array, want: Float32Array, m: Float32Array, g: Float32Array, what: string): void => {
      let d = 0;
      let sc = 0;
      for (let i = 0; i < want.length; i++) {
        d += (got[i] - want[i]) ** 2;
        sc += (0.9 * Math.abs(m[i]) + 0.1 * Math.abs(g[i])) ** 2;
      }
      assert.ok(Math.sqrt(d / sc) <= FWD, `${what}: relative error ${Math.sqrt(d / sc).toExponential(3)} > ${FWD}`);
    };
    for (const len of [1, 37, 150_001]) {
      for (const wd of [0, 0.01]) {
        for (const step of [1, 10]) {
          const p = randn(len);
          const g = randn(len);
          const m = randn(len, 0.1);
          const v = randn(len, 0.01, 0.02);
          const h = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: wd, step };
          const [p0, m0, v0] = [p.slice(), m.slice(), v.slice()];
          ref.adamStepInPlace(p0, g, m0, v0, h);
          forEachIsa((isa) => {
            const [p1, m1, v1] = [p.slice(), m.slice(), v.slice()];
            be.adamStepInPlace(p1, g, m1, v1, h);
            close(p1, p0, FWD, `${isa} adam param`);
            closeM(m1, m0, m, g, `${isa} adam m`);
            close(v1, v0, FWD, `${isa} adam v`);
          });
        }
      }
      const sgdCases = [
        { lr: 0.1, momentum: 0, dampening: 0, nesterov: false, weightDecay: 0, firstStep: true },
        { lr: 0.1, momentum: 0, dampening: 0, nesterov: false, weightDecay: 5e-4, firstStep: false },
        { lr: 0.1, momentum: 0.9, dampening: 0, nesterov: false, weightDecay: 5e-4, firstStep: true },
        { lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: false, weightDecay: 0, firstStep: false },
        { lr: 0.05, momentum: 0.9, dampening: 0, nesterov: true, weightDecay: 1e-4, firstStep: false },
      ];
      for (const h of sgdCases) {
        const p = randn(len);
        const g = randn(len);
        const buf = h.momentum !== 0 ? randn(len) : null;
        const p0 = p.slice();
        const b0 = buf ? buf.slice() : null;
        ref.sgdStepInPlace(p0, g, b0, h);
        forEachIsa((isa) => {
          const p1 = p.slice();
          const b1 = buf ? buf.slice() : null;
          be.sgdStepInPlace(p1, g, b1, h);
          close(p1, p0, FWD, `${isa} sgd param ${JSON.stringify(h)}`);
          if (b1 && b0) close(b1, b0, FWD, `${isa} sgd buffer`);
        });
      }
    }
  });

  test('results do not depend on the number of threads', () => {
    const g = convGeom(8, 32, 12, 12, 48, 3, 3, 1, 1, 1, 1, 1);
    const gs2 = convGeom(8, 32, 12, 12, 48, 3, 3, 2, 2, 1, 1, 1);
    const gdw = convGeom(8, 32, 12, 12, 32, 3, 3, 1, 1, 1, 1, 32);
    const x = randn(g.n * g.c * g.h * g.w);
    const wt = randn(g.o * g.c * 9);
    const wdw = randn(32 * 9);
    const dy = randn(g.n * g.o * g.oh * g.ow);
    const dy2 = randn(gs2.n * gs2.o * gs2.oh * gs2.ow);
    const dydw = randn(gdw.n * gdw.o * gdw.oh * gdw.ow);
    const a = randn(300 * 700);
    const b = randn(700 * 500);
    const run = (): F32[] => [
      be.matmul(a, b, 300, 500, 700, false, false),
      be.matmul(b, a, 500, 300, 700, true, true),
      be.conv2d(x, wt, null, g),
      be.conv2dBackwardInput(dy, wt, g),
      be.conv2dBackwardWeight(dy, x, g),
      be.conv2dBackwardInput(dy2, wt, gs2),
      be.conv2dBackwardWeight(dy2, x, gs2),
      be.conv2d(x, wdw, null, gdw),
      be.conv2dBackwardInput(dydw, wdw, gdw),
      be.conv2dBackwardWeight(dydw, x, gdw),
      be.batchNormTrain(x, null, null, g.n, g.c, g.h * g.w, 1e-5).y,
      be.batchNormBackward(x, x, new Float32Array(32), new Float32Array(32).fill(1), null, g.n, g.c, g.h * g.w).dx,
      be.sumChannels(x, g.n, g.c, g.h * g.w),
    ];
    try {
      assert.equal(setNativeThreads(1), 1);
      const one = run();
      assert.equal(setNativeThreads(4), 4);
      const four = run();
      setNativeThreads(0);
      const dflt = run();
      for (let i = 0; i < one.length; i++) {
        assert.deepEqual(four[i], one[i], `result ${i}: 4 threads vs 1`);
        assert.deepEqual(dflt[i], one[i], `result ${i}: default threads vs 1`);
      }
      // and the GEMM agrees with the reference
      close(one[0], ref.matmul(a, b, 300, 500, 700, false, false), FWD, 'matmul 300x500x700');
    } finally {
      setNativeThreads(0);
    }
  });

  test('wrong buffer sizes throw instead of corrupting memory', () => {
    const g = convGeom(2, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1);
    assert.throws(() => be.conv2d(new Float32Array(10), randn(4 * 3 * 9), null, g), RangeError);
    assert.throws(() => be.conv2d(randn(2 * 3 * 25), randn(5), null, g), RangeError);
    assert.throws(() => be.matmul(new Float32Array(5), new Float32Array(6), 2, 3, 3, false, false), RangeError);
    assert.throws(() => be.add(new Float32Array(3), new Float32Array(4)), /differ/);
    assert.throws(() => be.batchNormTrain(new Float32Array(3), null, null, 2, 2, 2, 1e-5), RangeError);
    const bad = { ...g, oh: 9 };
    assert.throws(() => be.conv2d(randn(2 * 3 * 25), randn(4 * 3 * 9), null, bad), RangeError);
    // an input transform with too few channel coefficients
    const gp = convGeom(2, 3, 5, 5, 4, 1, 1, 1, 1, 0, 0, 1);
    assert.throws(() => be.conv2d(randn(2 * 3 * 25), randn(12), null, gp, { mean: randn(2), scale: randn(3), shift: randn(3), act: 1 }), /input transform mean has 2 elements, expected 3/);
    // a block whose depthwise epilogue is too short, or whose shapes do not chain
    const g1 = convGeom(1, 4, 16, 16, 8, 1, 1, 1, 1, 0, 0, 1);
    const g2 = convGeom(1, 8, 16, 16, 8, 3, 3, 1, 1, 1, 1, 8);
    const g3 = convGeom(1, 8, 16, 16, 4, 1, 1, 1, 1, 0, 0, 1);
    const e = (c: number) => ({ mean: randn(c), scale: randn(c), shift: randn(c), res: null, act: 2 as const });
    assert.throws(() => be.conv2dBlock!({ x: randn(4 * 256), w: randn(32), b: null, g: g1, epi: e(8) }, { x: new Float32Array(0), w: randn(72), b: null, g: g2, epi: { ...e(8), mean: randn(7) } }, randn(32), null, g3, e(4)), RangeError);
    assert.equal(be.conv2dBlock!({ x: randn(4 * 256), w: randn(32), b: null, g: g1, epi: e(8) }, { x: new Float32Array(0), w: randn(72), b: null, g: g2, epi: e(8) }, randn(40), null, { ...g3, c: 10 }, e(4)), null);
    // a geometry whose tensor sizes overflow 64 bits (would wrap to small buffer checks): refused
    // by the addon itself (the JS wrappers would fail earlier, allocating the output)
    const addon = createRequire(import.meta.url)(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'convnets_native.node')) as { conv2d: (...a: unknown[]) => void };
    const huge = new Int32Array([65536, 65536, 65536, 65536, 1, 1, 1, 1, 1, 0, 0, 1, 65536, 65536]);
    assert.throws(() => addon.conv2d(new Float32Array(4), new Float32Array(65536), null, new Float32Array(4), huge), /conv geometry too large/);
  });

  test('huge-page advice: taken where Linux has transparent huge pages on "madvise" or "always", values intact', () => {
    const addon = createRequire(import.meta.url)(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'convnets_native.node')) as { adviseHugePages: (a: unknown) => boolean };
    assert.throws(() => addon.adviseHugePages([1, 2, 3]), /adviseHugePages: the buffer must be a Float32Array/);
    const a = randn(3 << 20); // 12 MB: whole 2 MB pages inside it wherever it starts
    const copy = a.slice();
    const ok = addon.adviseHugePages(a);
    assert.deepEqual(a, copy);
    assert.equal(addon.adviseHugePages(new Float32Array(16)), false, 'no whole huge page inside 64 bytes');
    let thp = '';
    try {
      thp = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    } catch {
      // not Linux, or no THP support: nothing to expect
    }
    if (/\[(madvise|always)\]/.test(thp)) assert.equal(ok, true);
    if (process.platform !== 'linux') assert.equal(ok, false);
  });
});
