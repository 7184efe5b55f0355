// The training library: schedules, evaluation helpers, checkpoints, and train() itself.
// Uses the test-only TinyCnn (CONVNETS_TEST_MODELS=1) so that it runs in seconds on the
// pure-TypeScript reference backend.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cosineAnnealingLr, makeSchedule, oneCycleLr } from '../src/train/schedule.js';
import { argmaxRow, countCorrect, evaluate, predictProbabilities, softmaxRows, topK } from '../src/train/evaluate.js';
import { loadModelWeights, readCheckpoint, restoreCheckpoint, saveModelWeights } from '../src/train/checkpoint.js';
import { TinyCnn, TrainingError, createModel, makeOptimizer, train, type EpochMetrics, type TrainConfig } from '../src/train/trainer.js';
import { DataError } from '../src/data/errors.js';
import { DataLoader } from '../src/data/dataloader.js';
import { cifar10 } from '../src/data/cifar10.js';
import { manualSeed } from '../src/tensor/random.js';
import { writeFakeCifar, type FakeCifar } from './helpers/cifar_fake.js';

process.env.CONVNETS_TEST_MODELS = '1';

const close = (a: number, b: number, tol = 1e-12) => assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} != ${b}`);

describe('schedules', () => {
  test('cosine annealing: base at step 0, half at T/2, 0 at T', () => {
    close(cosineAnnealingLr(0.1, 0, 100), 0.1);
    close(cosineAnnealingLr(0.1, 25, 100), 0.1 * (1 + Math.SQRT1_2) / 2); // 0.0853553390593...
    close(cosineAnnealingLr(0.1, 25, 100), 0.08535533905932738);
    close(cosineAnnealingLr(0.1, 50, 100), 0.05);
    close(cosineAnnealingLr(0.1, 100, 100), 0);
    assert.throws(() => cosineAnnealingLr(0.1, 101, 100), /outside/);
  });

  test('one-cycle matches OneCycleLR(max_lr=0.1, total_steps=100) defaults', () => {
    // initial_lr = 0.1 / 25 = 0.004; min_lr = 0.004 / 1e4 = 4e-7; phase 1 ends at 0.3 * 100 - 1 = 29.
    close(oneCycleLr(0.1, 0, 100), 0.004);
    close(oneCycleLr(0.1, 29, 100), 0.1); // the peak
    close(oneCycleLr(0.1, 99, 100), 4e-7); // the end
    // Phase 2 halfway (pct = (64 - 29) / (99 - 29) = 0.5): min + (max - min) / 2.
    close(oneCycleLr(0.1, 64, 100), 0.0500002);
    // Phase 1, step 10: pct = 10/29; 0.1 + (0.004 - 0.1) / 2 * (cos(pi * 10/29) + 1).
    close(oneCycleLr(0.1, 10, 100), 0.1 + ((0.004 - 0.1) / 2) * (Math.cos((Math.PI * 10) / 29) + 1));
    close(oneCycleLr(0.1, 10, 100), 0.029516394846410082); // same formula evaluated in Python
    // Rises to the peak, then falls monotonically.
    const lrs = Array.from({ length: 100 }, (_, i) => oneCycleLr(0.1, i, 100));
    for (let i = 1; i <= 29; i++) assert.ok(lrs[i] > lrs[i - 1]);
    for (let i = 30; i < 100; i++) assert.ok(lrs[i] < lrs[i - 1]);
  });

  test('makeSchedule', () => {
    const none = makeSchedule('none', 0.01, 10);
    assert.equal(none.lrAt(0), 0.01);
    assert.equal(none.lrAt(9), 0.01);
    close(makeSchedule('cosine', 0.01, 10).lrAt(5), 0.005);
    close(makeSchedule('onecycle', 0.01, 10).lrAt(0), 0.0004);
    assert.throws(() => makeSchedule('bogus' as 'none', 0.1, 10), /unknown schedule/);
    assert.throws(() => makeSchedule('none', 0.1, 0), /positive integer/);
  });
});

describe('evaluation helpers', () => {
  test('argmax, countCorrect, softmax, topK', () => {
    assert.equal(argmaxRow([1, 3, 2], 0, 3), 1);
    assert.equal(argmaxRow([5, 5, 1], 0, 3), 0);
    assert.equal(countCorrect([0, 1, 1, 0, 2, 1], [1, 1, 1], 2), 1 + 0 + 0);
    const [p] = softmaxRows([0, Math.log(3)], 1, 2);
    close(p[0], 0.25);
    close(p[1], 0.75);
    const [q] = softmaxRows([1000, 1000], 1, 2); // no overflow
    close(q[0], 0.5);
    assert.deepEqual(
      topK([0.1, 0.5, 0.2, 0.2], 3).map((t) => t.index),
      [1, 2, 3],
    );
  });

  test('predictProbabilities gives distributions and restores training mode', () => {
    manualSeed(0);
    const net = new TinyCnn();
    const probs = predictProbabilities(net, [new Float32Array(3072).fill(0.5), new Float32Array(3072).fill(0.1)]);
    assert.equal(probs.length, 2);
    for (const p of probs) close(p.reduce((s, v) => s + v, 0), 1, 1e-9);
    assert.equal(net.training, true);
  });
});

describe('train()', () => {
  let work: string;
  let fake: FakeCifar;
  const base = (): TrainConfig => ({
    model: 'tinycnn',
    epochs: 3,
    batchSize: 16,
    lr: 3e-3,
    optimizer: 'adam',
    momentum: 0.9,
    weightDecay: 0,
    schedule: 'none',
    augment: false,
    seed: 0,
    numClasses: 10,
    labelSmoothing: 0,
    limitTrain: 160,
    limitTest: 32,
    data: fake.root,
    download: false,
    out: '',
    resume: false,
    recordsPerFile: fake.recordsPerFile,
  });
  let runCounter = 0;
  const newOut = () => join(work, `run${runCounter++}`);

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'convnets-train-'));
    fake = await writeFakeCifar(join(work, 'data'), 40);
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  test('loss falls, files are written, metrics match the history', async () => {
    const out = newOut();
    const lines: string[] = [];
    const steps: number[] = [];
    const { history } = await train({ ...base(), out, epochs: 4 }, { log: (l) => lines.push(l), onStep: (s) => steps.push(s.step) });
    assert.equal(history.length, 4);
    assert.equal(steps.length, 4 * 10); // 160 images / 16
    const first = history[0].train_loss;
    const last = history[3].train_loss;
    assert.ok(last < 0.75 * first, `train loss should fall: ${first} -> ${last}`);
    assert.ok(history[3].train_acc > history[0].train_acc);
    for (const f of ['checkpoint.safetensors', 'model.safetensors', 'metrics.jsonl', 'curves.png', 'curves.html']) {
      assert.ok(existsSync(join(out, f)), f);
    }
    const metrics = (await readFile(join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as EpochMetrics);
    assert.deepEqual(metrics.map((m) => m.epoch), [1, 2, 3, 4]);
    assert.equal(metrics[3].train_loss, last);
    assert.ok(lines[0].startsWith('TinyCnn('));
    assert.match(lines.at(-1)!, /^Epoch 4\/4 done in \d+\.\d s: train loss \d\.\d{4}, train acc \d+\.\d\d%, test loss \d\.\d{4}, test acc \d+\.\d\d%$/);
  });

  test('checkpoint round trip restores model and optimiser exactly', async () => {
    const out = newOut();
    const { net } = await train({ ...base(), out, epochs: 1, optimizer: 'sgd', lr: 0.05, schedule: 'cosine' });
    const ck = await readCheckpoint<TrainConfig, EpochMetrics>(join(out, 'checkpoint.safetensors'));
    assert.equal(ck.epoch, 1);
    assert.equal(ck.globalStep, 10);
    assert.equal(ck.config.optimizer, 'sgd');
    assert.equal(ck.history.length, 1);
    assert.equal(ck.optimizerType, 'sgd');
    assert.ok(ck.model.has('bn1.num_batches_tracked'));
    assert.equal(ck.model.get('bn1.num_batches_tracked')!.values[0], 10);
    assert.ok(ck.optimizer.state.get(0)!.buffers.has('momentum_buffer'));
    assert.equal(ck.optimizer.state.get(0)!.step, 10);

    const net2 = createModel('tinycnn', 10);
    const opt2 = makeOptimizer(net2, ck.config);
    restoreCheckpoint(ck, net2, opt2);
    for (const [k, t] of net.stateDict()) assert.deepEqual(net2.stateDict().get(k)!.values, t.values, k);
    // The learning rate saved is the last one used by the cosine schedule.
    assert.equal(opt2.lr, ck.history[0].lr);

    // model.safetensors loads into a fresh model; a checkpoint does too.
    const net3 = createModel('tinycnn', 10);
    await loadModelWeights(join(out, 'model.safetensors'), net3);
    assert.deepEqual(net3.stateDict().get('fc.weight')!.values, net.stateDict().get('fc.weight')!.values);
    const net4 = createModel('tinycnn', 10);
    const r = await loadModelWeights(join(out, 'checkpoint.safetensors'), net4);
    assert.equal(r.fromCheckpoint, true);
    assert.deepEqual(net4.stateDict().get('fc.bias')!.values, net.stateDict().get('fc.bias')!.values);
    // Wrong class count: one-line DataError.
    await assert.rejects(loadModelWeights(join(out, 'model.safetensors'), createModel('tinycnn', 5)), (e: Error) => e instanceof DataError && !e.message.includes('\n'));
  });

  test('resume continues to the same weights as an uninterrupted run', async () => {
    const cfg = { ...base(), augment: true, schedule: 'none' as const };
    const full = newOut();
    const a = await train({ ...cfg, out: full, epochs: 3 });
    const part = newOut();
    await train({ ...cfg, out: part, epochs: 1 });
    const b = await train({ ...cfg, out: part, epochs: 3, resume: true });
    assert.equal(b.startEpoch, 2);
    assert.deepEqual(b.history.map((h) => h.train_loss), a.history.map((h) => h.train_loss));
    assert.deepEqual(await readFile(join(part, 'model.safetensors')), await readFile(join(full, 'model.safetensors')));
    const lines = (await readFile(join(part, 'metrics.jsonl'), 'utf8')).trim().split('\n');
    assert.equal(lines.length, 3);
  });

  test('refusals: existing checkpoint, missing checkpoint, different config', async () => {
    const out = newOut();
    await train({ ...base(), out, epochs: 1 });
    await assert.rejects(train({ ...base(), out, epochs: 1 }), (e: Error) => e instanceof TrainingError && /--resume/.test(e.message));
    await assert.rejects(train({ ...base(), out: newOut(), resume: true }), (e: Error) => e instanceof TrainingError && /no checkpoint/.test(e.message));
    await assert.rejects(
      train({ ...base(), out, resume: true, batchSize: 8, lr: 0.1 }),
      (e: Error) => e instanceof TrainingError && /--batch-size 16/.test(e.message) && /--batch-size 8/.test(e.message) && /--lr 0\.1/.test(e.message),
    );
  });

  test('divergence stops at once and keeps the last good checkpoint', async () => {
    const out = newOut();
    const cfg = { ...base(), out, lr: 1e30, limitTrain: 16, epochs: 3 }; // one step per epoch
    await assert.rejects(train(cfg), (e: Error) => {
      assert.ok(e instanceof TrainingError);
      assert.equal(e.message, `loss became NaN at epoch 2, step 1; the last good checkpoint (epoch 1) is kept in ${out}`);
      return true;
    });
    const ck = await readCheckpoint(join(out, 'checkpoint.safetensors'));
    assert.equal(ck.epoch, 1);
  });

  test('evaluate() counts agree with a direct recomputation', async () => {
    manualSeed(3);
    const net = new TinyCnn();
    const ds = await cifar10({ root: fake.root, train: false, download: false, recordsPerFile: fake.recordsPerFile });
    const r = await evaluate(net, new DataLoader(ds, { batchSize: 7, prefetch: false }), 10);
    assert.equal(r.total, ds.length);
    assert.equal(r.confusion.flat().reduce((s, v) => s + v, 0), ds.length);
    const inputs = Array.from({ length: ds.length }, (_, i) => Float32Array.from(ds.images.subarray(i * 3072, (i + 1) * 3072), (v) => v / 255));
    const probs = predictProbabilities(net, inputs);
    const correct = probs.filter((p, i) => argmaxRow(p, 0, 10) === ds.labels[i]).length;
    assert.equal(r.correct, correct);
  });

  test('saveModelWeights is deterministic', async () => {
    manualSeed(5);
    const net = new TinyCnn();
    const p1 = join(work, 'w1.safetensors');
    const p2 = join(work, 'w2.safetensors');
    await saveModelWeights(p1, net);
    await saveModelWeights(p2, net);
    assert.deepEqual(await readFile(p1), await readFile(p2));
  });
});
