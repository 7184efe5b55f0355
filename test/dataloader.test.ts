import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DataLoader, type Batch, type ImageSource } from '../src/data/dataloader.js';

const C = 3;
const H = 32;
const W = 32;
const IMG = C * H * W;

/** N images; pixel (i, c, y, x) = pattern, with pixel (i, 0, 0, 0) = i so a batch row reveals its index. */
function fakeDataset(n: number): ImageSource {
  const images = new Uint8Array(n * IMG);
  const labels = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 10;
    for (let c = 0; c < C; c++) {
      for (let y = 0; y < H; y++) {
        for (let x = 0; x < W; x++) images[i * IMG + c * H * W + y * W + x] = ((y * 7 + x * 3 + c * 50 + i * 13) % 251) + 1;
      }
    }
    images[i * IMG] = i;
  }
  return { images, labels, length: n, channels: C, height: H, width: W };
}

async function collect(loader: DataLoader): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of loader) out.push(b);
  return out;
}

function order(batches: Batch[]): number[] {
  return batches.flatMap((b) => Array.from({ length: b.size }, (_, k) => Math.round(b.x[k * (b.x.length / b.size)] * 255)));
}

const ds = fakeDataset(23);

describe('DataLoader', () => {
  test('batch shapes, last batch with and without dropLast', async () => {
    for (const prefetch of [false, true]) {
      const keep = new DataLoader(ds, { batchSize: 8, prefetch });
      assert.equal(keep.length, 3);
      const b = await collect(keep);
      assert.deepEqual(b.map((x) => x.size), [8, 8, 7]);
      assert.deepEqual(b.map((x) => x.index), [0, 1, 2]);
      assert.deepEqual(b.map((x) => x.x.length), [8 * IMG, 8 * IMG, 7 * IMG]);
      assert.deepEqual(b.map((x) => x.y.length), [8, 8, 7]);
      const drop = new DataLoader(ds, { batchSize: 8, dropLast: true, prefetch });
      assert.equal(drop.length, 2);
      assert.deepEqual((await collect(drop)).map((x) => x.size), [8, 8]);
      await keep.close();
      await drop.close();
    }
  });

  test('ToTensor values are exactly byte / 255, labels as int32', async () => {
    const b = await collect(new DataLoader(ds, { batchSize: 10, prefetch: false }));
    const x = new Float32Array(b.flatMap((bb) => Array.from(bb.x)));
    assert.equal(x.length, ds.images.length);
    for (let j = 0; j < x.length; j++) assert.equal(x[j], Math.fround(ds.images[j] / 255));
    assert.deepEqual(b.flatMap((bb) => Array.from(bb.y)), Array.from(ds.labels));
  });

  test('normalise arithmetic is float32 (x - mean) / std', async () => {
    const mean = [0.4914, 0.4822, 0.4465];
    const std = [0.247, 0.2435, 0.2616];
    const [b] = await collect(new DataLoader(ds, { batchSize: 4, mean, std }));
    const f = Math.fround;
    for (let k = 0; k < 4; k++) {
      for (let c = 0; c < C; c++) {
        for (let p = 0; p < H * W; p++) {
          const j = k * IMG + c * H * W + p;
          const want = f(f(f(ds.images[j] / 255) - f(mean[c])) / f(std[c]));
          assert.equal(b.x[j], want);
        }
      }
    }
    assert.throws(() => new DataLoader(ds, { batchSize: 4, mean: [0.5], std: [0.5] }), /3 values/);
    assert.throws(() => new DataLoader(ds, { batchSize: 4, mean, std: [1, 0, 1] }), /non-zero/);
    assert.throws(() => new DataLoader(ds, { batchSize: 0 }), /batchSize/);
  });

  test('shuffle: reproducible per (seed, epoch), a permutation each epoch', async () => {
    const a = new DataLoader(ds, { batchSize: 5, shuffle: true, seed: 7, prefetch: false });
    const e0 = order(await collect(a)); // epoch 0
    const e1 = order(await collect(a)); // epoch 1 (auto-advanced)
    const sorted = Array.from({ length: 23 }, (_, i) => i);
    assert.deepEqual([...e0].sort((p, q) => p - q), sorted);
    assert.deepEqual([...e1].sort((p, q) => p - q), sorted);
    assert.notDeepEqual(e0, e1);
    assert.notDeepEqual(e0, sorted);
    // A fresh loader set to epoch 1 (a resumed run) sees epoch 1's order.
    const b = new DataLoader(ds, { batchSize: 5, shuffle: true, seed: 7, prefetch: false });
    b.setEpoch(1);
    assert.deepEqual(order(await collect(b)), e1);
    b.setEpoch(0);
    assert.deepEqual(order(await collect(b)), e0);
    // Checkpoint state round trip.
    const state = a.generatorState();
    assert.deepEqual(state, { seed: 7, epoch: 2 });
    const e2 = order(await collect(a));
    const c = new DataLoader(ds, { batchSize: 5, shuffle: true, seed: 99, prefetch: false });
    c.setGeneratorState(state);
    assert.deepEqual(order(await collect(c)), e2);
    // A different seed gives a different order.
    const d = new DataLoader(ds, { batchSize: 5, shuffle: true, seed: 8, prefetch: false });
    assert.notDeepEqual(order(await collect(d)), e0);
    // No shuffle: dataset order.
    assert.deepEqual(order(await collect(new DataLoader(ds, { batchSize: 5, prefetch: false }))), sorted);
  });

  test('random crop is a shifted window of the zero-padded image', async () => {
    const loader = new DataLoader(ds, { batchSize: 23, randomCrop: { size: 32, padding: 4 }, prefetch: false });
    let shifted = 0;
    for (let epoch = 0; epoch < 3; epoch++) {
      const [b] = await collect(loader);
      for (let i = 0; i < 23; i++) {
        const out = b.x.subarray(i * IMG, (i + 1) * IMG);
        const src = ds.images.subarray(i * IMG, (i + 1) * IMG);
        // Find every offset (dy, dx) in the padded 40x40 image that reproduces the output.
        const matches: [number, number][] = [];
        for (let dy = 0; dy <= 8; dy++) {
          for (let dx = 0; dx <= 8; dx++) {
            let ok = true;
            for (let c = 0; c < C && ok; c++) {
              for (let r = 0; r < H && ok; r++) {
                for (let q = 0; q < W && ok; q++) {
                  const sy = r + dy - 4;
                  const sx = q + dx - 4;
                  const v = sy >= 0 && sy < H && sx >= 0 && sx < W ? src[c * H * W + sy * W + sx] : 0;
                  if (out[c * H * W + r * W + q] !== Math.fround(v / 255)) ok = false;
                }
              }
            }
            if (ok) matches.push([dy, dx]);
          }
        }
        assert.equal(matches.length, 1, `image ${i}: ${JSON.stringify(matches)}`);
        if (matches[0][0] !== 4 || matches[0][1] !== 4) shifted++;
      }
    }
    assert.ok(shifted > 30, `only ${shifted} of 69 crops were shifted`);
  });

  test('horizontal flip reverses rows', async () => {
    const loader = new DataLoader(ds, { batchSize: 23, horizontalFlip: true, prefetch: false });
    const [b] = await collect(loader);
    let flipped = 0;
    for (let i = 0; i < 23; i++) {
      const isFlipped = b.x[i * IMG + W - 1] === Math.fround(ds.images[i * IMG] / 255) && b.x[i * IMG] !== b.x[i * IMG + W - 1];
      if (isFlipped) flipped++;
      for (let c = 0; c < C; c++) {
        for (let r = 0; r < H; r++) {
          for (let q = 0; q < W; q++) {
            const sx = isFlipped ? W - 1 - q : q;
            assert.equal(b.x[i * IMG + c * H * W + r * W + q], Math.fround(ds.images[i * IMG + c * H * W + r * W + sx] / 255));
          }
        }
      }
    }
    assert.ok(flipped > 3 && flipped < 20, `flipped ${flipped} of 23`);
  });

  test('prefetch (worker) and in-thread preparation give identical batches', async () => {
    const opts = {
      batchSize: 6,
      shuffle: true,
      seed: 123,
      randomCrop: { size: 32, padding: 4 },
      horizontalFlip: true,
      mean: [0.5, 0.4, 0.3],
      std: [0.2, 0.25, 0.3],
    };
    const on = new DataLoader(ds, { ...opts, prefetch: true });
    const off = new DataLoader(ds, { ...opts, prefetch: false });
    for (const epoch of [0, 3]) {
      on.setEpoch(epoch);
      off.setEpoch(epoch);
      const a = await collect(on);
      const b = await collect(off);
      assert.equal(a.length, b.length);
      for (let k = 0; k < a.length; k++) {
        assert.equal(a[k].size, b[k].size);
        assert.equal(a[k].index, b[k].index);
        assert.deepEqual(a[k].y, b[k].y);
        assert.ok(Buffer.from(a[k].x.buffer).equals(Buffer.from(b[k].x.buffer)), `batch ${k} differs`);
      }
    }
    await on.close();
  });

  test('breaking out early does not hang; the loader can be iterated again', async () => {
    const loader = new DataLoader(ds, { batchSize: 2, shuffle: true, seed: 1 });
    let n = 0;
    for await (const b of loader) {
      assert.equal(b.size, 2);
      if (++n === 2) break;
    }
    assert.equal(n, 2);
    assert.equal((await collect(loader)).length, 12);
    // Break again and leave the worker alive: the process must still exit.
    for await (const _ of loader) break;
  });
});
