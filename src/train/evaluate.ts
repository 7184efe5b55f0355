/**
 * Evaluation helpers: test-set loss / accuracy / confusion matrix, and class probabilities
 * for single images. Everything runs in eval mode under noGrad and keeps only plain numbers,
 * so no tensor or graph outlives a batch.
 */
import * as F from '../tensor/functional.js';
import { Tensor, noGrad } from '../tensor/tensor.js';
import type { Module } from '../nn/module.js';
import type { Batch } from '../data/dataloader.js';

export interface ClassStats {
  correct: number;
  total: number;
  /** correct / total as a fraction (NaN when the class has no images). */
  accuracy: number;
}

export interface EvalResult {
  /** Mean cross-entropy over all images. */
  loss: number;
  correct: number;
  total: number;
  /** correct / total as a fraction in [0, 1]. */
  accuracy: number;
  /** confusion[t][p]: images of true class t predicted as p. */
  confusion: number[][];
  perClass: ClassStats[];
}

export interface EvalOptions {
  /** Called after each batch with the images done so far and the running statistics. */
  onBatch?: (done: number, stats: { loss: number; accuracy: number; imagesPerSec: number }) => void;
}

/** Index of the largest of `n` values starting at `offset` (the first one on ties, like argmax). */
export function argmaxRow(values: ArrayLike<number>, offset: number, n: number): number {
  let best = 0;
  let bestV = values[offset];
  for (let j = 1; j < n; j++) {
    const v = values[offset + j];
    if (v > bestV || (Number.isNaN(bestV) && !Number.isNaN(v))) {
      bestV = v;
      best = j;
    }
  }
  return best;
}

/** Number of rows of (rows, cols) logits whose argmax equals the target. */
export function countCorrect(logits: ArrayLike<number>, targets: ArrayLike<number>, cols: number): number {
  let c = 0;
  for (let i = 0; i < targets.length; i++) if (argmaxRow(logits, i * cols, cols) === targets[i]) c++;
  return c;
}

/**
 * Loss, accuracy, per-class accuracy and confusion matrix of `net` over `batches`.
 * The network is put in eval mode for the duration and its previous mode restored.
 */
export async function evaluate(net: Module, batches: AsyncIterable<Batch>, numClasses: number, opts: EvalOptions = {}): Promise<EvalResult> {
  const confusion = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  let lossSum = 0;
  let correct = 0;
  let total = 0;
  const wasTraining = net.training;
  net.eval();
  const start = performance.now();
  try {
    for await (const b of batches) {
      const [lossValue, logits] = noGrad(() => {
        const side = Math.round(Math.sqrt(b.x.length / (b.size * 3)));
        const out = net.forward(new Tensor(b.x, [b.size, 3, side, side]));
        const loss = F.crossEntropy(out, b.y, { reduction: 'sum' });
        return [loss.item(), out.values] as const;
      });
      const cols = logits.length / b.size;
      if (cols !== numClasses) throw new Error(`evaluate: the network gives ${cols} outputs per image, expected ${numClasses}`);
      lossSum += lossValue;
      for (let i = 0; i < b.size; i++) {
        const t = b.y[i];
        const p = argmaxRow(logits, i * cols, cols);
        if (t >= 0 && t < numClasses) confusion[t][p]++;
        if (p === t) correct++;
      }
      total += b.size;
      const secs = (performance.now() - start) / 1000;
      opts.onBatch?.(total, { loss: lossSum / total, accuracy: correct / total, imagesPerSec: secs > 0 ? total / secs : NaN });
    }
  } finally {
    net.train(wasTraining);
  }
  const perClass = confusion.map((row, t) => {
    const n = row.reduce((s, v) => s + v, 0);
    return { correct: row[t], total: n, accuracy: n > 0 ? row[t] / n : NaN };
  });
  return { loss: total > 0 ? lossSum / total : NaN, correct, total, accuracy: total > 0 ? correct / total : NaN, confusion, perClass };
}

/** Softmax of each row of (rows, cols) logits, computed in double precision. */
export function softmaxRows(logits: ArrayLike<number>, rows: number, cols: number): Float64Array[] {
  const out: Float64Array[] = [];
  for (let i = 0; i < rows; i++) {
    let m = -Infinity;
    for (let j = 0; j < cols; j++) m = Math.max(m, logits[i * cols + j]);
    const p = new Float64Array(cols);
    let s = 0;
    for (let j = 0; j < cols; j++) {
      p[j] = Math.exp(logits[i * cols + j] - m);
      s += p[j];
    }
    for (let j = 0; j < cols; j++) p[j] /= s;
    out.push(p);
  }
  return out;
}

/** The `k` most probable classes, most probable first (ties: lower index first). */
export function topK(probs: ArrayLike<number>, k: number): { index: number; prob: number }[] {
  const idx = Array.from({ length: probs.length }, (_, i) => i);
  idx.sort((a, b) => probs[b] - probs[a] || a - b);
  return idx.slice(0, Math.min(k, idx.length)).map((i) => ({ index: i, prob: probs[i] }));
}

/**
 * Class probabilities for CHW float inputs (each 3 x size x size, values in [0, 1]),
 * run in eval mode under noGrad in batches of `batchSize`.
 */
export function predictProbabilities(net: Module, inputs: Float32Array[], size = 32, batchSize = 64): Float64Array[] {
  const wasTraining = net.training;
  net.eval();
  const per = 3 * size * size;
  const out: Float64Array[] = [];
  try {
    for (let a = 0; a < inputs.length; a += batchSize) {
      const chunk = inputs.slice(a, a + batchSize);
      const x = new Float32Array(chunk.length * per);
      chunk.forEach((c, i) => {
        if (c.length !== per) throw new Error(`predict: input ${a + i} has ${c.length} values, expected ${per} (3x${size}x${size})`);
        x.set(c, i * per);
      });
      const logits = noGrad(() => net.forward(new Tensor(x, [chunk.length, 3, size, size])).values);
      out.push(...softmaxRows(logits, chunk.length, logits.length / chunk.length));
    }
  } finally {
    net.train(wasTraining);
  }
  return out;
}
