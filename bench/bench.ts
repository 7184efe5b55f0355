// `npm run bench`: training and inference throughput, batch-1 latency, GFLOP/s and peak RSS of
// the three seed models on this machine, side by side with PyTorch (when /usr/bin/python3 has
// torch) and onnxruntime-node inference (bench_onnx.ts, when the optional dependency is
// installed) in the same run. Prints a table and writes JSON (default bench/results.json).
// Each measurement runs in its own process, one after the other (never two at once).
//
//   npm run bench -- [--models mobilenetv1,mobilenetv2,resnet18] [--batch 128] [--threads 2]
//                    [--train-steps 5] [--no-torch] [--no-onnx] [--no-arena] [--json PATH]
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { median } from './median.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');

const { values: args } = parseArgs({
  options: {
    models: { type: 'string', default: 'mobilenetv1,mobilenetv2,resnet18' },
    batch: { type: 'string', default: '128' },
    threads: { type: 'string', default: '2' },
    'train-steps': { type: 'string', default: '5' },
    'infer-steps': { type: 'string', default: '5' },
    'no-torch': { type: 'boolean', default: false },
    'no-onnx': { type: 'boolean', default: false },
    'no-arena': { type: 'boolean', default: false },
    json: { type: 'string', default: path.join(root, 'bench', 'results.json') },
    worker: { type: 'string' },
  },
  strict: true,
});

const batch = Number(args.batch);
const threads = Number(args.threads);
const trainSteps = Number(args['train-steps']);
const inferSteps = Number(args['infer-steps']);

interface ModelResult {
  train_img_s: number;
  infer_img_s: number;
  latency_ms: number;
  peak_rss_mb?: number;
  train_gflop_s?: number;
  infer_gflop_s?: number;
  macs_per_image?: number;
}

/** GEMM peak: the best GFLOP/s of the backend's matmul at 1024³, the machine's practical peak. */
async function gemmPeak(): Promise<void> {
  const cn = await import('../src/index.js');
  const be = cn.getBackend();
  const n = 1024;
  const a = new Float32Array(n * n).fill(0.5);
  const b = new Float32Array(n * n).fill(0.25);
  be.matmul(a, b, n, n, n, false, false);
  let best = 0;
  // best of 40 (about 0.2 s): on a shared machine a short window catches a slow phase
  for (let i = 0; i < 40; i++) {
    const t = performance.now();
    be.matmul(a, b, n, n, n, false, false);
    best = Math.max(best, (2 * n ** 3) / ((performance.now() - t) / 1000) / 1e9);
  }
  process.stdout.write(JSON.stringify({ backend: be.name, gemm_gflop_s: best }) + '\n');
}

async function worker(name: string): Promise<void> {
  if (name === 'gemm') return gemmPeak();
  const cn = await import('../src/index.js');
  const { summary } = await import('../src/models/summary.js');
  // Steps run inside a step arena (as the trainer's do): outputs are recycled, not collected.
  const { withArena } = await import('../src/backend/arena.js');
  const inArena = args['no-arena'] ? (fn: () => void): void => fn() : (fn: () => void): void => withArena(fn);
  cn.manualSeed(0);
  const net = cn.models.create(name);
  const macs = summary(net, [3, 32, 32]).totalMacs;
  const x = cn.tensor(new Float32Array(batch * 3 * 32 * 32).map((_, i) => ((i * 2654435761) % 1000) / 1000), [batch, 3, 32, 32]);
  const y = Array.from({ length: batch }, (_, i) => i % 10);
  const opt = new cn.optim.Adam(net.parameters(), { lr: 1e-3 });
  const trainStep = (): void =>
    inArena(() => {
      opt.zeroGrad();
      const loss = cn.F.crossEntropy(net.forward(x), y);
      loss.backward();
      opt.step();
    });
  // seconds per step: the median of the steps' times (on this shared machine a slow phase can
  // catch a step or two; PyTorch's and onnxruntime's sides are timed the same way)
  const timed = (fn: () => void, steps: number, warmup = 1): number => {
    for (let i = 0; i < warmup; i++) fn();
    const ts: number[] = [];
    for (let i = 0; i < steps; i++) {
      const t = performance.now();
      fn();
      ts.push((performance.now() - t) / 1000);
    }
    return median(ts);
  };
  net.train();
  const tTrain = timed(trainStep, trainSteps);
  net.eval();
  const tInfer = cn.noGrad(() => timed(() => inArena(() => void net.forward(x).values), inferSteps));
  const x1 = cn.tensor(new Float32Array(3 * 32 * 32).fill(0.5), [1, 3, 32, 32]);
  const tLat = cn.noGrad(() => timed(() => inArena(() => void net.forward(x1).values), 20, 3));
  const r: ModelResult = {
    train_img_s: batch / tTrain,
    infer_img_s: batch / tInfer,
    latency_ms: tLat * 1e3,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    macs_per_image: macs,
    // training ≈ forward + 2× backward = 3× the forward MACs; 2 FLOPs per MAC
    train_gflop_s: (6 * macs * batch) / tTrain / 1e9,
    infer_gflop_s: (2 * macs * batch) / tInfer / 1e9,
  };
  process.stdout.write(JSON.stringify({ backend: cn.getBackend().name, result: r }) + '\n');
}

function runJson(cmd: string, argv: string[], env: NodeJS.ProcessEnv): Record<string, unknown> | null {
  const p = spawnSync(cmd, argv, { env, encoding: 'utf8', maxBuffer: 1 << 24 });
  if (p.status !== 0) {
    process.stderr.write(`bench: ${cmd} ${argv.join(' ')} failed: ${(p.stderr || '').trim().split('\n').slice(-3).join(' | ')}\n`);
    return null;
  }
  const line = p.stdout.trim().split('\n').pop()!;
  return JSON.parse(line) as Record<string, unknown>;
}

function torchAvailable(): boolean {
  if (!existsSync('/usr/bin/python3')) return false;
  return spawnSync('/usr/bin/python3', ['-c', 'import torch'], { encoding: 'utf8' }).status === 0;
}

const TUNED_MALLOC = { MALLOC_MMAP_MAX_: '0', MALLOC_TRIM_THRESHOLD_: '68719476736', MALLOC_TOP_PAD_: '268435456' };

async function main(): Promise<void> {
  if (args.worker) return worker(args.worker);
  const models = args.models!.split(',');
  const env = { ...process.env, CONVNETS_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  const results: Record<string, Record<string, unknown>> = {};
  let backend = '';
  for (const m of models) {
    const ours = runJson(process.execPath, [fileURLToPath(import.meta.url), '--worker', m, '--batch', String(batch), '--train-steps', String(trainSteps), '--infer-steps', String(inferSteps), ...(args['no-arena'] ? ['--no-arena'] : [])], env);
    if (ours) backend = String(ours.backend);
    results[m] = { convnets: ours?.result ?? null };
  }
  const peak = runJson(process.execPath, [fileURLToPath(import.meta.url), '--worker', 'gemm'], env);
  const gemm = peak ? (peak.gemm_gflop_s as number) : undefined;
  for (const m of models) {
    const r = results[m].convnets as ModelResult | null;
    if (r && gemm && r.train_gflop_s) Object.assign(r, { train_pct_of_gemm_peak: (100 * r.train_gflop_s) / gemm });
  }
  const withTorch = !args['no-torch'] && torchAvailable();
  if (withTorch) {
    const py = (extra: string[], envExtra: Record<string, string>): Record<string, unknown> | null =>
      runJson('/usr/bin/python3', [path.join(root, 'bench', 'bench_torch.py'), '--threads', String(threads), '--batch', String(batch), '--train-steps', String(trainSteps), '--infer-steps', String(inferSteps), ...extra], { ...env, ...envExtra });
    for (const m of models) {
      const variants: [string, string[], Record<string, string>][] = [
        ['torch_default', [], {}],
        ['torch_tuned', [], TUNED_MALLOC],
        ['torch_tuned_channels_last', ['--channels-last'], TUNED_MALLOC],
      ];
      for (const [key, extra, envExtra] of variants) {
        const r = py(['--models', m, ...extra], envExtra);
        const mr = r ? ((r.models as Record<string, ModelResult>)[m] as ModelResult & { peak_rss_mb?: number }) : null;
        if (mr && r) mr.peak_rss_mb = r.peak_rss_mb as number;
        results[m][key] = mr;
        if (r) results[m].torch_version = r.torch;
      }
    }
  }
  // onnxruntime-node inference (optional dependency): same input, batch and threads
  let onnxVersion: string | null = null;
  if (!args['no-onnx']) {
    const r = runJson(process.execPath, [path.join(here, 'bench_onnx.js'), '--models', models.join(','), '--batch', String(batch), '--threads', String(threads), '--infer-steps', String(inferSteps)], env);
    if (r && typeof r.error === 'string') process.stderr.write(`bench: onnxruntime skipped: ${r.error}\n`);
    else if (r) {
      onnxVersion = String(r.onnxruntime);
      const om = r.models as Record<string, { infer_img_s: number; latency_ms: number } | null>;
      for (const m of models) results[m].onnxruntime = om[m] ?? null;
    }
  }
  const out = {
    date: new Date().toISOString(),
    machine: { cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, memory_gb: Math.round(os.totalmem() / 2 ** 30), node: process.version, platform: `${process.platform}-${process.arch}` },
    settings: { batch, threads, train_steps: trainSteps, infer_steps: inferSteps, input: '3x32x32 (CIFAR-10)', optimizer: 'Adam lr 1e-3' },
    backend,
    arena: !args['no-arena'],
    onnxruntime: onnxVersion,
    gemm_peak_gflop_s: gemm ?? null,
    results,
  };
  writeFileSync(args.json!, JSON.stringify(out, null, 2) + '\n');
  printTable(out.results, withTorch, onnxVersion !== null);
  if (gemm) process.stdout.write(`\nGEMM peak (1024³ matmul, ${backend}): ${gemm.toFixed(1)} GFLOP/s\n`);
  process.stdout.write(`\nJSON: ${args.json}\n`);
}

function printTable(results: Record<string, Record<string, unknown>>, withTorch: boolean, withOnnx: boolean): void {
  const f = (v: unknown, d = 1): string => (typeof v === 'number' ? v.toFixed(d) : '—');
  const header = ['model', 'metric', 'convnets'];
  if (withTorch) header.push('torch (default)', 'torch (tuned)', 'torch (tuned, ch-last)', 'vs best torch');
  if (withOnnx) header.push('onnxruntime', 'vs onnxruntime');
  const rows: string[][] = [header];
  for (const [m, r] of Object.entries(results)) {
    const ours = r.convnets as ModelResult | null;
    const tv = ['torch_default', 'torch_tuned', 'torch_tuned_channels_last'].map((k) => r[k] as ModelResult | null);
    const ort = r.onnxruntime as { infer_img_s: number; latency_ms: number } | null | undefined;
    const metrics: [string, keyof ModelResult, boolean][] = [
      ['train img/s', 'train_img_s', true],
      ['infer img/s', 'infer_img_s', true],
      ['latency ms (b=1)', 'latency_ms', false],
      ['peak RSS MB', 'peak_rss_mb', false],
    ];
    // ratios > 1 mean convnets is better (faster, or less memory)
    const ratio = (o: number | undefined, other: number | undefined, higherBetter: boolean): string =>
      o !== undefined && other !== undefined ? `${(higherBetter ? o / other : other / o).toFixed(2)}×` : '—';
    for (const [label, key, higherBetter] of metrics) {
      const vals = tv.map((t) => (t ? (t[key] as number | undefined) : undefined)).filter((v): v is number => typeof v === 'number');
      const best = vals.length ? (higherBetter ? Math.max(...vals) : Math.min(...vals)) : undefined;
      const o = ours ? (ours[key] as number | undefined) : undefined;
      const row = [m, label, f(o)];
      if (withTorch) row.push(...tv.map((t) => f(t ? t[key] : undefined)), ratio(o, best, higherBetter));
      if (withOnnx) {
        const ov = ort && (key === 'infer_img_s' || key === 'latency_ms') ? ort[key] : undefined;
        row.push(f(ov), ratio(o, ov, higherBetter));
      }
      rows.push(row);
    }
    if (ours) {
      const pct = (ours as ModelResult & { train_pct_of_gemm_peak?: number }).train_pct_of_gemm_peak;
      rows.push([m, 'GFLOP/s train / infer', `${f(ours.train_gflop_s)} / ${f(ours.infer_gflop_s)}${pct ? ` (${pct.toFixed(0)}% of GEMM peak)` : ''}`, ...new Array<string>(header.length - 3).fill('')]);
    }
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) process.stdout.write(r.map((c, i) => c.padEnd(widths[i])).join('  ') + '\n');
  process.stdout.write('(vs columns: convnets relative to the other, > 1× = convnets faster or smaller)\n');
}

await main();
