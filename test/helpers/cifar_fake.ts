// A tiny CIFAR-10 look-alike in the official binary layout, for tests.
//
// Records are 3073 bytes (label, then the R, G and B planes of 32x32). Images are
// class-dependent so that a small network can learn them: each class has its own base colour
// and stripe direction/period, plus uniform noise.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PNG } from 'pngjs';

export const IMG_BYTES = 3 * 32 * 32;
export const RECORD_BYTES = IMG_BYTES + 1;

const PALETTE: [number, number, number][] = [
  [220, 40, 40],
  [40, 200, 40],
  [40, 40, 220],
  [220, 220, 40],
  [220, 40, 220],
  [40, 220, 220],
  [240, 140, 30],
  [120, 60, 200],
  [128, 128, 128],
  [30, 30, 30],
];

/** A small deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The CHW bytes of one image of class `label`. */
export function fakeImage(label: number, rand: () => number, noise = 40): Uint8Array {
  const img = new Uint8Array(IMG_BYTES);
  const [r, g, b] = PALETTE[label % PALETTE.length];
  const period = 2 + (label % 4);
  const vertical = label % 2 === 0;
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      const stripe = Math.floor((vertical ? x : y) / period) % 2 === 0 ? 1 : 0.6;
      const base = [r, g, b];
      for (let c = 0; c < 3; c++) {
        const v = base[c] * stripe + (rand() - 0.5) * 2 * noise;
        img[c * 1024 + y * 32 + x] = Math.max(0, Math.min(255, Math.round(v)));
      }
    }
  }
  return img;
}

export interface FakeCifar {
  /** The cifar-10-batches-bin folder. */
  dir: string;
  /** The folder holding it (what --data takes). */
  root: string;
  recordsPerFile: number;
  trainLabels: Uint8Array;
  testLabels: Uint8Array;
}

function pack(labels: Uint8Array, images: Uint8Array[]): Buffer {
  const buf = Buffer.alloc(labels.length * RECORD_BYTES);
  labels.forEach((l, i) => {
    buf[i * RECORD_BYTES] = l;
    buf.set(images[i], i * RECORD_BYTES + 1);
  });
  return buf;
}

/**
 * Write `root/cifar-10-batches-bin/` with 5 training files of `recordsPerFile` records and a
 * test file of the same size (every .bin file must have recordsPerFile records).
 */
export async function writeFakeCifar(root: string, recordsPerFile: number, seed = 1): Promise<FakeCifar> {
  const dir = join(root, 'cifar-10-batches-bin');
  await mkdir(dir, { recursive: true });
  const rand = rng(seed);
  const trainLabels = new Uint8Array(5 * recordsPerFile);
  for (let f = 0; f < 6; f++) {
    const labels = new Uint8Array(recordsPerFile);
    const images: Uint8Array[] = [];
    for (let r = 0; r < recordsPerFile; r++) {
      labels[r] = Math.floor(rand() * 10);
      images.push(fakeImage(labels[r], rand));
    }
    const name = f < 5 ? `data_batch_${f + 1}.bin` : 'test_batch.bin';
    await writeFile(join(dir, name), pack(labels, images));
    if (f < 5) trainLabels.set(labels, f * recordsPerFile);
    else return { dir, root, recordsPerFile, trainLabels, testLabels: labels };
  }
  throw new Error('unreachable');
}

/** Write an RGB PNG of `width` x `height` filled with class `label`'s pattern. */
export async function writeClassPng(path: string, label: number, width = 40, height = 40, seed = 7): Promise<void> {
  const rand = rng(seed);
  const img = fakeImage(label, rand);
  const png = new PNG({ width, height });
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const sy = Math.floor((y * 32) / height);
      const sx = Math.floor((x * 32) / width);
      const o = (y * width + x) * 4;
      for (let c = 0; c < 3; c++) png.data[o + c] = img[c * 1024 + sy * 32 + sx];
      png.data[o + 3] = 255;
    }
  }
  await writeFile(path, PNG.sync.write(png));
}
