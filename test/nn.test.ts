// nn modules and models: structure, state dicts, errors, and that training makes progress.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { F, manualSeed, models, nn, optim, tensor, loadSafetensors, saveSafetensors, Tensor } from '../src/index.js';

test('parameter counts equal the PyTorch reference models', () => {
  // Counts printed by PyTorch for ../shared/reference/seed_models.py.
  assert.equal(models.create('mobilenetv1').numParameters(), 3_217_226);
  assert.equal(models.create('mobilenetv2').numParameters(), 1_814_922);
  assert.equal(models.create('resnet18').numParameters(), 11_173_962);
  assert.equal(models.create('resnet18', { numClasses: 100 }).numParameters(), 11_173_962 + 90 * 513);
});

test('default initialisation follows PyTorch (kaiming-uniform a=√5 bounds, BN ones/zeros)', () => {
  manualSeed(1);
  const conv = new nn.Conv2d(8, 16, 3, { padding: 1 });
  const bound = 1 / Math.sqrt(8 * 9);
  const w = conv.weight.values;
  let max = 0;
  let mean = 0;
  for (const v of w) {
    max = Math.max(max, Math.abs(v));
    mean += v / w.length;
  }
  assert.ok(max <= bound && max > 0.95 * bound, `max |w| ${max} vs bound ${bound}`);
  assert.ok(Math.abs(mean) < bound / 10);
  const bn = new nn.BatchNorm2d(4);
  assert.deepEqual(Array.from(bn.weight!.values), [1, 1, 1, 1]);
  assert.deepEqual(Array.from(bn.bias!.values), [0, 0, 0, 0]);
  // the same seed gives the same weights
  manualSeed(1);
  assert.deepEqual(new nn.Conv2d(8, 16, 3, { padding: 1 }).weight.values, w);
});

test('stateDict keys follow PyTorch naming, buffers included', () => {
  const keys = [...models.create('mobilenetv2').stateDict().keys()];
  assert.deepEqual(keys.slice(0, 8), ['conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var', 'bn1.num_batches_tracked', 'layers.0.conv.0.weight', 'layers.0.conv.1.weight']);
  assert.equal(keys.at(-1), 'fc.bias');
  const rk = [...models.create('resnet18').stateDict().keys()];
  assert.ok(rk.includes('layer2.0.shortcut.0.weight') && rk.includes('layer2.0.shortcut.1.running_var'));
  assert.ok(!rk.includes('layer1.0.shortcut.0.weight'));
});

test('loadStateDict: strict errors list missing, unexpected and mis-shaped keys on one line', () => {
  const net = models.create('mobilenetv1');
  const sd = new Map(net.stateDict());
  sd.delete('bn1.running_mean');
  sd.set('extra.weight', tensor([1]));
  sd.set('fc.weight', tensor(new Float32Array(5 * 1024), [5, 1024]));
  const before = net.stateDict().get('conv1.weight')!.dataSync();
  assert.throws(
    () => net.loadStateDict(sd),
    (e: Error) => {
      assert.ok(!e.message.includes('\n'), 'one line');
      assert.match(e.message, /1 missing key \(bn1\.running_mean\)/);
      assert.match(e.message, /1 unexpected key \(extra\.weight\)/);
      assert.match(e.message, /fc\.weight: checkpoint \[5, 1024\] vs model \[10, 1024\]/);
      return true;
    },
  );
  assert.deepEqual(net.stateDict().get('conv1.weight')!.dataSync(), before, 'nothing changed');
  const r = net.loadStateDict(sd, { strict: false });
  assert.deepEqual(r.missingKeys, ['bn1.running_mean']);
  assert.deepEqual(r.unexpectedKeys, ['extra.weight']);
  assert.equal(r.mismatchedKeys[0].key, 'fc.weight');
});

test('safetensors round trip of a model state dict, including num_batches_tracked as I64', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'convnets-nn-'));
  try {
    manualSeed(3);
    const a = models.create('mobilenetv1');
    a.train();
    noGradForward(a, 2);
    const file = path.join(dir, 'w.safetensors');
    await saveSafetensors(file, a.stateDict());
    const loaded = await loadSafetensors(file);
    assert.equal(loaded.get('bn1.num_batches_tracked')!.dtype, 'int64');
    assert.equal(loaded.get('bn1.num_batches_tracked')!.item(), 1);
    manualSeed(4);
    const b = models.create('mobilenetv1');
    b.loadStateDict(loaded);
    for (const [k, t] of a.stateDict()) assert.deepEqual(b.stateDict().get(k)!.values, t.values, k);
    // malformed file: one-line error naming the file
    const bad = path.join(dir, 'bad.safetensors');
    await writeFile(bad, Buffer.from([1, 2, 3]));
    await assert.rejects(loadSafetensors(bad), (e: Error) => e.message.includes('bad.safetensors') && !e.message.includes('\n'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

function noGradForward(net: nn.Module, n: number): Tensor {
  const x = tensor(new Float32Array(n * 3 * 16 * 16).map((_, i) => (i % 7) / 7), [n, 3, 16, 16]);
  return net.forward(x);
}

test('forward rejects wrong input shapes with a one-line error', () => {
  for (const name of models.list()) {
    const net = models.create(name);
    assert.throws(() => net.forward(tensor(new Float32Array(3 * 32 * 32), [3, 32, 32])), /expected input of shape \[N, 3, H, W\], got \[3, 32, 32\]/);
    assert.throws(() => net.forward(tensor(new Float32Array(2 * 32 * 32), [1, 2, 32, 32])), /expected input of shape \[N, 3, H, W\], got \[1, 2, 32, 32\]/);
  }
  const conv = new nn.Conv2d(3, 4, 3);
  assert.throws(() => conv.forward(tensor(new Float32Array(4 * 25), [1, 4, 5, 5])), /conv2d: expected input with 3 channels/);
  assert.throws(() => models.create('vgg'), /unknown model "vgg"; available: mobilenetv1, mobilenetv2, resnet18/);
});

test('train/eval mode: BN uses batch statistics and updates running ones only in training', () => {
  const bn = new nn.BatchNorm2d(2);
  const x = tensor([1, 2, 3, 4, 10, 20, 30, 40], [1, 2, 2, 2]);
  bn.train();
  const y = bn.forward(x).dataSync();
  // channel 0: mean 2.5, biased var 1.25
  assert.ok(Math.abs(y[0] - (1 - 2.5) / Math.sqrt(1.25 + 1e-5)) < 1e-6);
  // running: 0.9*0 + 0.1*2.5; var 0.9*1 + 0.1*(1.25*4/3)
  assert.ok(Math.abs(bn.runningMean!.values[0] - 0.25) < 1e-7);
  assert.ok(Math.abs(bn.runningVar!.values[0] - (0.9 + 0.1 * (5 / 3))) < 1e-6);
  assert.equal(bn.numBatchesTracked, 1);
  bn.eval();
  const ye = bn.forward(x).dataSync();
  assert.ok(Math.abs(ye[0] - (1 - 0.25) / Math.sqrt(bn.runningVar!.values[0] + 1e-5)) < 1e-6);
  assert.equal(bn.numBatchesTracked, 1);
});

for (const name of ['mobilenetv1', 'mobilenetv2', 'resnet18']) {
  test(`${name}: a 4-image batch trains for 20 steps with the loss falling`, () => {
    manualSeed(0);
    const net = models.create(name);
    net.train();
    const opt = new optim.Adam(net.parameters(), { lr: 1e-3 });
    // 16x16 images keep this quick on the reference backend; the nets are fully convolutional.
    const n = 4;
    const x = tensor(new Float32Array(n * 3 * 16 * 16).map((_, i) => Math.sin(i * 0.37) * 0.5 + 0.5), [n, 3, 16, 16]);
    const y = [0, 3, 5, 7];
    const losses: number[] = [];
    for (let step = 0; step < 20; step++) {
      opt.zeroGrad();
      const loss = F.crossEntropy(net.forward(x), y);
      loss.backward();
      opt.step();
      losses.push(loss.item());
    }
    assert.ok(losses.every(Number.isFinite));
    assert.ok(losses[19] < 0.5 * losses[0], `loss ${losses[0].toFixed(4)} -> ${losses[19].toFixed(4)}`);
  });
}
