import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { PNG } from 'pngjs';
import { writeFileAtomic, writeFileAtomicSync } from '../src/io/atomic.js';
import { renderCurvesHtml, renderCurvesPng, type HistoryEntry } from '../src/train/plot.js';
import { ProgressBar } from '../src/train/progress.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'convnets-plot-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const historyA: HistoryEntry[] = [
  { epoch: 1, trainLoss: 1.9876, trainAcc: 0.2831, testLoss: 1.7012, testAcc: 0.3655 },
  { epoch: 2, trainLoss: 1.4321, trainAcc: 0.4822, testLoss: 1.3547, testAcc: 0.5139 },
  { epoch: 3, trainLoss: 1.1025, trainAcc: 0.6107, testLoss: 1.1893, testAcc: 0.5874 },
  { epoch: 4, trainLoss: 0.9012, trainAcc: 0.6833, testLoss: 1.0066, testAcc: 0.6512 },
];
const historyB: HistoryEntry[] = [
  { epoch: 1, trainLoss: 2.2, trainAcc: 0.15 },
  { epoch: 2, trainLoss: 2.0, trainAcc: 0.25 },
];

async function readPng(path: string): Promise<PNG> {
  return PNG.sync.read(await readFile(path));
}

/** Count non-white pixels inside the plot area of a panel (excluding axes region). */
function inkInPanel(png: PNG, panel: 0 | 1): number {
  let n = 0;
  const x0 = panel * 450 + 70;
  for (let y = 45; y < 340; y++) {
    for (let x = x0; x < x0 + 350; x++) {
      const i = (y * png.width + x) * 4;
      const r = png.data[i];
      const g = png.data[i + 1];
      const b = png.data[i + 2];
      // Coloured (not grey) pixels come from the data lines.
      if (Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
    }
  }
  return n;
}

describe('plot', () => {
  test('PNG: size, curves in both panels, differs between histories, no temp files', async () => {
    const a = join(dir, 'a.png');
    const b = join(dir, 'b.png');
    await renderCurvesPng(historyA, a);
    await renderCurvesPng(historyB, b);
    const pa = await readPng(a);
    const pb = await readPng(b);
    assert.equal(pa.width, 900);
    assert.equal(pa.height, 400);
    assert.ok(inkInPanel(pa, 0) > 200, 'loss panel has curves');
    assert.ok(inkInPanel(pa, 1) > 200, 'accuracy panel has curves');
    assert.ok(inkInPanel(pb, 0) > 100 && inkInPanel(pb, 1) > 100);
    assert.ok(!pa.data.equals(pb.data));
    // Dark pixels (text, axes) exist outside the plot area (tick labels, titles).
    let dark = 0;
    for (let i = 0; i < pa.data.length; i += 4) if (pa.data[i] < 80 && pa.data[i + 1] < 80 && pa.data[i + 2] < 80) dark++;
    assert.ok(dark > 500);
    assert.deepEqual((await readdir(dir)).sort(), ['a.png', 'b.png']);
  });

  test('PNG: single epoch and constant values', async () => {
    const p = join(dir, 'one.png');
    await renderCurvesPng([{ epoch: 1, trainLoss: 0.5, trainAcc: 0.5, testLoss: 0.5, testAcc: 0.5 }], p);
    const png = await readPng(p);
    assert.equal(png.width, 900);
    assert.ok(inkInPanel(png, 0) > 10 && inkInPanel(png, 1) > 10, 'single points are drawn as markers');
    await renderCurvesPng([], join(dir, 'empty.png'));
    await rm(join(dir, 'empty.png'));
    await rm(p);
  });

  test('HTML: inline SVG and a table of the numbers, no external assets', async () => {
    const p = join(dir, 'curves.html');
    await renderCurvesHtml(historyA, p);
    const html = await readFile(p, 'utf8');
    assert.match(html, /^<!DOCTYPE html>/);
    assert.equal((html.match(/<svg/g) ?? []).length, 2);
    for (const s of ['1.9876', '0.9012', '1.0066', '28.31', '65.12', '58.74']) assert.ok(html.includes(s), s);
    assert.ok(!/(src|href)=["']https?:/.test(html));
    assert.ok(html.includes('<polyline'));
    await renderCurvesHtml([{ epoch: 1, trainLoss: 2.5, trainAcc: 42.5 }], p); // percent input, one epoch
    const one = await readFile(p, 'utf8');
    assert.ok(one.includes('2.5000') && one.includes('42.50'));
    assert.ok(one.includes('<circle'));
    await rm(p);
    assert.deepEqual((await readdir(dir)).sort(), ['a.png', 'b.png']);
  });
});

describe('atomic writes', () => {
  test('replace content, no temp left; failure removes the temp file', async () => {
    const p = join(dir, 'x.txt');
    await writeFileAtomic(p, 'one');
    await writeFileAtomic(p, new Uint8Array([116, 119, 111]));
    assert.equal(await readFile(p, 'utf8'), 'two');
    writeFileAtomicSync(p, 'three');
    assert.equal(await readFile(p, 'utf8'), 'three');
    await assert.rejects(writeFileAtomic(join(dir, 'no-such-dir', 'y.txt'), 'x'));
    // Renaming onto a directory fails: the temp file must be cleaned up.
    await assert.rejects(writeFileAtomic(dir, 'x'));
    assert.throws(() => writeFileAtomicSync(dir, 'x'));
    await rm(p);
    assert.deepEqual((await readdir(dir)).sort(), ['a.png', 'b.png']);
  });
});

describe('ProgressBar', () => {
  test('non-TTY: plain lines, throttled, final line', () => {
    const stream = new PassThrough();
    let out = '';
    stream.on('data', (d: Buffer) => (out += d.toString()));
    const bar = new ProgressBar({ stream, intervalMs: 60_000 });
    bar.start(10, 'epoch 1/3');
    for (let i = 1; i <= 10; i++) bar.update(i, { loss: 1 / i, acc: i / 20, imgPerSec: 1234.5 });
    bar.stop();
    const lines = out.trim().split('\n');
    assert.equal(lines.length, 1);
    assert.match(lines[0], /epoch 1\/3 10\/10/);
    assert.match(lines[0], /loss 0\.1000/);
    assert.match(lines[0], /acc 50\.00%/);
    assert.match(lines[0], /1235 img\/s/);
    const q = new PassThrough();
    let qOut = '';
    q.on('data', (d: Buffer) => (qOut += d.toString()));
    const quiet = new ProgressBar({ stream: q, quiet: true });
    quiet.start(3, 'x');
    quiet.update(3, { loss: 1 });
    quiet.stop();
    assert.equal(qOut, '');
  });
});
