/**
 * CIFAR-10 in the official binary layout (`cifar-10-batches-bin/`): locate, optionally
 * download + verify + extract, and read into one contiguous byte array.
 *
 * Each `.bin` file holds records of 3073 bytes: 1 label byte, then 3072 pixel bytes
 * (the R plane, then G, then B, each 32x32 row-major), i.e. exactly the CHW layout the
 * models consume. Training set = data_batch_1..5.bin (50,000 images), test set =
 * test_batch.bin (10,000 images).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, statSync } from 'node:fs';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { join, resolve } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { SingleBar } from 'cli-progress';
import { x as tarExtract } from 'tar';
import { DataError } from './errors.js';

/** A labelled image dataset held in memory as bytes. */
export interface ImageDataset {
  /** (N, 3, 32, 32) CHW bytes, image i at offset i * 3072. */
  images: Uint8Array;
  /** N labels in [0, classes.length). */
  labels: Uint8Array;
  length: number;
  classes: string[];
  channels: 3;
  height: 32;
  width: 32;
}

export const CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz';
export const CIFAR10_MD5 = 'c32a1d4ab5d03f1284b67883e8d87530';

/** The standard CIFAR-10 class names, in label order. */
export const CIFAR10_CLASSES = [
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
];

/** Name of the folder inside the archive. */
export const CIFAR10_FOLDER = 'cifar-10-batches-bin';
/** Name of the archive as stored under `root`. */
export const CIFAR10_ARCHIVE = 'cifar-10-binary.tar.gz';

const IMAGE_BYTES = 3 * 32 * 32;
const RECORD_BYTES = 1 + IMAGE_BYTES;
const TRAIN_FILES = ['data_batch_1.bin', 'data_batch_2.bin', 'data_batch_3.bin', 'data_batch_4.bin', 'data_batch_5.bin'];
const TEST_FILES = ['test_batch.bin'];

export interface Cifar10Options {
  /** Folder holding `cifar-10-batches-bin/` (or that folder itself). Default `./data`. */
  root?: string;
  /** Training set (data_batch_1..5) when true (default), test set (test_batch) when false. */
  train?: boolean;
  /** Download, verify and extract the archive when the data is not found. Default false. */
  download?: boolean;
  /** Archive URL (`http:`, `https:` or `file:`). Default: env CONVNETS_CIFAR10_URL, else CIFAR10_URL. */
  url?: string;
  /** Expected MD5 of the archive. Default: env CONVNETS_CIFAR10_MD5, else CIFAR10_MD5. */
  md5?: string;
  /** Called as bytes arrive during a download (total is null when the server does not say). */
  onProgress?: (received: number, total: number | null) => void;
  /** Print nothing (no progress bar, no messages). */
  quiet?: boolean;
  /** Records per `.bin` file used to validate sizes (default 10000; tests use small files). */
  recordsPerFile?: number;
}

/** Load CIFAR-10 (train or test split), downloading it first if asked to and needed. */
export async function cifar10(opts: Cifar10Options = {}): Promise<ImageDataset> {
  const root = resolve(opts.root ?? './data');
  const train = opts.train ?? true;
  const recordsPerFile = opts.recordsPerFile ?? 10000;
  if (!Number.isInteger(recordsPerFile) || recordsPerFile <= 0) {
    throw new DataError(`cifar10: recordsPerFile must be a positive integer, got ${recordsPerFile}`);
  }
  const files = train ? TRAIN_FILES : TEST_FILES;

  let dir = locate(root);
  if (dir === null) {
    const expected = join(root, CIFAR10_FOLDER);
    if (!opts.download) {
      throw new DataError(
        `CIFAR-10 not found: expected the folder ${expected}/ (with data_batch_1..5.bin and test_batch.bin); ` +
          `pass --data DIR pointing at an extracted cifar-10-batches-bin folder (or its parent), or enable download (--download)`,
      );
    }
    await downloadAndExtract(root, opts);
    dir = locate(root);
    if (dir === null) {
      throw new DataError(
        `${join(root, CIFAR10_ARCHIVE)}: extracted, but ${expected}/ does not exist; the archive does not contain a ${CIFAR10_FOLDER}/ folder — delete it and download the official CIFAR-10 binary version`,
      );
    }
  }
  return readBatches(dir, files, recordsPerFile);
}

/** The folder holding the .bin files, or null when there is none. */
function locate(root: string): string | null {
  if (existsSync(join(root, 'data_batch_1.bin')) || existsSync(join(root, 'test_batch.bin'))) return root;
  const sub = join(root, CIFAR10_FOLDER);
  try {
    if (statSync(sub).isDirectory()) return sub;
  } catch {
    /* missing */
  }
  return null;
}

async function readBatches(dir: string, files: string[], recordsPerFile: number): Promise<ImageDataset> {
  const perFile = recordsPerFile * RECORD_BYTES;
  // Validate every file's size before reading anything (cheap, and fails fast).
  for (const name of files) {
    const path = join(dir, name);
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch {
      throw new DataError(
        `${path}: file missing from the CIFAR-10 folder; re-extract ${CIFAR10_ARCHIVE} there (or delete ${dir} and download again)`,
      );
    }
    if (size !== perFile) {
      const what = size < perFile ? 'truncated' : 'too large';
      throw new DataError(
        `${path}: expected ${perFile} bytes (${recordsPerFile} records of ${RECORD_BYTES}), got ${size} (${what}); ` +
          `re-extract ${CIFAR10_ARCHIVE} (or delete ${dir} and download again)`,
      );
    }
  }
  const n = files.length * recordsPerFile;
  const images = new Uint8Array(n * IMAGE_BYTES);
  const labels = new Uint8Array(n);
  let i = 0;
  for (const name of files) {
    const path = join(dir, name);
    const buf = await readFile(path);
    if (buf.length !== perFile) {
      throw new DataError(`${path}: expected ${perFile} bytes, got ${buf.length} (file changed while reading); try again`);
    }
    for (let r = 0; r < recordsPerFile; r++, i++) {
      const off = r * RECORD_BYTES;
      const label = buf[off];
      if (label >= 10) {
        throw new DataError(
          `${path}: record ${r} has label ${label}, expected 0..9; the file is corrupt or not CIFAR-10 — re-extract or download it again`,
        );
      }
      labels[i] = label;
      images.set(buf.subarray(off + 1, off + RECORD_BYTES), i * IMAGE_BYTES);
    }
  }
  return { images, labels, length: n, classes: await readClasses(dir), channels: 3, height: 32, width: 32 };
}

async function readClasses(dir: string): Promise<string[]> {
  try {
    const text = await readFile(join(dir, 'batches.meta.txt'), 'utf8');
    const names = text
      .split(/\r?\n/)
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
    if (names.length === 10) return names;
  } catch {
    /* fall back to the standard names */
  }
  return [...CIFAR10_CLASSES];
}

// ---------------------------------------------------------------------------------------
// Download, verification, extraction

async function downloadAndExtract(root: string, opts: Cifar10Options): Promise<void> {
  const url = opts.url ?? process.env.CONVNETS_CIFAR10_URL ?? CIFAR10_URL;
  const md5 = (opts.md5 ?? process.env.CONVNETS_CIFAR10_MD5 ?? CIFAR10_MD5).toLowerCase();
  const archive = join(root, CIFAR10_ARCHIVE);
  const part = `${archive}.part`;
  try {
    await mkdir(root, { recursive: true });
  } catch (err) {
    throw new DataError(`${root}: cannot create the data folder (${errText(err)}); choose another folder with --data DIR`);
  }

  if (existsSync(archive)) {
    const actual = await md5File(archive);
    if (actual !== md5) {
      throw new DataError(
        `${archive}: MD5 is ${actual}, expected ${md5} (corrupt or incomplete archive); delete it to download it again, or replace it with a good copy`,
      );
    }
    if (!opts.quiet) process.stderr.write(`using existing ${archive} (MD5 verified)\n`);
  } else {
    if (!opts.quiet) process.stderr.write(`downloading CIFAR-10 from ${url}\n`);
    let actual: string;
    try {
      actual = await fetchTo(url, part, opts);
    } catch (err) {
      await rm(part, { force: true }).catch(() => undefined);
      if (err instanceof DataError) throw err;
      throw new DataError(
        `could not download CIFAR-10 from ${url}: ${describeNetError(err)}; download ${CIFAR10_ARCHIVE} elsewhere and put it at ${archive} ` +
          `(or extract it so ${join(root, CIFAR10_FOLDER)}/ exists), then run again`,
        { cause: err },
      );
    }
    if (actual !== md5) {
      await rm(part, { force: true }).catch(() => undefined);
      throw new DataError(
        `${url}: downloaded archive has MD5 ${actual}, expected ${md5}; deleted it — try again, or download ${CIFAR10_ARCHIVE} manually and put it at ${archive}`,
      );
    }
    await rename(part, archive);
  }

  if (!opts.quiet) process.stderr.write(`extracting ${archive}\n`);
  try {
    await tarExtract({ file: archive, cwd: root, strict: true });
  } catch (err) {
    throw new DataError(`${archive}: extraction failed (${errText(err)}); delete it and download again`, { cause: err });
  }
}

async function md5File(path: string): Promise<string> {
  const hash = createHash('md5');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Stream `url` to `dest` (created/truncated), returning the MD5 of the bytes written. */
async function fetchTo(url: string, dest: string, opts: Cifar10Options): Promise<string> {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new DataError(`${url}: not a valid URL; pass an http:, https: or file: URL`);
  }
  let body: Readable;
  let total: number | null;
  if (parsed.protocol === 'file:') {
    const path = fileURLToPath(parsed);
    try {
      total = (await stat(path)).size;
    } catch (err) {
      throw new DataError(`${url}: cannot read ${path} (${errText(err)}); check the path`);
    }
    body = createReadStream(path);
  } else if (parsed.protocol === 'http:' || parsed.protocol === 'https:') {
    const res = await httpGet(parsed, 5);
    const len = Number(res.headers['content-length']);
    total = Number.isFinite(len) && len >= 0 && res.headers['content-length'] !== undefined ? len : null;
    body = res;
  } else {
    throw new DataError(`${url}: unsupported URL scheme ${parsed.protocol}; use http:, https: or file:`);
  }

  const hash = createHash('md5');
  const progress = makeDownloadProgress(total, opts);
  let received = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      received += chunk.length;
      hash.update(chunk);
      progress.update(received);
      cb(null, chunk);
    },
  });
  try {
    await pipeline(body, counter, createWriteStream(dest, { flags: 'w' }));
  } catch (err) {
    progress.stop(false);
    if (total !== null && received < total && !(err instanceof DataError)) {
      throw new Error(`connection lost after ${received} of ${total} bytes (${describeNetError(err)})`, { cause: err });
    }
    throw err;
  }
  progress.stop(true);
  if (total !== null && received !== total) {
    throw new Error(`connection closed after ${received} of ${total} bytes`);
  }
  return hash.digest('hex');
}

function httpGet(url: URL, redirectsLeft: number): Promise<http.IncomingMessage> {
  return new Promise((resolvePromise, reject) => {
    const mod = url.protocol === 'https:' ? https : http;
    const req = mod.get(url, { headers: { 'user-agent': 'convnets' } }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location) {
        res.resume();
        if (redirectsLeft <= 0) {
          reject(new Error('too many redirects'));
          return;
        }
        let next: URL;
        try {
          next = new URL(res.headers.location, url);
        } catch {
          reject(new Error(`bad redirect location ${res.headers.location}`));
          return;
        }
        if (next.protocol !== 'http:' && next.protocol !== 'https:') {
          reject(new Error(`redirect to unsupported URL ${next.href}`));
          return;
        }
        httpGet(next, redirectsLeft - 1).then(resolvePromise, reject);
        return;
      }
      if (status !== 200) {
        res.resume();
        reject(new Error(`HTTP ${status}${res.statusMessage ? ` ${res.statusMessage}` : ''}`));
        return;
      }
      resolvePromise(res);
    });
    // Abort when the connection stalls for a minute (no bytes in either direction).
    req.setTimeout(60_000, () => req.destroy(new Error('no data received for 60 s (timed out)')));
    req.on('error', reject);
  });
}

function describeNetError(err: unknown): string {
  const e = err as NodeJS.ErrnoException & { hostname?: string };
  switch (e?.code) {
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `host ${e.hostname ?? ''} not found (offline or DNS failure)`.replace('host  ', 'host ');
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ECONNRESET':
      return 'connection reset';
    case 'ETIMEDOUT':
      return 'connection timed out';
    case 'ENETUNREACH':
    case 'EHOSTUNREACH':
      return 'network unreachable (offline?)';
    case 'ERR_STREAM_PREMATURE_CLOSE':
      return 'connection closed before the download completed';
    default:
      return errText(err);
  }
}

function errText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    const msg = err.message || String(code ?? 'unknown error');
    return code && !msg.includes(code) ? `${msg} (${code})` : msg;
  }
  return String(err);
}

interface DownloadProgress {
  update(received: number): void;
  stop(ok: boolean): void;
}

/** Progress bar on a TTY; on a non-TTY a couple of plain lines; nothing when quiet. */
function makeDownloadProgress(total: number | null, opts: Cifar10Options): DownloadProgress {
  const onProgress = opts.onProgress;
  const stream = process.stderr;
  if (opts.quiet) {
    return { update: (r) => onProgress?.(r, total), stop: () => undefined };
  }
  const mb = (b: number) => (b / 1e6).toFixed(1);
  const start = Date.now();
  if (stream.isTTY && total !== null && total > 0) {
    const bar = new SingleBar({
      stream,
      format: 'CIFAR-10 [{bar}] {percentage}% | {got}/{size} MB | {rate} MB/s | ETA {eta_formatted}',
      barsize: 30,
      hideCursor: true,
      clearOnComplete: false,
      etaBuffer: 50,
      fps: 5,
    });
    bar.start(total, 0, { got: mb(0), size: mb(total), rate: '0.0' });
    return {
      update(received) {
        const secs = (Date.now() - start) / 1000;
        bar.update(received, { got: mb(received), rate: secs > 0 ? mb(received / secs) : '0.0' });
        onProgress?.(received, total);
      },
      stop() {
        bar.stop();
      },
    };
  }
  // Not a TTY (CI, log file): a plain line every ~25% (or 30 s without a known size).
  let last = start;
  let nextQuarter = 1;
  let received = 0;
  return {
    update(r) {
      received = r;
      onProgress?.(r, total);
      const now = Date.now();
      if (total !== null && total > 0) {
        if (r / total >= nextQuarter / 4 && nextQuarter < 4) {
          stream.write(`  ${Math.floor((r / total) * 100)}% (${mb(r)}/${mb(total)} MB)\n`);
          while (r / total >= nextQuarter / 4) nextQuarter++;
        }
      } else if (now - last >= 30_000) {
        stream.write(`  ${mb(r)} MB\n`);
        last = now;
      }
    },
    stop(ok) {
      if (!ok) return;
      const secs = Math.max((Date.now() - start) / 1000, 1e-3);
      stream.write(`  received ${mb(received)} MB in ${secs.toFixed(1)} s (${mb(received / secs)} MB/s)\n`);
    },
  };
}
