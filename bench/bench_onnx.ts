// onnxruntime-node side of `npm run bench`: export each seed model to ONNX (src/io/onnx.ts)
// and measure onnxruntime's CPU inference throughput at a large batch and its batch-1 latency.
// The last stdout line is JSON:
//   { "onnxruntime": "1.30.0", "models": { "<name>": { "infer_img_s": …, "latency_ms": … } }, … }
// or, when the optional dependency onnxruntime-node is not installed, { "error": "…" } (exit 0).
//
//   node dist/bench/bench_onnx.js [--models mobilenetv1,mobilenetv2,resnet18] [--batch 128]
//                                 [--threads 2] [--infer-steps 5] [--latency-steps 20] [--opset 17]
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { median } from './median.js';

const { values: args } = parseArgs({
  options: {
    models: { type: 'string', default: 'mobilenetv1,mobilenetv2,resnet18' },
    batch: { type: 'string', default: '128' },
    threads: { type: 'string', default: '2' },
    'infer-steps': { type: 'string', default: '5' },
    'latency-steps': { type: 'string', default: '20' },
    opset: { type: 'string', default: '17' },
  },
  strict: true,
});

interface OrtTensor {
  readonly data: unknown;
}
interface OrtSession {
  run(feeds: Record<string, unknown>): Promise<Record<string, OrtTensor>>;
  release?(): Promise<void>;
}
interface Ort {
  InferenceSession: { create(model: string | Uint8Array, opts?: Record<string, unknown>): Promise<OrtSession> };
  Tensor: new (type: 'float32', data: Float32Array, dims: readonly number[]) => unknown;
  env?: { versions?: { node?: string; common?: string } };
}

async function loadOrt(): Promise<{ ort: Ort } | { error: string }> {
  const spec = 'onnxruntime-node'; // optional dependency: resolved at run time only
  try {
    const m = (await import(spec)) as Ort & { default?: Ort };
    const ort = m.InferenceSession ? m : m.default;
    if (!ort?.InferenceSession) return { error: 'onnxruntime-node loaded but has no InferenceSession' };
    return { ort };
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0];
    return { error: `onnxruntime-node is not installed (optional dependency; install with ONNXRUNTIME_NODE_INSTALL=skip npm install): ${msg}` };
  }
}

function posInt(v: string | undefined, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`bench_onnx: --${what} must be a positive integer, got ${v}`);
  return n;
}

/** The input pattern bench/bench.ts feeds our own forward pass. */
function input(n: number): Float32Array {
  return new Float32Array(n * 3 * 32 * 32).map((_, i) => ((i * 2654435761) % 1000) / 1000);
}

/** Seconds per step: the median of the steps' times, as bench.ts times our side. */
async function timed(fn: () => Promise<unknown>, steps: number, warmup: number): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const ts: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t = performance.now();
    await fn();
    ts.push((performance.now() - t) / 1000);
  }
  return median(ts);
}

async function main(): Promise<void> {
  const loaded = await loadOrt();
  if ('error' in loaded) {
    process.stdout.write(JSON.stringify({ error: loaded.error }) + '\n');
    return;
  }
  const { ort } = loaded;
  const batch = posInt(args.batch, 'batch');
  const threads = posInt(args.threads, 'threads');
  const inferSteps = posInt(args['infer-steps'], 'infer-steps');
  const latencySteps = posInt(args['latency-steps'], 'latency-steps');
  const opset = Number(args.opset) as 13 | 17;
  const cn = await import('../src/index.js');
  const { exportOnnx } = await import('../src/io/onnx.js');

  const models: Record<string, { infer_img_s: number; latency_ms: number } | null> = {};
  const dir = await mkdtemp(path.join(os.tmpdir(), 'convnets-bench-onnx-'));
  try {
    for (const name of args.models!.split(',').filter(Boolean)) {
      try {
        cn.manualSeed(0);
        const net = cn.models.create(name);
        const file = path.join(dir, `${name}.onnx`);
        await exportOnnx(net, [1, 3, 32, 32], file, { opset });
        const sess = await ort.InferenceSession.create(file, {
          intraOpNumThreads: threads,
          interOpNumThreads: 1,
          executionMode: 'sequential',
          graphOptimizationLevel: 'all',
        });
        const xb = { input: new ort.Tensor('float32', input(batch), [batch, 3, 32, 32]) };
        const x1 = { input: new ort.Tensor('float32', input(1), [1, 3, 32, 32]) };
        const tInfer = await timed(() => sess.run(xb), inferSteps, 1);
        const tLat = await timed(() => sess.run(x1), latencySteps, 3);
        await sess.release?.();
        models[name] = { infer_img_s: batch / tInfer, latency_ms: tLat * 1e3 };
        process.stderr.write(`bench_onnx: ${name}: ${(batch / tInfer).toFixed(1)} img/s at batch ${batch}, ${(tLat * 1e3).toFixed(2)} ms at batch 1\n`);
      } catch (e) {
        process.stderr.write(`bench_onnx: ${name}: ${(e as Error).message}\n`);
        models[name] = null;
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const version = ort.env?.versions?.node ?? ort.env?.versions?.common ?? 'unknown';
  process.stdout.write(JSON.stringify({ onnxruntime: version, settings: { batch, threads, inter_op_threads: 1, graph_optimization: 'all', opset, infer_steps: inferSteps, latency_steps: latencySteps }, models }) + '\n');
}

await main();
