// The command line, run as a child process: usage errors, a real-model smoke run, the files
// of a run, kill -9 + --resume, divergence, refusals, eval and predict.
//
// Most runs use the test-only TinyCnn (CONVNETS_TEST_MODELS=1): the engine may be on its
// pure-TypeScript reference backend, where one MobileNetV1 step on 16 images takes ~8 s.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PNG } from 'pngjs';
import { listBackends } from '../src/backend/registry.js';
import { cifar10 } from '../src/data/cifar10.js';
import { loadModelWeights, readCheckpoint } from '../src/train/checkpoint.js';
import { argmaxRow, predictProbabilities } from '../src/train/evaluate.js';
import { createModel, type EpochMetrics } from '../src/train/trainer.js';
import { writeClassPng, writeFakeCifar, type FakeCifar } from './helpers/cifar_fake.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
process.env.CONVNETS_TEST_MODELS = '1';
const ENV: NodeJS.ProcessEnv = { ...process.env, CONVNETS_TEST_MODELS: '1' };
// Without the native backend, select the reference one explicitly (no warning on stderr).
if (!listBackends().includes('native')) ENV.CONVNETS_BACKEND = 'reference';

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function start(args: string[]) {
  const child = spawn(process.execPath, [MAIN, ...args], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Result>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done };
}

const cli = (...args: string[]) => start(args).done;

/** stderr is exactly one `error: ...` line without a stack trace. */
function assertOneLineError(r: Result, pattern?: RegExp): void {
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  assert.equal(lines.length, 1, `expected one stderr line, got:\n${r.stderr}`);
  assert.match(lines[0], /^error: /);
  if (pattern) assert.match(lines[0], pattern);
}

const readLines = async (p: string) => (existsSync(p) ? (await readFile(p, 'utf8')).split('\n').filter((l) => l) : []);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let work: string;
let fake: FakeCifar;
let data: string[];
let runDir: string; // an uninterrupted tinycnn run, shared by the eval / predict tests
const RUN = ['--model', 'tinycnn', '--epochs', '3', '--batch-size', '16', '--limit-test', '64', '--schedule', 'cosine', '--augment', '--seed', '7'];

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'convnets-cli-'));
  fake = await writeFakeCifar(join(work, 'data'), 300); // 1500 training and 300 test images
  data = ['--data', fake.root, '--records-per-file', String(fake.recordsPerFile), '--no-download'];
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('usage', () => {
  test('--help for every command exits 0', async () => {
    const rs = await Promise.all([cli('--help'), cli('train', '--help'), cli('eval', '--help'), cli('predict', '--help')]);
    for (const r of rs) {
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^Usage: convnets/);
    }
    assert.match(rs[1].stdout, /--limit-train <n>/);
    assert.match(rs[1].stdout, /--schedule <name>/);
  });

  test('unknown options, bad values and excess arguments: one line, exit 2', async () => {
    const cases: [string[], RegExp][] = [
      [['train', '--bogus'], /unknown option '--bogus'/],
      [['train', '--epochs', 'abc'], /--epochs/],
      [['train', '--epochs', '2.5'], /--epochs/],
      [['train', '--lr', '-1'], /--lr/],
      [['train', '--model', 'vgg16'], /--model.*mobilenetv2/],
      [['train', '--optimizer', 'rmsprop'], /--optimizer/],
      [['train', '--schedule', 'step'], /--schedule/],
      [['train', '--batch-size', '0'], /--batch-size/],
      [['train', 'extra'], /too many arguments/],
      [['eval', '--model', 'mobilenetv1'], /--weights/],
      [['predict', '--weights', 'w.safetensors'], /images/],
      [['frobnicate'], /unknown command/],
    ];
    const rs = await Promise.all(cases.map(([a]) => cli(...a)));
    rs.forEach((r, i) => {
      assert.equal(r.code, 2, `${cases[i][0].join(' ')}: ${r.stderr}`);
      assertOneLineError(r, cases[i][1]);
    });
  });

  test('missing data folder with --no-download: exit 1 naming the folder', async () => {
    const missing = join(work, 'no-such-dir');
    const r = await cli('train', '--data', missing, '--no-download', '--out', join(work, 'never'));
    assert.equal(r.code, 1);
    assertOneLineError(r, new RegExp(missing.replace(/[/\\.]/g, '\\$&')));
    assert.ok(!existsSync(join(work, 'never', 'checkpoint.safetensors')));
  });
});

describe('train', () => {
  test('MobileNetV1 smoke run: prints the net and the epoch line, writes the files', async () => {
    // One step of 8 images: ~5-10 s on the reference backend.
    const out = join(work, 'mnv1');
    const r = await cli('train', '--model', 'mobilenetv1', '--epochs', '1', '--batch-size', '8', '--limit-train', '8', '--limit-test', '8', '--out', out, ...data);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^MobileNetV1\(\n {2}\(conv1\): Conv2d\(3, 32/);
    assert.match(r.stdout, /Model: mobilenetv1, 3,2\d\d,\d\d\d parameters/);
    assert.match(r.stdout, /Backend: \w+/);
    assert.match(r.stdout, /Epoch 1\/1 done in \d+\.\d s: train loss \d+\.\d{4}, train acc \d+\.\d\d%, test loss \S+, test acc \d+\.\d\d%\n$/);
    const m = (await readLines(join(out, 'metrics.jsonl'))).map((l) => JSON.parse(l) as EpochMetrics);
    assert.equal(m.length, 1);
    const w = await readFile(join(out, 'model.safetensors'));
    const header = JSON.parse(w.subarray(8, 8 + Number(w.readBigUInt64LE(0))).toString()) as Record<string, unknown>;
    assert.ok('conv1.weight' in header && 'bn1.num_batches_tracked' in header && 'fc.weight' in header, Object.keys(header).slice(0, 5).join());
  });

  test('a run: loss falls, files and metrics; kill -9 in epoch 2 and --resume gives the same weights', async () => {
    runDir = join(work, 'full');
    const full = await cli('train', ...RUN, '--out', runDir, ...data);
    assert.equal(full.code, 0, full.stderr);
    assert.equal(full.stdout.match(/^Epoch \d\/3 done in/gm)?.length, 3);

    // metrics.jsonl: one object per epoch with every field.
    const metrics = (await readLines(join(runDir, 'metrics.jsonl'))).map((l) => JSON.parse(l) as EpochMetrics);
    assert.deepEqual(metrics.map((m) => m.epoch), [1, 2, 3]);
    for (const m of metrics) {
      for (const k of ['epoch', 'time_s', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'lr', 'images_per_s'] as const) {
        assert.equal(typeof m[k], 'number', `${k} in ${JSON.stringify(m)}`);
      }
    }
    assert.ok(metrics[2].train_loss < 0.8 * metrics[0].train_loss, `train loss ${metrics[0].train_loss} -> ${metrics[2].train_loss}`);
    assert.ok(metrics[2].lr < metrics[0].lr); // cosine
    const png = PNG.sync.read(await readFile(join(runDir, 'curves.png')));
    assert.ok(png.width > 100 && png.height > 100);
    assert.match(await readFile(join(runDir, 'curves.html'), 'utf8'), /<svg/);
    const ck = await readCheckpoint(join(runDir, 'checkpoint.safetensors'));
    assert.equal(ck.epoch, 3);
    assert.equal(ck.history.length, 3);

    // Interrupted run: kill -9 once epoch 1 is saved, then resume.
    const part = join(work, 'part');
    const run = start(['train', ...RUN, '--out', part, '--quiet', ...data]);
    const deadline = Date.now() + 40_000;
    while ((await readLines(join(part, 'metrics.jsonl'))).length < 1 && Date.now() < deadline) await sleep(10);
    // Into epoch 2: wait about a third of an epoch (epochs take ~1 s on the reference backend).
    const epoch1 = JSON.parse((await readLines(join(part, 'metrics.jsonl')))[0]) as EpochMetrics;
    await sleep(Math.min(300, epoch1.time_s * 300));
    run.child.kill('SIGKILL');
    const killed = await run.done;
    assert.equal(killed.signal, 'SIGKILL', 'the run finished before it could be killed');
    const linesAtKill = (await readLines(join(part, 'metrics.jsonl'))).length;
    assert.ok(linesAtKill >= 1 && linesAtKill < 3, `${linesAtKill} epochs were done at the kill`);

    const resumed = await cli('train', ...RUN, '--out', part, '--resume', ...data);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stdout, /Resuming from .*checkpoint\.safetensors after epoch [12]\/3/);
    assert.deepEqual(await readFile(join(part, 'model.safetensors')), await readFile(join(runDir, 'model.safetensors')));
    const resumedMetrics = (await readLines(join(part, 'metrics.jsonl'))).map((l) => JSON.parse(l) as EpochMetrics);
    assert.deepEqual(resumedMetrics.map((m) => [m.epoch, m.train_loss, m.test_acc]), metrics.map((m) => [m.epoch, m.train_loss, m.test_acc]));
  });

  test('Ctrl-C stops between steps: exit 130, one line, whole files only', async () => {
    const out = join(work, 'sigint');
    const run = start(['train', ...RUN, '--epochs', '20', '--out', out, '--quiet', ...data]);
    const deadline = Date.now() + 40_000;
    while ((await readLines(join(out, 'metrics.jsonl'))).length < 1 && Date.now() < deadline) await sleep(10);
    run.child.kill('SIGINT');
    const r = await run.done;
    assert.equal(r.code, 130, r.stderr);
    assertOneLineError(r, /^error: interrupted at (epoch \d+, step \d+|the end of epoch \d+, before its evaluation); the last good checkpoint \(epoch \d+\) is kept in/);
    const files = await readdir(out);
    assert.deepEqual(files.filter((f) => /tmp/.test(f)), []);
    const ck = await readCheckpoint(join(out, 'checkpoint.safetensors'));
    assert.equal(ck.history.length, ck.epoch);
  });

  test('an existing checkpoint needs --resume; --resume needs the same settings', async () => {
    assert.ok(runDir, 'needs the run above');
    const again = await cli('train', ...RUN, '--out', runDir, ...data);
    assert.equal(again.code, 1);
    assertOneLineError(again, /exists.*--resume.*--out/);
    const other = await cli('train', ...RUN, '--batch-size', '32', '--out', runDir, '--resume', ...data);
    assert.equal(other.code, 1);
    assertOneLineError(other, /cannot resume.*--batch-size 16.*--batch-size 32/);
  });

  test('divergence: NaN error, exit 1, the previous checkpoint untouched', async () => {
    const out = join(work, 'nan');
    const args = ['train', '--model', 'tinycnn', '--lr', '1e30', '--batch-size', '16', '--limit-train', '16', '--limit-test', '16', '--out', out, '--quiet', ...data];
    const first = await cli(...args, '--epochs', '1'); // one step: finite loss, huge weights
    assert.equal(first.code, 0, first.stderr);
    const before = await readFile(join(out, 'checkpoint.safetensors'));
    const r = await cli(...args, '--epochs', '2', '--resume');
    assert.equal(r.code, 1);
    assertOneLineError(r, new RegExp(`^error: loss became NaN at epoch 2, step 1; the last good checkpoint \\(epoch 1\\) is kept in ${out.replace(/[/\\.]/g, '\\$&')}$`));
    assert.deepEqual(await readFile(join(out, 'checkpoint.safetensors')), before);
    assert.equal((await readLines(join(out, 'metrics.jsonl'))).length, 1);
  });
});

describe('eval and predict', () => {
  test('eval: accuracy equals a recomputation; tables; --json', async () => {
    assert.ok(runDir, 'needs the train run');
    const weights = join(runDir, 'model.safetensors');
    const r = await cli('eval', '--model', 'tinycnn', '--weights', weights, '--limit-test', '100', '--batch-size', '32', ...data);
    assert.equal(r.code, 0, r.stderr);
    const m = /Test accuracy: (\d+\.\d\d)% \((\d+)\/(\d+)\)/.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.equal(Number(m[3]), 100);

    // Recompute in-process.
    const net = createModel('tinycnn', 10);
    await loadModelWeights(weights, net);
    const ds = await cifar10({ root: fake.root, train: false, recordsPerFile: fake.recordsPerFile });
    const inputs = Array.from({ length: 100 }, (_, i) => Float32Array.from(ds.images.subarray(i * 3072, (i + 1) * 3072), (v) => v / 255));
    const correct = predictProbabilities(net, inputs).filter((p, i) => argmaxRow(p, 0, 10) === ds.labels[i]).length;
    assert.equal(Number(m[2]), correct);
    assert.equal(m[1], ((100 * correct) / 100).toFixed(2));

    // Per-class table and an aligned 10x10 confusion matrix.
    assert.match(r.stdout, /Per-class accuracy:\nclass\s+correct\s+total\s+accuracy\n0 airplane/);
    const cm = r.stdout.split('Confusion matrix')[1].split('\n').slice(1).filter((l) => l.trim());
    assert.equal(cm.length, 11);
    assert.equal(new Set(cm.map((l) => l.length)).size, 1, 'rows are aligned');
    const cells = cm.slice(1).map((l) => l.trim().split(/\s+/).slice(-10).map(Number));
    assert.equal(cells.flat().reduce((s, v) => s + v, 0), 100);
    assert.equal(cells.reduce((s, row, i) => s + row[i], 0), correct);

    const j = await cli('eval', '--weights', weights, '--limit-test', '100', '--json', ...data); // model from the file's metadata
    assert.equal(j.code, 0, j.stderr);
    const parsed = JSON.parse(j.stdout) as { correct: number; images: number; confusion: number[][]; per_class: unknown[]; model: string };
    assert.equal(parsed.model, 'tinycnn');
    assert.equal(parsed.correct, correct);
    assert.equal(parsed.confusion.length, 10);
    assert.equal(parsed.per_class.length, 10);
  });

  test('eval with a bad weights file or the wrong model: one-line error, exit 1', async () => {
    const bad = join(work, 'bad.safetensors');
    await writeFile(bad, 'this is not a safetensors file at all');
    const r1 = await cli('eval', '--model', 'tinycnn', '--weights', bad, ...data);
    assert.equal(r1.code, 1);
    assertOneLineError(r1, /bad\.safetensors/);
    const r2 = await cli('eval', '--model', 'tinycnn', '--weights', join(work, 'missing.safetensors'), ...data);
    assert.equal(r2.code, 1);
    assertOneLineError(r2, /missing\.safetensors: no such file/);
    const r3 = await cli('eval', '--model', 'tinycnn', '--num-classes', '5', '--weights', join(runDir, 'model.safetensors'), ...data);
    assert.equal(r3.code, 1);
    assertOneLineError(r3, /shape mismatch/);
  });

  test('predict: top-5 classes with probabilities for PNG files', async () => {
    assert.ok(runDir, 'needs the train run');
    const img1 = join(work, 'red.png');
    const img2 = join(work, 'blue.png');
    await writeClassPng(img1, 0, 48, 40);
    await writeClassPng(img2, 2, 32, 32);
    const weights = join(work, 'copy.safetensors');
    await copyFile(join(runDir, 'model.safetensors'), weights);
    const r = await cli('predict', '--model', 'tinycnn', '--weights', weights, img1, img2);
    assert.equal(r.code, 0, r.stderr);
    const blocks = r.stdout.trim().split(/\n(?=\S)/);
    assert.equal(blocks.length, 2);
    for (const [i, b] of blocks.entries()) {
      const [head, ...rows] = b.split('\n');
      assert.equal(head, [img1, img2][i]);
      assert.equal(rows.length, 5);
      const probs = rows.map((row) => {
        const mm = /^ {2}(\w+)\s+(\d\.\d{4})$/.exec(row);
        assert.ok(mm, row);
        return Number(mm[2]);
      });
      for (let k = 1; k < 5; k++) assert.ok(probs[k] <= probs[k - 1]);
      const sum = probs.reduce((s, v) => s + v, 0);
      assert.ok(sum <= 1.0005 && sum > 0, `sum ${sum}`);
    }
    // The trained net recognises the class patterns.
    assert.match(blocks[0].split('\n')[1], /^ {2}airplane /);
    assert.match(blocks[1].split('\n')[1], /^ {2}bird /);

    const notImage = join(work, 'notes.txt');
    await writeFile(notImage, 'hello');
    const e = await cli('predict', '--model', 'tinycnn', '--weights', weights, notImage);
    assert.equal(e.code, 1);
    assertOneLineError(e, /notes\.txt/);
  });
});

describe('summary and fine-tuning', () => {
  test('summary: layer table with the reference MAC totals', async () => {
    const r50 = await cli('summary', '--model', 'resnet50_imagenet');
    assert.equal(r50.code, 0, r50.stderr);
    assert.match(r50.stdout, /Total MACs: 4\.09 G/);
    const v1 = await cli('summary', '--model', 'mobilenetv1_0.25_imagenet', '--input', '3x128x128', '--json');
    assert.equal(v1.code, 0, v1.stderr);
    const s = JSON.parse(v1.stdout) as { totalMacs: number; totalParams: number };
    assert.ok(Math.abs(s.totalMacs / 0.0136e9 - 1) < 0.005, `MACs ${s.totalMacs}`);
    assert.equal(s.totalParams, 470_072);
    const bad = await cli('summary', '--model', 'resnet18', '--input', '3xfoo');
    assert.equal(bad.code, 2);
    assertOneLineError(bad, /--input/);
  });

  test('train --weights W.pth --num-classes 10 --freeze backbone: loads torchvision weights, trains only the new head', async () => {
    const pth = fileURLToPath(new URL('../../test/fixtures/tv_resnet50.pth', import.meta.url));
    const out = join(work, 'finetune');
    const r = await cli('train', '--model', 'resnet50_imagenet', '--weights', pth, '--num-classes', '10', '--freeze', 'backbone', '--epochs', '1', '--batch-size', '16', '--limit-train', '32', '--limit-test', '16', ...data, '--out', out, '--quiet');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /loaded 318 of 320 tensors .*classifier fc not loaded/);
    assert.match(r.stdout, /freeze backbone: 20,490 of 23,528,522 parameters trainable/);
    // Every backbone tensor equals the .pth; only fc (and BN running statistics) changed.
    const { loadWeights } = await import('../src/io/weights.js');
    const src = await loadWeights(pth);
    const trained = createModel('resnet50_imagenet', 10);
    await loadModelWeights(join(out, 'model.safetensors'), trained);
    for (const [k, t] of trained.namedParameters()) {
      if (k.startsWith('fc.')) continue;
      assert.deepEqual(t.values, src.get(k)!.values, k);
    }
    // A checkpoint that does not fit outside the classifier is refused with one line.
    const wrong = await cli('train', '--model', 'resnet50', '--weights', pth, '--epochs', '1', ...data, '--out', join(work, 'ft-wrong'), '--quiet');
    assert.equal(wrong.code, 1);
    assertOneLineError(wrong, /tv_resnet50\.pth: the checkpoint does not fit/);
  });
});
