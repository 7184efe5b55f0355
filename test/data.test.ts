import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { encode as encodeJpeg } from 'jpeg-js';
import { PNG } from 'pngjs';
import { c as tarCreate } from 'tar';
import { cifar10 } from '../src/data/cifar10.js';
import { DataError } from '../src/data/errors.js';
import { decodeImage, toCifarInput } from '../src/data/image.js';

const R = 20; // records per fake file
const IMG = 3072;
const TRAIN = ['data_batch_1.bin', 'data_batch_2.bin', 'data_batch_3.bin', 'data_batch_4.bin', 'data_batch_5.bin'];

/** Known content: file f, record r. */
function fakeRecords(f: number): { images: Uint8Array; labels: Uint8Array } {
  const images = new Uint8Array(R * IMG);
  const labels = new Uint8Array(R);
  for (let r = 0; r < R; r++) {
    labels[r] = (r * 3 + f) % 10;
    for (let j = 0; j < IMG; j++) images[r * IMG + j] = (j * 7 + r * 13 + f * 31) & 255;
  }
  return { images, labels };
}

function packRecords(images: Uint8Array, labels: Uint8Array): Buffer {
  const buf = Buffer.alloc(labels.length * (IMG + 1));
  for (let r = 0; r < labels.length; r++) {
    buf[r * (IMG + 1)] = labels[r];
    buf.set(images.subarray(r * IMG, (r + 1) * IMG), r * (IMG + 1) + 1);
  }
  return buf;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

let work: string;
let srcDir: string; // holds cifar-10-batches-bin/
let archive: string;
let archiveBytes: Buffer;
let md5: string;
let server: http.Server;
let base: string;
let requests = 0;
const expectedTrain: { images: Uint8Array; labels: Uint8Array } = { images: new Uint8Array(), labels: new Uint8Array() };
const expectedTest: { images: Uint8Array; labels: Uint8Array } = { images: new Uint8Array(), labels: new Uint8Array() };
let rootCounter = 0;
const newRoot = async () => {
  const d = join(work, `root${rootCounter++}`);
  await mkdir(d);
  return d;
};
const quiet = { quiet: true, recordsPerFile: R };

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'convnets-data-'));
  srcDir = join(work, 'src');
  const bin = join(srcDir, 'cifar-10-batches-bin');
  await mkdir(bin, { recursive: true });
  const trainParts = TRAIN.map((_, f) => fakeRecords(f));
  for (let f = 0; f < TRAIN.length; f++) await writeFile(join(bin, TRAIN[f]), packRecords(trainParts[f].images, trainParts[f].labels));
  const t = fakeRecords(7);
  await writeFile(join(bin, 'test_batch.bin'), packRecords(t.images, t.labels));
  await writeFile(join(bin, 'batches.meta.txt'), 'c0\nc1\nc2\nc3\nc4\nc5\nc6\nc7\nc8\nc9\n\n');
  expectedTrain.images = concat(trainParts.map((p) => p.images));
  expectedTrain.labels = concat(trainParts.map((p) => p.labels));
  expectedTest.images = t.images;
  expectedTest.labels = t.labels;

  archive = join(work, 'cifar-10-binary.tar.gz');
  await tarCreate({ gzip: true, file: archive, cwd: srcDir }, ['cifar-10-batches-bin']);
  archiveBytes = await readFile(archive);
  md5 = createHash('md5').update(archiveBytes).digest('hex');

  server = http.createServer((req, res) => {
    requests++;
    if (req.url === '/ok.tar.gz') {
      res.writeHead(200, { 'content-length': archiveBytes.length, 'content-type': 'application/gzip' });
      res.end(archiveBytes);
    } else if (req.url === '/redirect') {
      res.writeHead(302, { location: '/ok.tar.gz' });
      res.end();
    } else if (req.url === '/half.tar.gz') {
      res.writeHead(200, { 'content-length': archiveBytes.length });
      res.write(archiveBytes.subarray(0, archiveBytes.length >> 1), () => {
        setTimeout(() => res.socket?.destroy(), 20);
      });
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  await rm(work, { recursive: true, force: true });
});

function assertSame(ds: { images: Uint8Array; labels: Uint8Array; length: number }, exp: { images: Uint8Array; labels: Uint8Array }) {
  assert.equal(ds.length, exp.labels.length);
  assert.equal(ds.images.length, exp.images.length);
  assert.ok(Buffer.from(ds.images).equals(Buffer.from(exp.images)), 'image bytes differ');
  assert.deepEqual(Array.from(ds.labels), Array.from(exp.labels));
}

describe('cifar10', () => {
  test('downloads over http, verifies MD5, extracts and reads exactly the generated data', async () => {
    const root = await newRoot();
    const seen: number[] = [];
    const before = requests;
    const train = await cifar10({
      ...quiet,
      root,
      download: true,
      url: `${base}/redirect`,
      md5,
      onProgress: (got, total) => {
        seen.push(got);
        assert.equal(total, archiveBytes.length);
      },
    });
    assert.equal(requests - before, 2); // redirect + file
    assertSame(train, expectedTrain);
    assert.equal(train.length, 5 * R);
    assert.deepEqual(train.classes, ['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9']);
    assert.equal(seen.at(-1), archiveBytes.length);
    assert.ok(existsSync(join(root, 'cifar-10-binary.tar.gz')));
    assert.ok(!existsSync(join(root, 'cifar-10-binary.tar.gz.part')));

    // Already extracted: no network (the URL points nowhere).
    const n = requests;
    const test_ = await cifar10({ ...quiet, root, train: false, download: true, url: 'http://127.0.0.1:9/none', md5 });
    assertSame(test_, expectedTest);
    assert.equal(requests, n);
    // Root may also be the batches folder itself.
    const direct = await cifar10({ ...quiet, root: join(root, 'cifar-10-batches-bin'), train: false });
    assertSame(direct, expectedTest);
  });

  test('file: URL', async () => {
    const root = await newRoot();
    const ds = await cifar10({ ...quiet, root, train: false, download: true, url: pathToFileURL(archive).href, md5 });
    assertSame(ds, expectedTest);
  });

  test('existing archive is verified and extracted without downloading', async () => {
    const root = await newRoot();
    await cp(archive, join(root, 'cifar-10-binary.tar.gz'));
    const n = requests;
    const ds = await cifar10({ ...quiet, root, download: true, url: `${base}/ok.tar.gz`, md5 });
    assertSame(ds, expectedTrain);
    assert.equal(requests, n);
  });

  test('env CONVNETS_CIFAR10_URL / CONVNETS_CIFAR10_MD5 override the defaults', async () => {
    const root = await newRoot();
    process.env.CONVNETS_CIFAR10_URL = pathToFileURL(archive).href;
    process.env.CONVNETS_CIFAR10_MD5 = md5;
    try {
      assertSame(await cifar10({ ...quiet, root, train: false, download: true }), expectedTest);
    } finally {
      delete process.env.CONVNETS_CIFAR10_URL;
      delete process.env.CONVNETS_CIFAR10_MD5;
    }
  });

  test('existing archive with a wrong MD5 is reported, not used', async () => {
    const root = await newRoot();
    const path = join(root, 'cifar-10-binary.tar.gz');
    await writeFile(path, archiveBytes.subarray(0, 100));
    await assert.rejects(
      cifar10({ ...quiet, root, download: true, url: `${base}/ok.tar.gz`, md5 }),
      (err: Error) => err instanceof DataError && /MD5/.test(err.message) && err.message.includes(path),
    );
    assert.ok(!existsSync(join(root, 'cifar-10-batches-bin')));
  });

  test('wrong MD5: error mentions MD5, nothing left behind', async () => {
    const root = await newRoot();
    await assert.rejects(
      cifar10({ ...quiet, root, download: true, url: `${base}/ok.tar.gz`, md5: '0'.repeat(32) }),
      (err: Error) => err instanceof DataError && /MD5/.test(err.message) && err.message.includes(`${base}/ok.tar.gz`),
    );
    assert.deepEqual(await readdir(root), []);
  });

  test('connection closed halfway: error, no archive left', async () => {
    const root = await newRoot();
    await assert.rejects(cifar10({ ...quiet, root, download: true, url: `${base}/half.tar.gz`, md5 }), (err: Error) => {
      assert.ok(err instanceof DataError);
      assert.ok(err.message.includes(`${base}/half.tar.gz`), err.message);
      assert.match(err.message, /connection (lost|closed)/);
      return true;
    });
    assert.deepEqual(await readdir(root), []);
  });

  test('HTTP 404: error names the URL and the status', async () => {
    const root = await newRoot();
    const url = `${base}/missing.tar.gz`;
    await assert.rejects(cifar10({ ...quiet, root, download: true, url, md5 }), (err: Error) => {
      assert.ok(err.message.includes(url), err.message);
      assert.match(err.message, /404/);
      return true;
    });
    assert.deepEqual(await readdir(root), []);
  });

  test('connection refused: one line naming the URL and where to put the archive', async () => {
    const s = http.createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
    const root = await newRoot();
    const url = `http://127.0.0.1:${port}/cifar.tar.gz`;
    await assert.rejects(cifar10({ ...quiet, root, download: true, url, md5 }), (err: Error) => {
      assert.ok(err instanceof DataError);
      assert.ok(!err.message.includes('\n'));
      assert.ok(err.message.includes(url), err.message);
      assert.match(err.message, /refused/);
      assert.ok(err.message.includes(join(root, 'cifar-10-binary.tar.gz')), err.message);
      return true;
    });
  });

  test('missing data without download: error names the folder and --data', async () => {
    const root = await newRoot();
    await assert.rejects(cifar10({ ...quiet, root }), (err: Error) => {
      assert.ok(err.message.includes(join(root, 'cifar-10-batches-bin')), err.message);
      assert.match(err.message, /--data/);
      assert.match(err.message, /download/);
      return true;
    });
  });

  test('truncated, missing and corrupt .bin files are named', async () => {
    const root = await newRoot();
    const bin = join(root, 'cifar-10-batches-bin');
    await cp(join(srcDir, 'cifar-10-batches-bin'), bin, { recursive: true });
    await truncate(join(bin, 'data_batch_3.bin'), 1000);
    await assert.rejects(cifar10({ ...quiet, root }), (err: Error) => {
      assert.ok(err.message.includes(join(bin, 'data_batch_3.bin')), err.message);
      assert.match(err.message, /truncated/);
      assert.ok(err.message.includes(String(R * 3073)) && err.message.includes('1000'), err.message);
      return true;
    });
    await rm(join(bin, 'data_batch_3.bin'));
    await assert.rejects(cifar10({ ...quiet, root }), (err: Error) => {
      assert.ok(err.message.includes(join(bin, 'data_batch_3.bin')), err.message);
      assert.match(err.message, /missing/);
      return true;
    });
    // Label >= 10 in the test file, record 5.
    const path = join(bin, 'test_batch.bin');
    const buf = await readFile(path);
    buf[5 * 3073] = 10;
    await writeFile(path, buf);
    await assert.rejects(cifar10({ ...quiet, root, train: false }), (err: Error) => {
      assert.ok(err.message.includes(path), err.message);
      assert.match(err.message, /record 5/);
      assert.match(err.message, /label 10/);
      return true;
    });
  });

  const real = '/work/shared/data/cifar-10-batches-bin';
  test('real CIFAR-10 test set', { skip: !existsSync(join(real, 'test_batch.bin')) }, async () => {
    const ds = await cifar10({ root: real, train: false, quiet: true });
    assert.equal(ds.length, 10000);
    assert.equal(ds.images.length, 10000 * 3072);
    const counts = new Array(10).fill(0);
    for (const l of ds.labels) counts[l]++;
    assert.deepEqual(counts, new Array(10).fill(1000));
    const raw = await readFile(join(real, 'test_batch.bin'));
    assert.equal(ds.labels[0], raw[0]);
    assert.equal(ds.images[0], raw[1]);
    assert.equal(ds.images[3071], raw[3072]);
    assert.equal(ds.classes[0], 'airplane');
    assert.equal(ds.classes.length, 10);
  });
});

describe('image', () => {
  test('decode PNG (RGBA and 16-bit grey) to RGB', async () => {
    const dir = await newRoot();
    const png = new PNG({ width: 3, height: 2 });
    for (let i = 0; i < 6; i++) {
      png.data[i * 4] = i * 10;
      png.data[i * 4 + 1] = i * 20;
      png.data[i * 4 + 2] = i * 30;
      png.data[i * 4 + 3] = 128;
    }
    const p = join(dir, 'a.png');
    await writeFile(p, PNG.sync.write(png));
    const img = await decodeImage(p);
    assert.equal(img.width, 3);
    assert.equal(img.height, 2);
    assert.deepEqual(Array.from(img.data), [0, 0, 0, 10, 20, 30, 20, 40, 60, 30, 60, 90, 40, 80, 120, 50, 100, 150]);

    // 16-bit input for pngjs: native-endian uint16 RGBA samples.
    const grey = new PNG({ width: 2, height: 2 });
    const u16 = new Uint16Array(16);
    for (let i = 0; i < 4; i++) u16.set([i * 60 * 257, i * 60 * 257, i * 60 * 257, 65535], i * 4);
    grey.data = Buffer.from(u16.buffer);
    const g = join(dir, 'g.png');
    await writeFile(g, PNG.sync.write(grey, { colorType: 0, inputColorType: 6, bitDepth: 16 }));
    const gi = await decodeImage(g);
    assert.deepEqual(Array.from(gi.data), [0, 0, 0, 60, 60, 60, 120, 120, 120, 180, 180, 180]);
  });

  test('decode JPEG', async () => {
    const dir = await newRoot();
    const w = 16;
    const h = 8;
    const data = Buffer.alloc(w * h * 4);
    for (let i = 0; i < w * h; i++) data.set([200, 100, 50, 255], i * 4);
    const p = join(dir, 'a.jpg');
    await writeFile(p, encodeJpeg({ data, width: w, height: h }, 95).data);
    const img = await decodeImage(p);
    assert.equal(img.width, w);
    assert.equal(img.height, h);
    assert.equal(img.data.length, w * h * 3);
    for (let i = 0; i < w * h; i++) {
      assert.ok(Math.abs(img.data[i * 3] - 200) <= 3 && Math.abs(img.data[i * 3 + 1] - 100) <= 3 && Math.abs(img.data[i * 3 + 2] - 50) <= 3);
    }
  });

  test('resize keeps a constant image constant; CHW in [0, 1]', () => {
    const w = 50;
    const h = 37;
    const data = new Uint8Array(w * h * 3);
    for (let i = 0; i < w * h; i++) data.set([17, 128, 255], i * 3);
    const x = toCifarInput({ data, width: w, height: h });
    assert.equal(x.length, 3 * 32 * 32);
    for (let i = 0; i < 1024; i++) {
      assert.equal(x[i], Math.fround(17 / 255));
      assert.equal(x[1024 + i], Math.fround(128 / 255));
      assert.equal(x[2048 + i], 1);
    }
    // Identity size keeps the pixels; upsampling a 2x1 ramp interpolates.
    const small = toCifarInput({ data: new Uint8Array([0, 0, 0, 255, 255, 255]), width: 2, height: 1 }, 4);
    assert.deepEqual(Array.from(small.subarray(0, 4)), [0, 0.25, 0.75, 1].map(Math.fround));
  });

  test('corrupt and unknown files are named', async () => {
    const dir = await newRoot();
    const bad = join(dir, 'bad.png');
    await writeFile(bad, Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(40, 7)]));
    await assert.rejects(decodeImage(bad), (e: Error) => e instanceof DataError && e.message.includes(bad) && /PNG/.test(e.message));
    const badJ = join(dir, 'bad.jpg');
    await writeFile(badJ, Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(40, 3)]));
    await assert.rejects(decodeImage(badJ), (e: Error) => e instanceof DataError && e.message.includes(badJ) && /JPEG/.test(e.message));
    const txt = join(dir, 'x.png');
    await writeFile(txt, 'hello');
    await assert.rejects(decodeImage(txt), (e: Error) => e instanceof DataError && e.message.includes(txt));
  });
});
