/**
 * Reader and writer for the Hugging Face safetensors format.
 *
 * Layout of a file:
 *   - 8 bytes: little-endian u64 N, the length of the header;
 *   - N bytes: UTF-8 JSON header (writers pad it with spaces to a multiple of 8);
 *   - the data buffer, which every tensor's `data_offsets` are relative to.
 *
 * Header: `{"__metadata__": {string: string}?, "<name>": {"dtype", "shape", "data_offsets"}, ...}`.
 *
 * This module is self-contained (raw typed arrays only) so that it has no
 * dependency on the rest of the toolkit. Every validation error is a one-line
 * `Error` of the form `<source>: <what is wrong>`.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rm, rename } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Dtypes this reader understands, with their size in bytes. */
const DTYPE_SIZES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  U8: 1,
  BOOL: 1,
} as const;

export type SafetensorsDtype = keyof typeof DTYPE_SIZES;

/** A tensor as read from a file: always converted to float32. */
export interface RawTensor {
  dtype: 'F32';
  shape: number[];
  data: Float32Array;
  /** The dtype stored in the file before conversion to F32 (set by the reader). */
  sourceDtype?: SafetensorsDtype;
}

export interface SafetensorsFile {
  tensors: Map<string, RawTensor>;
  metadata: Record<string, string>;
}

/** Typed arrays the writer accepts, and the dtype each is stored as. */
export type WritableData = Float32Array | Int32Array | BigInt64Array;

export interface WritableTensor {
  shape: readonly number[];
  data: WritableData;
}

export type WritableTensors = Map<string, WritableTensor> | Record<string, WritableTensor>;

/** Same limit as the reference implementation: headers above 100 MB are rejected. */
const MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = '__metadata__';

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

function isDtype(s: string): s is SafetensorsDtype {
  return Object.prototype.hasOwnProperty.call(DTYPE_SIZES, s);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNonNegativeInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Collapses any multi-line text (e.g. a JSON.parse message) onto one line. */
function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ');
}

/** Number of elements of a shape ([] is a scalar: 1 element), or -1 on overflow. */
function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return Number.isSafeInteger(n) ? n : -1;
}

/** Reverses the byte order of each `size`-byte element in place (big-endian hosts only). */
function swapBytes(bytes: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse();
}

/** Exact IEEE 754 half-precision → number (handles subnormals, ±inf, NaN). */
export function f16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero or subnormal
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * Converts a tensor's little-endian bytes to a fresh Float32Array.
 * `raw` must be a private copy starting at offset 0 of its own buffer
 * (so it is aligned and may be modified).
 */
function decodeToF32(raw: Uint8Array, dtype: SafetensorsDtype, count: number): Float32Array {
  if (!LITTLE_ENDIAN_HOST) swapBytes(raw, DTYPE_SIZES[dtype]);
  const buf = raw.buffer;
  switch (dtype) {
    case 'F32':
      return new Float32Array(buf, 0, count);
    case 'F64':
      return Float32Array.from(new Float64Array(buf, 0, count));
    case 'I32':
      return Float32Array.from(new Int32Array(buf, 0, count));
    case 'I64': {
      const src = new BigInt64Array(buf, 0, count);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = Number(src[i]);
      return out;
    }
    case 'F16': {
      const src = new Uint16Array(buf, 0, count);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = f16ToNumber(src[i]);
      return out;
    }
    case 'BF16': {
      // bfloat16 is the top half of a float32: shift into place and reinterpret.
      const src = new Uint16Array(buf, 0, count);
      const bits = new Uint32Array(count);
      for (let i = 0; i < count; i++) bits[i] = src[i] << 16;
      return new Float32Array(bits.buffer);
    }
    case 'U8':
      return Float32Array.from(raw.subarray(0, count));
    case 'BOOL': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = raw[i] ? 1 : 0;
      return out;
    }
  }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

interface Entry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  begin: number;
  end: number;
}

/** Validates one header entry (everything that can be checked without the data). */
function parseEntry(name: string, value: unknown, fail: (msg: string) => never): Entry {
  const t = `tensor ${JSON.stringify(name)}`;
  if (!isPlainObject(value)) fail(`${t}: header entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (dtype === undefined) fail(`${t}: missing "dtype"`);
  if (shape === undefined) fail(`${t}: missing "shape"`);
  if (offsets === undefined) fail(`${t}: missing "data_offsets"`);
  if (typeof dtype !== 'string') fail(`${t}: "dtype" must be a string`);
  if (!isDtype(dtype)) fail(`${t}: unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape)) fail(`${t}: "shape" must be an array`);
  for (const d of shape as unknown[]) {
    if (!isNonNegativeInt(d)) fail(`${t}: invalid shape dimension ${JSON.stringify(d)} (must be a non-negative integer)`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !isNonNegativeInt(offsets[0]) ||
    !isNonNegativeInt(offsets[1])
  ) {
    fail(`${t}: invalid "data_offsets" ${JSON.stringify(offsets)} (must be [begin, end] of non-negative integers)`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) fail(`${t}: invalid "data_offsets" [${begin}, ${end}] (begin > end)`);
  return { name, dtype, shape: shape as number[], begin, end };
}

/**
 * Parses a safetensors file. `source` (usually the file name) prefixes every
 * error message. All tensors are returned as freshly allocated Float32Arrays
 * that never alias `bytes`.
 */
export function parseSafetensors(bytes: Uint8Array, source: string): SafetensorsFile {
  const fail = (msg: string): never => {
    throw new Error(`${source}: ${oneLine(msg)}`);
  };

  if (bytes.length < 8) {
    fail(`file too short (${bytes.length} bytes); a safetensors file starts with an 8-byte header length`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen64 = view.getBigUint64(0, true);
  if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${headerLen64} is absurd (limit ${MAX_HEADER_BYTES} bytes); not a safetensors file?`);
  }
  const headerLen = Number(headerLen64);
  if (8 + headerLen > bytes.length) {
    fail(`header length ${headerLen} is larger than the file (${bytes.length} bytes); truncated or not a safetensors file`);
  }

  let headerText: string;
  try {
    headerText = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + headerLen));
  } catch {
    return fail('header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(headerText);
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(header)) fail('header is not a JSON object');
  const headerObj = header as Record<string, unknown>;

  // Metadata: optional, string → string.
  const metadata: Record<string, string> = {};
  const rawMeta = headerObj[METADATA_KEY];
  if (rawMeta !== undefined) {
    if (!isPlainObject(rawMeta)) fail(`"${METADATA_KEY}" is not an object`);
    for (const [k, v] of Object.entries(rawMeta as Record<string, unknown>)) {
      if (typeof v !== 'string') fail(`"${METADATA_KEY}" value for ${JSON.stringify(k)} is not a string`);
      metadata[k] = v as string;
    }
  }

  const data = bytes.subarray(8 + headerLen);
  const entries: Entry[] = [];
  for (const [name, value] of Object.entries(headerObj)) {
    if (name === METADATA_KEY) continue;
    const e = parseEntry(name, value, fail);
    const t = `tensor ${JSON.stringify(name)}`;
    const size = DTYPE_SIZES[e.dtype];
    const count = elementCount(e.shape);
    if (count < 0) fail(`${t}: shape [${e.shape.join(', ')}] has too many elements`);
    if (e.end - e.begin !== count * size) {
      fail(
        `${t}: byte length ${e.end - e.begin} does not match shape [${e.shape.join(', ')}] ` +
          `x ${e.dtype} (${size} bytes) = ${count * size} bytes`,
      );
    }
    if (e.end > data.length) {
      fail(`truncated: ${t} needs bytes ${e.begin}..${e.end} but the data section has only ${data.length} bytes`);
    }
    entries.push(e);
  }

  // Overlap check: sort by start; each non-empty range must begin at or after
  // the previous one's end. (Empty tensors occupy no bytes and never overlap.)
  const ranges = entries.filter((e) => e.end > e.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    const prev = ranges[i - 1];
    const cur = ranges[i];
    if (cur.begin < prev.end) {
      fail(
        `overlapping tensors ${JSON.stringify(prev.name)} [${prev.begin}, ${prev.end}) ` +
          `and ${JSON.stringify(cur.name)} [${cur.begin}, ${cur.end})`,
      );
    }
  }

  const tensors = new Map<string, RawTensor>();
  for (const e of entries) {
    // Copy into a fresh, aligned buffer: no alias to `bytes`. (Not `slice()`:
    // on a Node Buffer that returns a view, not a copy.)
    const raw = new Uint8Array(e.end - e.begin);
    raw.set(data.subarray(e.begin, e.end));
    const out = decodeToF32(raw, e.dtype, elementCount(e.shape));
    tensors.set(e.name, { dtype: 'F32', shape: [...e.shape], data: out, sourceDtype: e.dtype });
  }
  return { tensors, metadata };
}

// ---------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------

function dtypeOf(data: WritableData): SafetensorsDtype {
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof Int32Array) return 'I32';
  if (data instanceof BigInt64Array) return 'I64';
  throw new Error('safetensors: unsupported typed array (expected Float32Array, Int32Array or BigInt64Array)');
}

/** Byte-wise comparison of the UTF-8 encodings, as the Rust reference sorts names. */
function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * Serializes tensors into safetensors bytes. Tensors are laid out contiguously
 * in sorted-name order; the header is padded with spaces to a multiple of 8.
 * `__metadata__` is written only when `metadata` is given.
 */
export function serializeSafetensors(tensors: WritableTensors, metadata?: Record<string, string>): Uint8Array {
  const list = (tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors)).sort((a, b) =>
    compareUtf8(a[0], b[0]),
  );

  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`safetensors: metadata value for ${JSON.stringify(k)} is not a string`);
    }
    header[METADATA_KEY] = { ...metadata };
  }

  let offset = 0;
  for (const [name, t] of list) {
    const where = `safetensors: tensor ${JSON.stringify(name)}`;
    if (name === METADATA_KEY) throw new Error(`${where}: name is reserved`);
    for (const d of t.shape) {
      if (!isNonNegativeInt(d)) throw new Error(`${where}: invalid shape dimension ${d}`);
    }
    const dtype = dtypeOf(t.data);
    if (elementCount(t.shape) !== t.data.length) {
      throw new Error(`${where}: shape [${t.shape.join(', ')}] does not match data length ${t.data.length}`);
    }
    const end = offset + t.data.byteLength;
    header[name] = { dtype, shape: [...t.shape], data_offsets: [offset, end] };
    offset = end;
  }

  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerLen = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerLen + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen); // space padding

  let pos = 8 + headerLen;
  for (const [, t] of list) {
    const src = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    out.set(src, pos);
    if (!LITTLE_ENDIAN_HOST) swapBytes(out.subarray(pos, pos + src.length), t.data.BYTES_PER_ELEMENT);
    pos += src.length;
  }
  return out;
}

// ---------------------------------------------------------------------------
// File I/O
// ---------------------------------------------------------------------------

/** Reads and parses a safetensors file; errors are prefixed with `path`. */
export async function readSafetensorsFile(path: string): Promise<SafetensorsFile> {
  const bytes = await readFile(path);
  return parseSafetensors(bytes, path);
}

/**
 * Atomically writes a safetensors file: the bytes go to a temporary file in the
 * same directory, which is fsynced and then renamed over `path`. On any error
 * the temporary file is removed and the error rethrown; `path` is untouched.
 */
export async function writeSafetensorsFile(
  path: string,
  tensors: WritableTensors,
  metadata?: Record<string, string>,
): Promise<void> {
  const bytes = serializeSafetensors(tensors, metadata); // validate before touching the disk
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  try {
    const fh = await open(tmp, 'wx');
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
  // Best effort: persist the rename itself (not supported on every platform).
  try {
    const dir = await open(dirname(path), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  } catch {
    /* ignore */
  }
}
