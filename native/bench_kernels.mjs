#!/usr/bin/env node
// Micro benchmark of the native kernels (run manually after `node-gyp rebuild`):
//   node native/bench_kernels.mjs [--threads 1,2] [--batch 64] [--isa avx512] [--only gemm,conv,dw,bn]
// Prints GFLOP/s for SGEMM 1024^3 and for the convolutions of ResNet18 / MobileNetV2 on CIFAR
// (forward, backward-input, backward-weight), and GB/s for the memory-bound kernels.
//   node native/bench_kernels.mjs --train mobilenetv2 [--batch 128] [--threads 2] [--steps 3]
// times whole SGD training steps of a model (needs `npm run build`) with a per-kernel breakdown.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const A = require(path.join(root, 'build', 'Release', 'convnets_native.node'));

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : def;
};
const threadList = opt('threads', `1,${A.getThreads()}`).split(',').map(Number);
const batch = Number(opt('batch', '64'));
const only = opt('only', 'gemm,conv,dw,bn').split(',');
const trainModel = opt('train', '');
if (opt('isa', '')) {
  if (!A.setIsa(opt('isa', ''))) throw new Error(`ISA ${opt('isa', '')} not supported here`);
}

// 64-byte aligned, as the library's own buffers (arena.ts) are
function rand(n) {
  const b = new ArrayBuffer(4 * n + 64);
  const mis = A.byteAlignment(new Float32Array(b, 0, 1));
  const a = new Float32Array(b, (64 - mis) % 64, n);
  for (let i = 0; i < n; i++) a[i] = Math.random() - 0.5;
  return a;
}

/** best-of-reps wall time in ms, after one warm-up call */
function time(fn, minMs = 150, maxReps = 20) {
  fn();
  let best = Infinity;
  let total = 0;
  for (let r = 0; r < maxReps && (total < minMs || r < 2); r++) {
    const t = performance.now();
    fn();
    const dt = performance.now() - t;
    total += dt;
    best = Math.min(best, dt);
  }
  return best;
}

function geom(n, c, h, w, o, k, s, p, groups = 1) {
  const oh = Math.floor((h + 2 * p - k) / s) + 1;
  const ow = Math.floor((w + 2 * p - k) / s) + 1;
  return { g: Int32Array.from([n, c, h, w, o, k, k, s, s, p, p, groups, oh, ow]), n, c, h, w, o, k, oh, ow, groups };
}

function benchConv(label, G) {
  const { n, c, h, w, o, k, oh, ow, groups } = G;
  const x = rand(n * c * h * w);
  const wt = rand(o * (c / groups) * k * k);
  const y = new Float32Array(n * o * oh * ow);
  const dy = rand(y.length);
  const dx = new Float32Array(x.length);
  const dw = new Float32Array(wt.length);
  const flops = 2 * n * o * (c / groups) * k * k * oh * ow;
  const tf = time(() => A.conv2d(x, wt, null, y, G.g));
  const ti = time(() => A.conv2dBackwardInput(dy, wt, dx, G.g));
  const tw = time(() => A.conv2dBackwardWeight(dy, x, dw, G.g));
  const gf = (t) => (flops / t / 1e6).toFixed(1).padStart(6);
  console.log(
    `  ${label.padEnd(34)} fwd ${tf.toFixed(2).padStart(7)} ms ${gf(tf)} GF/s | bwd-in ${ti.toFixed(2).padStart(7)} ms ${gf(ti)} | bwd-w ${tw.toFixed(2).padStart(7)} ms ${gf(tw)}`,
  );
  return tf + ti + tw;
}

if (trainModel) {
  await trainBench(trainModel);
  process.exit(0);
}

async function trainBench(name) {
  // import only what a training step needs (dist/src/index.js also pulls in the data and CLI
  // dependencies)
  const d = (...p) => path.join(root, 'dist', 'src', ...p);
  const cn = {
    models: await import(d('models', 'index.js')),
    optim: await import(d('optim', 'index.js')),
    F: await import(d('tensor', 'functional.js')),
    tensor: (await import(d('tensor', 'tensor.js'))).tensor,
    setBackend: (await import(d('backend', 'registry.js'))).setBackend,
  };
  const native = await import(d('backend', 'native.js'));
  const steps = Number(opt('steps', '3'));
  const be = native.loadNativeBackend().backend;
  if (!be) throw new Error('native backend unavailable');
  cn.setBackend('native');
  const stats = new Map();
  for (const k of Object.keys(be)) {
    if (typeof be[k] !== 'function') continue;
    const f = be[k];
    be[k] = (...a) => {
      const t = performance.now();
      const r = f(...a);
      const g = a[a.length - 1];
      const key = k.startsWith('conv2d') ? `${k} ${g.groups === g.c && g.c > 1 ? 'dw' : `${g.kh}x${g.kw}`}` : k;
      const s = stats.get(key) ?? { n: 0, t: 0 };
      s.n++;
      s.t += performance.now() - t;
      stats.set(key, s);
      return r;
    };
  }
  for (const T of threadList) {
    native.setNativeThreads(T);
    const net = cn.models.create(name);
    net.train();
    const opt_ = new cn.optim.SGD(net.parameters(), { lr: 0.01, momentum: 0.9 });
    const x = cn.tensor(rand(batch * 3 * 32 * 32), [batch, 3, 32, 32]);
    const y = Int32Array.from({ length: batch }, (_, i) => i % 10);
    let total = 0;
    for (let it = 0; it <= steps; it++) {
      if (it === 1) stats.clear();
      const t0 = performance.now();
      opt_.zeroGrad();
      cn.F.crossEntropy(net.forward(x), y).backward();
      opt_.step();
      if (it >= 1) total += performance.now() - t0;
      await new Promise((r) => setImmediate(r));
    }
    console.log(`${name} batch ${batch}, ${native.nativeThreads()} thread(s): ${(total / steps).toFixed(1)} ms/step, ${((batch * steps * 1000) / total).toFixed(1)} img/s`);
    for (const [k, s] of [...stats].sort((a, b) => b[1].t - a[1].t).slice(0, 12))
      console.log(`  ${k.padEnd(28)} ${(s.t / steps).toFixed(1).padStart(8)} ms/step ${String(s.n / steps).padStart(4)} calls`);
  }
}

console.log(`convnets native kernels: isa ${A.getIsa()}, default threads ${A.getThreads()}, batch ${batch}`);
for (const T of threadList) {
  A.setThreads(T);
  console.log(`\n== ${A.getThreads()} thread(s)`);
  if (only.includes('gemm')) {
    for (const N of [256, 1024]) {
      const a = rand(N * N);
      const b = rand(N * N);
      const c = new Float32Array(N * N);
      const t = time(() => A.matmul(a, b, c, N, N, N, false, false));
      console.log(`  sgemm ${N}^3: ${t.toFixed(2)} ms, ${((2 * N ** 3) / t / 1e6).toFixed(1)} GFLOP/s`);
    }
  }
  if (only.includes('conv')) {
    console.log('  ResNet18 (CIFAR) 3x3 convs:');
    let tot = 0;
    tot += benchConv('conv1 3->64 32x32', geom(batch, 3, 32, 32, 64, 3, 1, 1));
    tot += benchConv('64->64 32x32', geom(batch, 64, 32, 32, 64, 3, 1, 1));
    tot += benchConv('64->128 s2 32x32', geom(batch, 64, 32, 32, 128, 3, 2, 1));
    tot += benchConv('128->128 16x16', geom(batch, 128, 16, 16, 128, 3, 1, 1));
    tot += benchConv('128->256 s2 16x16', geom(batch, 128, 16, 16, 256, 3, 2, 1));
    tot += benchConv('256->256 8x8', geom(batch, 256, 8, 8, 256, 3, 1, 1));
    tot += benchConv('256->512 s2 8x8', geom(batch, 256, 8, 8, 512, 3, 2, 1));
    tot += benchConv('512->512 4x4', geom(batch, 512, 4, 4, 512, 3, 1, 1));
    tot += benchConv('1x1 s2 128->256 16x16', geom(batch, 128, 16, 16, 256, 1, 2, 0));
    console.log('  MobileNetV2 pointwise convs:');
    tot += benchConv('1x1 24->144 32x32', geom(batch, 24, 32, 32, 144, 1, 1, 0));
    tot += benchConv('1x1 144->24 32x32', geom(batch, 144, 32, 32, 24, 1, 1, 0));
    tot += benchConv('1x1 96->24 32x32', geom(batch, 96, 32, 32, 24, 1, 1, 0));
    tot += benchConv('1x1 32->16 32x32', geom(batch, 32, 32, 32, 16, 1, 1, 0));
    tot += benchConv('1x1 16->96 32x32', geom(batch, 16, 32, 32, 96, 1, 1, 0));
    tot += benchConv('1x1 192->32 16x16', geom(batch, 192, 16, 16, 32, 1, 1, 0));
    tot += benchConv('1x1 64->384 8x8', geom(batch, 64, 8, 8, 384, 1, 1, 0));
    tot += benchConv('1x1 320->1280 4x4', geom(batch, 320, 4, 4, 1280, 1, 1, 0));
    console.log('  MobileNetV1 pointwise convs (small planes):');
    tot += benchConv('1x1 512->512 4x4', geom(batch, 512, 4, 4, 512, 1, 1, 0));
    tot += benchConv('1x1 1024->1024 2x2', geom(batch, 1024, 2, 2, 1024, 1, 1, 0));
    tot += benchConv('1x1 128->128 16x16', geom(batch, 128, 16, 16, 128, 1, 1, 0));
    console.log(`  total ${tot.toFixed(1)} ms`);
  }
  if (only.includes('dw')) {
    console.log('  depthwise 3x3:');
    benchConv('dw 144 32x32 s1', geom(batch, 144, 32, 32, 144, 3, 1, 1, 144));
    benchConv('dw 144 32x32 s2', geom(batch, 144, 32, 32, 144, 3, 2, 1, 144));
    benchConv('dw 384 8x8 s1', geom(batch, 384, 8, 8, 384, 3, 1, 1, 384));
    benchConv('dw 960 4x4 s1', geom(batch, 960, 4, 4, 960, 3, 1, 1, 960));
  }
  if (only.includes('bn')) {
    const c = 144;
    const hw = 32 * 32;
    const n = batch;
    const x = rand(n * c * hw);
    const y = new Float32Array(x.length);
    const dx = new Float32Array(x.length);
    const m = new Float32Array(c);
    const v = new Float32Array(c);
    const is = new Float32Array(c);
    const wt = rand(c);
    const bs = rand(c);
    const dwt = new Float32Array(c);
    const dbs = new Float32Array(c);
    const mb = (x.length * 4) / 1e6;
    const tt = time(() => A.bnTrain(x, wt, bs, y, m, v, is, n, c, hw, 1e-5));
    const tb = time(() => A.bnBackward(y, x, m, is, wt, dx, dwt, dbs, n, c, hw));
    const tr = time(() => A.elementwise(1, x, null, y, 0));
    const trb = time(() => A.elementwise(3, x, y, dx, 0));
    console.log(`  batchnorm (${n}x${c}x32x32, ${mb.toFixed(0)} MB): train ${tt.toFixed(2)} ms, backward ${tb.toFixed(2)} ms`);
    console.log(`  relu6 ${tr.toFixed(2)} ms (${((2 * mb) / tr).toFixed(1)} GB/s), relu6Backward ${trb.toFixed(2)} ms (${((3 * mb) / trb).toFixed(1)} GB/s)`);
  }
}
A.setThreads(0);
