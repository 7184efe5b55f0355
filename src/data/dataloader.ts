/**
 * A PyTorch-style DataLoader over an in-memory image dataset.
 *
 * Each batch is: gather the images, optional RandomCrop(size, padding) with zero padding,
 * optional RandomHorizontalFlip(p = 0.5), ToTensor (/255) and optional Normalize(mean, std)
 * — see ./transforms.ts for the exact arithmetic.
 *
 * Reproducibility: everything random in epoch e (the shuffle order and the augmentation
 * draws) comes from generators seeded by (seed, e) alone, so a run resumed at epoch e sees
 * exactly the batches the original run saw. Iterating the loader uses the current epoch
 * and then advances it by one; call {@link DataLoader.setEpoch} before iterating to choose
 * the epoch explicitly (like DistributedSampler.set_epoch).
 *
 * Prefetch (default on): batches are prepared in a worker thread one or two ahead of the
 * consumer, so that preparation runs in parallel with the consumer's (synchronous, main
 * thread) compute. The dataset bytes are copied once into a SharedArrayBuffer shared with
 * the worker and the output buffers are transferred back, not copied. The worker does not
 * keep the process alive while idle; abandoning an iteration early (break) is fine, and
 * {@link DataLoader.close} terminates the worker. When the compiled worker file is not
 * available (e.g. running the TypeScript sources directly) batches are prepared in-thread.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { Generator } from '../tensor/random.js';
import { DataError } from './errors.js';
import { buildLut, prepareBatch, validateSpec, type BatchPlan, type TransformSpec } from './transforms.js';
import type { ImageDataset } from './cifar10.js';

export interface Batch {
  /** (B, C, H, W) float32. */
  x: Float32Array;
  /** B labels. */
  y: Int32Array;
  /** B, the number of images in this batch. */
  size: number;
  /** Index of the batch within the epoch. */
  index: number;
}

export interface LoaderOptions {
  batchSize: number;
  shuffle?: boolean;
  /** Seed of the shuffle and augmentation randomness (default 0). */
  seed?: number;
  /** Drop the last batch when it is incomplete. */
  dropLast?: boolean;
  /** Per-channel normalisation after /255 (both or neither). */
  mean?: number[];
  std?: number[];
  /** RandomCrop(size, padding) with zero padding, e.g. { size: 32, padding: 4 }. */
  randomCrop?: { size: number; padding: number };
  /** RandomHorizontalFlip(0.5). */
  horizontalFlip?: boolean;
  /** Prepare batches in a worker thread ahead of the consumer (default true). */
  prefetch?: boolean;
}

/** What a checkpoint must save to resume the loader's randomness. */
export interface LoaderState {
  seed: number;
  /** The epoch the next iteration will use. */
  epoch: number;
}

/** The part of a dataset the loader needs (an ImageDataset qualifies). */
export type ImageSource = Pick<ImageDataset, 'images' | 'labels' | 'length'> & {
  channels: number;
  height: number;
  width: number;
};

/** How many batches the worker may be asked for ahead of the consumer. */
const PREFETCH_DEPTH = 2;

export class DataLoader implements AsyncIterable<Batch> {
  readonly dataset: ImageSource;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly dropLast: boolean;
  readonly prefetch: boolean;
  private readonly spec: TransformSpec;
  private readonly crop: boolean;
  private readonly flip: boolean;
  private readonly lut: Float32Array;
  private seed: number;
  private epoch = 0;
  private worker: BatchWorker | null = null;

  constructor(ds: ImageSource, opts: LoaderOptions) {
    const { batchSize } = opts;
    if (!Number.isInteger(batchSize) || batchSize <= 0) {
      throw new DataError(`DataLoader: batchSize must be a positive integer, got ${batchSize}`);
    }
    const imgSize = ds.channels * ds.height * ds.width;
    if (ds.images.length !== ds.length * imgSize || ds.labels.length !== ds.length) {
      throw new DataError(
        `DataLoader: dataset of ${ds.length} images of ${ds.channels}x${ds.height}x${ds.width} needs ${ds.length * imgSize} bytes and ${ds.length} labels, got ${ds.images.length} and ${ds.labels.length}`,
      );
    }
    const seed = opts.seed ?? 0;
    checkSeed(seed);
    this.dataset = ds;
    this.batchSize = batchSize;
    this.shuffle = opts.shuffle ?? false;
    this.dropLast = opts.dropLast ?? false;
    this.prefetch = opts.prefetch ?? true;
    this.seed = seed;
    this.crop = opts.randomCrop !== undefined;
    this.flip = opts.horizontalFlip ?? false;
    const crop = opts.randomCrop;
    if (crop && (!Number.isInteger(crop.size) || crop.size <= 0 || !Number.isInteger(crop.padding) || crop.padding < 0)) {
      throw new DataError(
        `DataLoader: randomCrop needs a positive integer size and a non-negative integer padding, got ${JSON.stringify(crop)}`,
      );
    }
    this.spec = {
      channels: ds.channels,
      height: ds.height,
      width: ds.width,
      outHeight: crop ? crop.size : ds.height,
      outWidth: crop ? crop.size : ds.width,
      padding: crop ? crop.padding : 0,
      mean: opts.mean ? [...opts.mean] : undefined,
      std: opts.std ? [...opts.std] : undefined,
    };
    try {
      validateSpec(this.spec);
    } catch (err) {
      throw new DataError(`DataLoader: ${(err as Error).message}`);
    }
    this.lut = buildLut(ds.channels, this.spec.mean, this.spec.std);
  }

  /** Batches per epoch. */
  get length(): number {
    const n = this.dataset.length;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  /** The epoch the next iteration will use. */
  get currentEpoch(): number {
    return this.epoch;
  }

  /** Choose the epoch of the next iteration (its order and augmentation depend on it). */
  setEpoch(epoch: number): void {
    if (!Number.isInteger(epoch) || epoch < 0) throw new DataError(`DataLoader: epoch must be a non-negative integer, got ${epoch}`);
    this.epoch = epoch;
  }

  /** State to save in a checkpoint: the seed and the epoch of the next iteration. */
  generatorState(): LoaderState {
    return { seed: this.seed, epoch: this.epoch };
  }

  /** Restore a state saved by {@link generatorState}. */
  setGeneratorState(state: LoaderState): void {
    checkSeed(state.seed);
    this.setEpoch(state.epoch);
    this.seed = state.seed;
  }

  /** The plan of every batch of an epoch (order and augmentation); a function of (seed, epoch). */
  epochPlans(epoch: number): BatchPlan[] {
    const n = this.dataset.length;
    const B = this.batchSize;
    const L = this.length;
    const used = Math.min(n, L * B);
    const order = this.shuffle ? new Generator(deriveSeed(this.seed, epoch, 1)).permutation(n) : identity(n);
    let dy: Int32Array | undefined;
    let dx: Int32Array | undefined;
    let flip: Uint8Array | undefined;
    if (this.crop || this.flip) {
      const g = new Generator(deriveSeed(this.seed, epoch, 2));
      const { height: H, width: W, outHeight: OH, outWidth: OW, padding: P } = this.spec;
      const rangeY = H + 2 * P - OH + 1;
      const rangeX = W + 2 * P - OW + 1;
      if (this.crop) {
        dy = new Int32Array(used);
        dx = new Int32Array(used);
      }
      if (this.flip) flip = new Uint8Array(used);
      // Draws in position order: crop top, crop left, then flip (torchvision's order).
      for (let i = 0; i < used; i++) {
        if (dy && dx) {
          dy[i] = g.randint(rangeY);
          dx[i] = g.randint(rangeX);
        }
        if (flip) flip[i] = g.random() < 0.5 ? 1 : 0;
      }
    }
    const plans: BatchPlan[] = [];
    for (let k = 0; k < L; k++) {
      const a = k * B;
      const b = Math.min(a + B, used);
      plans.push({
        indices: order.slice(a, b),
        dy: dy?.slice(a, b),
        dx: dx?.slice(a, b),
        flip: flip?.slice(a, b),
      });
    }
    return plans;
  }

  [Symbol.asyncIterator](): AsyncIterator<Batch> {
    const epoch = this.epoch;
    this.epoch = epoch + 1;
    return this.iterate(epoch);
  }

  /** Terminate the worker thread (a later iteration starts a new one). */
  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }

  private async *iterate(epoch: number): AsyncGenerator<Batch, void, undefined> {
    const plans = this.epochPlans(epoch);
    const L = plans.length;
    if (L === 0) return;
    const worker = this.prefetch ? this.getWorker() : null;
    if (!worker) {
      for (let k = 0; k < L; k++) {
        const { x, y } = prepareBatch(this.dataset.images, this.dataset.labels, plans[k], this.spec, this.lut);
        yield { x, y, size: y.length, index: k };
      }
      return;
    }
    const queue: Request[] = [];
    let next = 0;
    const fill = () => {
      while (next < L && queue.length < PREFETCH_DEPTH) queue.push(worker.request(plans[next++]));
    };
    try {
      fill();
      for (let k = 0; k < L; k++) {
        const req = queue.shift() as Request;
        const { x, y } = await req.promise;
        fill(); // keep the worker busy while the consumer works on batch k
        yield { x, y, size: y.length, index: k };
      }
    } finally {
      // Abandoned early (break / throw): forget the requests still in flight.
      worker.drop(queue.map((r) => r.id));
    }
  }

  private getWorker(): BatchWorker | null {
    if (this.worker && this.worker.alive) return this.worker;
    const url = new URL('./dataloader_worker.js', import.meta.url);
    if (url.protocol !== 'file:' || !existsSync(fileURLToPath(url))) return null;
    const { images, labels } = sharedCopy(this.dataset);
    this.worker = new BatchWorker(url, images, labels, this.spec);
    return this.worker;
  }
}

interface Prepared {
  x: Float32Array;
  y: Int32Array;
}
interface Request {
  id: number;
  promise: Promise<Prepared>;
}

/** One worker thread, with request/response matching and ref counting. */
class BatchWorker {
  alive = true;
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (p: Prepared) => void; reject: (e: Error) => void }>();
  private nextId = 0;

  constructor(url: URL, images: Uint8Array, labels: Uint8Array, spec: TransformSpec) {
    this.worker = new Worker(url);
    this.worker.unref();
    this.worker.on('message', (msg: { type: string; id: number; x?: Float32Array; y?: Int32Array; message?: string }) => {
      const p = this.pending.get(msg.id);
      if (!p) return; // dropped request
      this.settle(msg.id);
      if (msg.type === 'batch' && msg.x && msg.y) p.resolve({ x: msg.x, y: msg.y });
      else p.reject(new Error(`DataLoader worker: ${msg.message ?? 'unknown error'}`));
    });
    this.worker.on('error', (err) => this.fail(new Error(`DataLoader worker crashed: ${err.message}`)));
    this.worker.on('exit', (code) => this.fail(new Error(`DataLoader worker exited unexpectedly (code ${code})`)));
    this.worker.postMessage({ type: 'init', images, labels, spec });
  }

  request(plan: BatchPlan): Request {
    const id = this.nextId++;
    const promise = new Promise<Prepared>((resolve, reject) => {
      if (!this.alive) {
        reject(new Error('DataLoader worker is not running'));
        return;
      }
      if (this.pending.size === 0) this.worker.ref(); // keep the process alive while waiting
      this.pending.set(id, { resolve, reject });
    });
    promise.catch(() => undefined); // a dropped/abandoned request must not be an unhandled rejection
    if (this.alive) {
      const transfer = [plan.indices.buffer, plan.dy?.buffer, plan.dx?.buffer, plan.flip?.buffer].filter(
        (b): b is ArrayBuffer => b instanceof ArrayBuffer,
      );
      this.worker.postMessage({ type: 'batch', id, plan }, transfer);
    }
    return { id, promise };
  }

  drop(ids: number[]): void {
    for (const id of ids) if (this.pending.has(id)) this.settle(id);
  }

  async terminate(): Promise<void> {
    this.alive = false;
    this.fail(new Error('DataLoader closed'));
    await this.worker.terminate();
  }

  private settle(id: number): void {
    this.pending.delete(id);
    if (this.pending.size === 0 && this.alive) this.worker.unref();
  }

  private fail(err: Error): void {
    this.alive = false;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(err);
  }
}

/** Dataset bytes in SharedArrayBuffers (copied once per dataset, shared by all workers). */
const sharedCache = new WeakMap<Uint8Array, { images: Uint8Array; labels: Uint8Array }>();

function sharedCopy(ds: ImageSource): { images: Uint8Array; labels: Uint8Array } {
  const cached = sharedCache.get(ds.images);
  if (cached && cached.labels.length === ds.labels.length) {
    cached.labels.set(ds.labels); // labels are tiny: refresh in case they were edited
    return cached;
  }
  const images =
    ds.images.buffer instanceof SharedArrayBuffer ? ds.images : copyToShared(ds.images);
  const labels = copyToShared(ds.labels);
  const entry = { images, labels };
  sharedCache.set(ds.images, entry);
  return entry;
}

function copyToShared(a: Uint8Array): Uint8Array {
  const out = new Uint8Array(new SharedArrayBuffer(a.length));
  out.set(a);
  return out;
}

function identity(n: number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  return a;
}

function checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed)) throw new DataError(`DataLoader: seed must be an integer, got ${seed}`);
}

/** A 32-bit seed from (seed, epoch, stream), well mixed so nearby inputs give unrelated streams. */
export function deriveSeed(seed: number, epoch: number, stream: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 4294967296) >>> 0;
  let h = 0x811c9dc5;
  for (const v of [lo, hi, epoch >>> 0, stream >>> 0]) {
    h = Math.imul(h ^ v, 0x9e3779b1) >>> 0;
    h ^= h >>> 15;
    h = Math.imul(h, 0x85ebca6b) >>> 0;
    h ^= h >>> 13;
  }
  return h >>> 0;
}
