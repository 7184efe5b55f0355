// The step arena (src/backend/arena.ts): training inside it gives bit-identical weights to
// training without it, memory stays flat over many steps, and misuse (a tensor used after its
// arena ended) throws instead of reading recycled memory. Recycled buffers are poisoned with NaN
// here, so a use that slipped past the checks would show up as a mismatch.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { allocOutput, arenaStats, beginArena, clearArenaPool, endArena, setArenaDebug, setHugePageAdvisor, withArena } from '../src/backend/arena.js';
import { getBackend, listBackends, withBackend } from '../src/backend/registry.js';
import * as models from '../src/models/index.js';
import type { Module } from '../src/nn/module.js';
import { Adam, SGD } from '../src/optim/optimizer.js';
import * as F from '../src/tensor/functional.js';
import { manualSeed } from '../src/tensor/random.js';
import { Tensor, keep, noGrad, tensor } from '../src/tensor/tensor.js';

const hasNative = listBackends().includes('native');

function input(n: number, seed: number): Tensor {
  const v = new Float32Array(n * 3 * 32 * 32);
  let s = seed >>> 0;
  for (let i = 0; i < v.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    v[i] = s / 2 ** 32 - 0.5;
  }
  return new Tensor(v, [n, 3, 32, 32]);
}

/** Every parameter, buffer and optimizer state value of a run, as one list of arrays. */
function snapshot(net: Module, opt: { stateDict(): { state: Map<number, { buffers: Map<string, Tensor> }> } }): Float32Array[] {
  const out: Float32Array[] = [];
  for (const [, t] of net.stateDict()) out.push(t.values.slice());
  for (const [, s] of opt.stateDict().state) for (const [, t] of s.buffers) out.push(t.values.slice());
  return out;
}

function trainRun(name: string, steps: number, arena: boolean, batch: number, sgd = false): { state: Float32Array[]; losses: number[] } {
  manualSeed(7);
  const net = models.create(name);
  net.train();
  const opt = sgd ? new SGD(net.parameters(), { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 }) : new Adam(net.parameters(), { lr: 1e-3 });
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) {
    const x = input(batch, 100 + i);
    const y = Array.from({ length: batch }, (_, k) => (k * 3 + i) % 10);
    const step = (): number => {
      opt.zeroGrad();
      const loss = F.crossEntropy(net.forward(x), y);
      const lv = loss.item();
      loss.backward();
      opt.step();
      return lv;
    };
    losses.push(arena ? withArena(step) : step());
  }
  // an eval forward too (eval-mode batch norm fused with the activations)
  net.eval();
  const logits = arena ? withArena(() => noGrad(() => net.forward(input(batch, 999)).values.slice())) : noGrad(() => net.forward(input(batch, 999)).values.slice());
  return { state: [...snapshot(net, opt as unknown as Parameters<typeof snapshot>[1]), logits], losses };
}

describe('step arena', () => {
  let prevDebug = false;
  before(() => {
    prevDebug = setArenaDebug(true);
  });
  after(() => {
    setArenaDebug(prevDebug);
  });

  for (const name of ['mobilenetv1', 'mobilenetv2', 'resnet18']) {
    test(`${name}: training inside the arena gives bit-identical weights (native, 3 steps)`, { skip: hasNative ? false : 'native backend unavailable' }, () => {
      withBackend('native', () => {
        const plain = trainRun(name, 3, false, 4);
        const arena = trainRun(name, 3, true, 4);
        assert.deepEqual(arena.losses, plain.losses);
        assert.equal(arena.state.length, plain.state.length);
        for (let i = 0; i < plain.state.length; i++) {
          assert.ok(plain.state[i].every(Number.isFinite), `${name}: state ${i} is finite`);
          assert.deepEqual(arena.state[i], plain.state[i], `${name}: state array ${i} differs`);
        }
      });
    });
  }

  test('SGD with momentum and weight decay: bit-identical too', { skip: hasNative ? false : 'native backend unavailable' }, () => {
    withBackend('native', () => {
      const plain = trainRun('mobilenetv2', 2, false, 2, true);
      const arena = trainRun('mobilenetv2', 2, true, 2, true);
      assert.deepEqual(arena.state, plain.state);
    });
  });

  test('memory is flat over many steps: no new buffers once the pool is warm, bounded RSS', { skip: hasNative ? false : 'native backend unavailable' }, () => {
    withBackend('native', () => {
      clearArenaPool();
      manualSeed(1);
      const net = models.create('mobilenetv2');
      net.train();
      const opt = new Adam(net.parameters(), { lr: 1e-3 });
      const x = input(8, 5);
      const y = Array.from({ length: 8 }, (_, k) => k % 10);
      const step = (): number =>
        withArena(() => {
          opt.zeroGrad();
          const loss = F.crossEntropy(net.forward(x), y);
          loss.backward();
          opt.step();
          return loss.item();
        });
      for (let i = 0; i < 3; i++) step();
      const warm = arenaStats();
      const rss0 = process.memoryUsage().rss;
      for (let i = 0; i < 40; i++) step();
      const end = arenaStats();
      const rss1 = process.memoryUsage().rss;
      assert.equal(end.freshAllocations, warm.freshAllocations, 'buffers were allocated after the pool was warm');
      assert.ok(end.pooledBytes <= warm.pooledBytes, 'the pool grew');
      assert.ok(rss1 - rss0 < 64 * 2 ** 20, `RSS grew by ${((rss1 - rss0) / 2 ** 20).toFixed(1)} MB over 40 steps`);
    });
  });

  test('a tensor used after its arena ended throws (values, backward, pending values)', () => {
    for (const be of listBackends()) {
      withBackend(be, () => {
        const w = tensor(new Float32Array(2 * 3 * 3 * 3).fill(0.1), [2, 3, 3, 3], { requiresGrad: true });
        const x = input(2, 3);
        let kept: Tensor | null = null;
        let keptLoss: Tensor | null = null;
        let keptPending: Tensor | null = null;
        withArena(() => {
          kept = F.conv2d(x, w, null, { padding: 1 });
          keptLoss = F.mean(F.relu(kept));
          keptPending = F.batchNorm(kept, null, null, null, null, { training: true, momentum: 0.1, eps: 1e-5 });
          assert.ok(kept.values.length > 0); // fine inside
        });
        if (getBackend().name === 'native') {
          // native outputs of this size come from the arena: stale now
          assert.throws(() => kept!.values, /after the step arena/);
          assert.throws(() => keptLoss!.backward(), /after the step arena/);
        }
        assert.throws(() => keptPending!.values, /after the step arena/);
      });
    }
  });

  test('keep(): a tensor taken out of the arena stays valid (and is not recycled)', () => {
    withBackend(hasNative ? 'native' : 'reference', () => {
      const w = tensor(new Float32Array(4 * 3 * 3 * 3).fill(0.05), [4, 3, 3, 3]);
      let kept: Tensor | null = null;
      let copy: Float32Array | null = null;
      withArena(() => {
        kept = keep(F.relu(F.conv2d(input(4, 2), w, null, { padding: 1 })));
        copy = kept.values.slice();
      });
      for (let i = 0; i < 3; i++) withArena(() => void F.relu(F.conv2d(input(4, 3 + i), w, null, { padding: 1 })).values);
      assert.deepEqual(kept!.values, copy);
    });
  });

  test('large new buffers (>= 4 MB) are offered to the huge-page advisor once, small and recycled ones are not', { skip: process.env.CONVNETS_HUGE_PAGES === '0' ? 'huge pages turned off (CONVNETS_HUGE_PAGES=0)' : false }, () => {
    const seen: number[] = [];
    const prev = setHugePageAdvisor((a) => {
      assert.ok(a instanceof Float32Array);
      seen.push(a.length);
      return true;
    });
    try {
      clearArenaPool();
      withArena(() => {
        allocOutput(1 << 20);
        allocOutput((1 << 20) - 1);
        allocOutput(5000);
      });
      // recycled from the pool: not advised again
      withArena(() => void allocOutput(1 << 20));
      assert.deepEqual(seen, [1 << 20]);
    } finally {
      setHugePageAdvisor(prev);
      clearArenaPool();
    }
  });

  test('a convolution output kept out of its arena: a later batch norm reads it, not the recycled statistics partials', { skip: hasNative ? false : 'native backend unavailable' }, () => {
    withBackend('native', () => {
      const prev = setArenaDebug(true); // recycled buffers are NaN
      try {
        const w = tensor(new Float32Array(24 * 16).map((_, i) => Math.sin(i)), [24, 16, 1, 1], { requiresGrad: true });
        const xin = tensor(new Float32Array(8 * 16 * 16 * 16).map((_, i) => Math.cos(i * 0.37)), [8, 16, 16, 16]);
        const y = withArena(() => keep(F.conv2d(xin, w)));
        withArena(() => void F.conv2d(xin, w)); // reuses the pool's buffers
        const rm = tensor(new Float32Array(24), [24]);
        const rv = tensor(new Float32Array(24).fill(1), [24]);
        F.batchNorm(y, rm, rv, null, null, { training: true, momentum: 1, eps: 1e-5 });
        const want = getBackend().batchNormStats(y.values, 8, 24, 256, 1e-5);
        assert.deepEqual(rm.values, want.mean);
      } finally {
        setArenaDebug(prev);
      }
    });
  });

  test('gradients of leaves survive the arena; explicit begin/end; nested arenas join', () => {
    withBackend(listBackends().includes('native') ? 'native' : 'reference', () => {
      const w = tensor(new Float32Array(4 * 3 * 3 * 3).fill(0.05), [4, 3, 3, 3], { requiresGrad: true });
      const x = input(4, 9);
      const s = beginArena();
      withArena(() => {
        const loss = F.mean(F.relu(F.conv2d(x, w, null, { padding: 1 })));
        loss.backward();
      });
      endArena(s);
      const g1 = w.grad!.values.slice();
      assert.ok(g1.some((v) => v !== 0) && g1.every(Number.isFinite));
      // the same without an arena
      w.grad = null;
      F.mean(F.relu(F.conv2d(x, w, null, { padding: 1 }))).backward();
      assert.deepEqual(w.grad!.values, g1);
      const outer = beginArena();
      assert.ok(outer !== null);
      assert.equal(beginArena(), null, 'a nested begin joins the outer arena');
      assert.throws(() => endArena({} as never), /order/);
      endArena(outer);
    });
  });
});
