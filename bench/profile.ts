// Where a training step's time goes: every backend kernel call timed (wall clock, by kernel and
// geometry), garbage-collection pauses, and the rest (JS). Not part of `npm run bench`.
//
//   node dist/bench/profile.js [--model mobilenetv2] [--batch 128] [--steps 3] [--threads 2]
//                              [--no-arena] [--infer] [--top 25]
import { PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: 'mobilenetv2' },
    batch: { type: 'string', default: '128' },
    steps: { type: 'string', default: '3' },
    threads: { type: 'string', default: '2' },
    'no-arena': { type: 'boolean', default: false },
    infer: { type: 'boolean', default: false },
    top: { type: 'string', default: '25' },
  },
  strict: true,
});
process.env.CONVNETS_THREADS ??= args.threads;

const cn = await import('../src/index.js');
// (the arena module is absent in older trees: profile them with --no-arena)
const arenaMod = args['no-arena'] ? null : await import('../src/backend/arena.js');
const be = cn.getBackend() as unknown as Record<string, unknown>;

interface Stat {
  ms: number;
  calls: number;
}
const stats = new Map<string, Stat>();
let recording = false;
const describeArgs = (name: string, a: unknown[]): string => {
  const g = a.find((v) => v && typeof v === 'object' && !ArrayBuffer.isView(v) && 'kh' in (v as object)) as Record<string, number> | undefined;
  if (g) {
    const kind = g.groups === g.c && g.c > 1 ? 'dw' : g.kh === 1 && g.kw === 1 ? 'pw' : `${g.kh}x${g.kw}`;
    return `${name} ${kind} ${g.c}->${g.o} ${g.h}x${g.w} s${g.sh}`;
  }
  if (name.startsWith('batchNorm')) {
    const nums = a.filter((v) => typeof v === 'number') as number[];
    const act = name === 'batchNormApply' || name === 'batchNormActBackward' ? ` act${String(a[a.length - 1])}` : '';
    return process.env.PROFILE_SHAPES ? `${name}${act} ${nums.slice(1, 3).join('x')}` : `${name}${act}`;
  }
  return name;
};
for (const [k, v] of Object.entries(be)) {
  if (typeof v !== 'function') continue;
  const f = v as (...a: unknown[]) => unknown;
  be[k] = (...a: unknown[]): unknown => {
    if (!recording) return f(...a);
    const t = performance.now();
    const r = f(...a);
    const key = describeArgs(k, a);
    const s = stats.get(key) ?? { ms: 0, calls: 0 };
    s.ms += performance.now() - t;
    s.calls++;
    stats.set(key, s);
    return r;
  };
}
let gcMs = 0;
let gcCount = 0;
new PerformanceObserver((list) => {
  if (!recording) return;
  for (const e of list.getEntries()) {
    gcMs += e.duration;
    gcCount++;
  }
}).observe({ entryTypes: ['gc'] });

const batch = Number(args.batch);
cn.manualSeed(0);
const net = cn.models.create(args.model!);
const x = cn.tensor(new Float32Array(batch * 3 * 32 * 32).map((_, i) => ((i * 2654435761) % 1000) / 1000), [batch, 3, 32, 32]);
const y = Array.from({ length: batch }, (_, i) => i % 10);
const opt = new cn.optim.Adam(net.parameters(), { lr: 1e-3 });
const arena = !args['no-arena'];
const step = (): void => {
  if (args.infer) {
    cn.noGrad(() => void net.forward(x).values);
    return;
  }
  opt.zeroGrad();
  const loss = cn.F.crossEntropy(net.forward(x), y);
  loss.backward();
  opt.step();
};
if (args.infer) net.eval();
else net.train();
const run = (): void => (arenaMod ? arenaMod.withArena(step) : step());
run();
run();
const steps = Number(args.steps);
recording = true;
const t0 = performance.now();
for (let i = 0; i < steps; i++) run();
const total = performance.now() - t0;
await new Promise((r) => setTimeout(r, 50)); // let the gc observer deliver
recording = false;

const rows = [...stats.entries()].sort((a, b) => b[1].ms - a[1].ms);
const kernelMs = rows.reduce((s, [, v]) => s + v.ms, 0);
const per = (ms: number): string => (ms / steps).toFixed(ms / steps < 1 ? 3 : 1).padStart(8);
process.stdout.write(`${args.model} batch ${batch} ${args.infer ? 'inference' : 'training'} ${arena ? 'with' : 'without'} arena, ${cn.getBackend().name}, ${process.env.CONVNETS_THREADS} threads\n`);
process.stdout.write(`step ${per(total)} ms = ${(batch / (total / steps / 1000)).toFixed(1)} img/s; kernels ${per(kernelMs)} ms; gc ${per(gcMs)} ms (${(gcCount / steps).toFixed(0)} collections/step); other ${per(total - kernelMs)} ms\n`);
for (const [k, v] of rows.slice(0, Number(args.top))) process.stdout.write(`${per(v.ms)} ms ${String(v.calls / steps).padStart(4)}x  ${k}\n`);
process.stdout.write(`peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MB\n`);
