/**
 * Worker thread of {@link DataLoader}: prepares batches (gather, crop, flip, ToTensor,
 * Normalize) from dataset bytes shared through a SharedArrayBuffer, and transfers the
 * output buffers back. The batch plan (indices and random decisions) comes from the
 * main thread, so results are identical to in-thread preparation.
 */
import { parentPort } from 'node:worker_threads';
import { buildLut, prepareBatch, type BatchPlan, type TransformSpec } from './transforms.js';

interface InitMessage {
  type: 'init';
  images: Uint8Array;
  labels: Uint8Array;
  spec: TransformSpec;
}
interface BatchMessage {
  type: 'batch';
  id: number;
  plan: BatchPlan;
}

let images: Uint8Array | null = null;
let labels: Uint8Array | null = null;
let spec: TransformSpec | null = null;
let lut: Float32Array | null = null;

const port = parentPort;
if (!port) throw new Error('dataloader_worker.js must be run as a worker thread');

port.on('message', (msg: InitMessage | BatchMessage) => {
  if (msg.type === 'init') {
    images = msg.images;
    labels = msg.labels;
    spec = msg.spec;
    lut = buildLut(spec.channels, spec.mean, spec.std);
    return;
  }
  if (msg.type === 'batch') {
    try {
      if (!images || !labels || !spec || !lut) throw new Error('worker received a batch before init');
      const { x, y } = prepareBatch(images, labels, msg.plan, spec, lut);
      port.postMessage({ type: 'batch', id: msg.id, x, y }, [x.buffer as ArrayBuffer, y.buffer as ArrayBuffer]);
    } catch (err) {
      port.postMessage({ type: 'error', id: msg.id, message: err instanceof Error ? err.message : String(err) });
    }
  }
});
