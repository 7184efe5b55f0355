/**
 * Reader for PyTorch `.pth` / `.pt` state dicts written by `torch.save(state_dict, path)`.
 *
 * The format (PyTorch ≥ 1.6, "zipfile serialization"): a zip archive with one top folder
 * (its name varies: `archive/`, or the file's stem) holding
 *   - `data.pkl`: a pickle of the object, where each tensor is a call
 *     `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` and
 *     each storage a persistent id `('storage', torch.FloatStorage, key, location, numel)`;
 *   - `data/<key>`: the raw little-endian bytes of each storage (stored uncompressed);
 *   - `version` (and, in newer versions, `byteorder`).
 *
 * SAFETY. Unpickling is normally arbitrary code execution. This reader never executes
 * anything: it is a small stack machine that understands only the opcodes a state dict uses,
 * and resolves GLOBAL / STACK_GLOBAL against an allowlist (`collections.OrderedDict`, the two
 * tensor rebuild functions and the storage types). Any other global (os.system, builtins.eval,
 * subprocess.Popen, ...) makes it refuse the file with a one-line error:
 *   `<file>: refusing to load: pickle calls <module>.<name>, which is not part of a state dict`.
 *
 * Every error is a one-line `Error` prefixed with the source (usually the file name).
 * Tensors come back as float32 (float16, bfloat16, float64 and integer storages are
 * converted; integer tensors such as `num_batches_tracked` are marked `dtype = 'int64'`).
 */
import { readFile } from 'node:fs/promises';
import { inflateRawSync } from 'node:zlib';
import { Tensor, formatShape } from '../tensor/tensor.js';
import { f16ToNumber } from './safetensors.js';

// ---------------------------------------------------------------------------------------------
// Zip archive (central directory; stored or deflated entries; zip64 sizes/offsets)
// ---------------------------------------------------------------------------------------------

export interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

type Fail = (msg: string) => never;

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;

let crcTable: Uint32Array | null = null;

/** CRC-32 (IEEE 802.3), as zip uses it. */
export function crc32(data: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  const t = crcTable;
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function u64(view: DataView, pos: number, what: string, fail: Fail): number {
  const v = view.getBigUint64(pos, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`zip: ${what} ${v} is too large`);
  return Number(v);
}

/** The entries of a zip archive, from its central directory. */
export function readZipDirectory(bytes: Uint8Array, fail: Fail): ZipEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = bytes.length;
  if (len < 22) fail(`truncated or not a zip archive (${len} bytes, no end-of-central-directory record)`);
  let eocd = -1;
  for (let p = len - 22; p >= Math.max(0, len - 22 - 0xffff); p--) {
    if (view.getUint32(p, true) === SIG_EOCD && p + 22 + view.getUint16(p + 20, true) <= len) {
      eocd = p;
      break;
    }
  }
  if (eocd < 0) fail('truncated or not a zip archive (no end-of-central-directory record)');
  let count = view.getUint16(eocd + 10, true);
  let cdSize = view.getUint32(eocd + 12, true);
  let cdOffset = view.getUint32(eocd + 16, true);
  if ((count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) && eocd >= 20 && view.getUint32(eocd - 20, true) === SIG_ZIP64_LOCATOR) {
    const z64 = u64(view, eocd - 20 + 8, 'zip64 record offset', fail);
    if (z64 + 56 > len || view.getUint32(z64, true) !== SIG_ZIP64_EOCD) fail('zip: corrupt zip64 end-of-central-directory record');
    count = u64(view, z64 + 32, 'entry count', fail);
    cdSize = u64(view, z64 + 40, 'central directory size', fail);
    cdOffset = u64(view, z64 + 48, 'central directory offset', fail);
  }
  if (cdOffset + cdSize > len) fail(`truncated zip archive: the central directory (bytes ${cdOffset}..${cdOffset + cdSize}) lies beyond the end of the file (${len} bytes)`);
  const entries: ZipEntry[] = [];
  let p = cdOffset;
  const dec = new TextDecoder('utf-8');
  for (let i = 0; i < count; i++) {
    if (p + 46 > cdOffset + cdSize || view.getUint32(p, true) !== SIG_CENTRAL) fail(`zip: corrupt central directory (entry ${i})`);
    const flags = view.getUint16(p + 8, true);
    const method = view.getUint16(p + 10, true);
    const crc = view.getUint32(p + 16, true);
    let compressedSize = view.getUint32(p + 20, true);
    let size = view.getUint32(p + 24, true);
    const nameLen = view.getUint16(p + 28, true);
    const extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true);
    let localHeaderOffset = view.getUint32(p + 42, true);
    const end = p + 46 + nameLen + extraLen + commentLen;
    if (end > cdOffset + cdSize) fail(`zip: corrupt central directory (entry ${i})`);
    const name = dec.decode(bytes.subarray(p + 46, p + 46 + nameLen));
    // zip64 extended information: the 0xFFFFFFFF fields, in this order.
    let q = p + 46 + nameLen;
    const extraEnd = q + extraLen;
    while (q + 4 <= extraEnd) {
      const id = view.getUint16(q, true);
      const sz = view.getUint16(q + 2, true);
      if (id === 0x0001) {
        let r = q + 4;
        if (size === 0xffffffff && r + 8 <= q + 4 + sz) {
          size = u64(view, r, 'entry size', fail);
          r += 8;
        }
        if (compressedSize === 0xffffffff && r + 8 <= q + 4 + sz) {
          compressedSize = u64(view, r, 'entry size', fail);
          r += 8;
        }
        if (localHeaderOffset === 0xffffffff && r + 8 <= q + 4 + sz) localHeaderOffset = u64(view, r, 'entry offset', fail);
      }
      q += 4 + sz;
    }
    entries.push({ name, method, flags, crc32: crc, compressedSize, size, localHeaderOffset });
    p = end;
  }
  return entries;
}

/** The (decompressed, CRC-checked) content of one entry. */
export function readZipEntry(bytes: Uint8Array, e: ZipEntry, fail: Fail): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const p = e.localHeaderOffset;
  if (p + 30 > bytes.length || view.getUint32(p, true) !== SIG_LOCAL) fail(`zip: entry ${e.name} has no valid local header (truncated or corrupt archive)`);
  if (e.flags & 1) fail(`zip: entry ${e.name} is encrypted`);
  const start = p + 30 + view.getUint16(p + 26, true) + view.getUint16(p + 28, true);
  if (start + e.compressedSize > bytes.length) fail(`truncated zip archive: entry ${e.name} needs bytes ${start}..${start + e.compressedSize} but the file has ${bytes.length}`);
  const raw = bytes.subarray(start, start + e.compressedSize);
  let data: Uint8Array;
  if (e.method === 0) {
    if (e.compressedSize !== e.size) fail(`zip: stored entry ${e.name} has inconsistent sizes`);
    data = raw;
  } else if (e.method === 8) {
    try {
      data = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
    } catch (err) {
      return fail(`zip: cannot inflate entry ${e.name} (${(err as Error).message.split('\n')[0]})`);
    }
    if (data.length !== e.size) fail(`zip: entry ${e.name} inflates to ${data.length} bytes, expected ${e.size}`);
  } else {
    return fail(`zip: entry ${e.name} uses unsupported compression method ${e.method}`);
  }
  if (crc32(data) !== e.crc32) fail(`zip: CRC mismatch in entry ${e.name} (corrupt file)`);
  return data;
}

// ---------------------------------------------------------------------------------------------
// Safe pickle reader
// ---------------------------------------------------------------------------------------------

/** A Python tuple (lists are JS arrays). */
export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** A Python dict / OrderedDict, in insertion order. */
export class PyDict {
  readonly map = new Map<PyKey, PyValue>();
  constructor(readonly ordered = false) {}
}

/** One of the allowlisted globals. */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
}

export type PthDtype = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

const STORAGE_TYPES: Record<string, { dtype: PthDtype; size: number }> = {
  FloatStorage: { dtype: 'float32', size: 4 },
  HalfStorage: { dtype: 'float16', size: 2 },
  BFloat16Storage: { dtype: 'bfloat16', size: 2 },
  DoubleStorage: { dtype: 'float64', size: 8 },
  LongStorage: { dtype: 'int64', size: 8 },
  IntStorage: { dtype: 'int32', size: 4 },
  ShortStorage: { dtype: 'int16', size: 2 },
  CharStorage: { dtype: 'int8', size: 1 },
  ByteStorage: { dtype: 'uint8', size: 1 },
  BoolStorage: { dtype: 'bool', size: 1 },
};

/** The only globals a state dict may reference. */
const ALLOWED_GLOBALS = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter',
  ...Object.keys(STORAGE_TYPES).map((s) => `torch.${s}`),
]);

export interface StorageRef {
  kind: 'storage';
  dtype: PthDtype;
  itemSize: number;
  key: string;
  location: string;
  numel: number;
}

export interface TensorRef {
  kind: 'tensor';
  storage: StorageRef;
  offset: number;
  size: number[];
  stride: number[];
}

export type PyKey = string | number | bigint | boolean | null;
export type PyValue = PyKey | PyValue[] | PyTuple | PyDict | PyGlobal | StorageRef | TensorRef | Uint8Array;

const MARK = Symbol('mark');
type Slot = PyValue | typeof MARK;

function isStorageRef(v: unknown): v is StorageRef {
  return typeof v === 'object' && v !== null && (v as StorageRef).kind === 'storage';
}

export function isTensorRef(v: unknown): v is TensorRef {
  return typeof v === 'object' && v !== null && (v as TensorRef).kind === 'tensor';
}

function typeName(v: unknown): string {
  if (v === null) return 'None';
  if (Array.isArray(v)) return 'list';
  if (v instanceof PyTuple) return 'tuple';
  if (v instanceof PyDict) return 'dict';
  if (v instanceof PyGlobal) return v.qualname;
  if (v instanceof Uint8Array) return 'bytes';
  if (isTensorRef(v)) return 'tensor';
  if (isStorageRef(v)) return 'storage';
  return typeof v;
}

function asInt(v: unknown, what: string, fail: Fail): number {
  if (typeof v === 'bigint' && v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) fail(`malformed pickle: ${what} must be an integer, got ${typeName(v)}`);
  return v as number;
}

function intTuple(v: unknown, what: string, fail: Fail): number[] {
  if (!(v instanceof PyTuple)) return fail(`malformed pickle: ${what} must be a tuple, got ${typeName(v)}`);
  return v.items.map((x) => {
    const n = asInt(x, what, fail);
    if (n < 0) fail(`malformed pickle: negative value in ${what}`);
    return n;
  });
}

export interface UnpickleOptions {
  /** Accept persistent ids (torch storages). False for bare pickles. */
  persistentIds?: boolean;
  /** Limit on LONG1/LONG4 byte lengths and on the memo, against hostile files. */
  maxLongBytes?: number;
}

/**
 * Run the safe pickle stack machine over `data`; returns the unpickled object. Nothing is
 * executed: allowlisted calls build plain records (dicts, tensor views of storages).
 */
export function unpickle(data: Uint8Array, fail: Fail, opts: UnpickleOptions = {}): PyValue {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const maxLong = opts.maxLongBytes ?? 64;
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const latin1 = new TextDecoder('latin1');
  let stack: Slot[] = [];
  const metastack: Slot[][] = [];
  const memo = new Map<number, PyValue>();
  let pos = 0;

  const need = (n: number): void => {
    if (pos + n > data.length) fail(`malformed pickle: truncated data.pkl (needs ${n} more bytes at offset ${pos})`);
  };
  const pop = (): PyValue => {
    if (stack.length === 0) fail(`malformed pickle: stack underflow at offset ${pos}`);
    const v = stack.pop()!;
    if (v === MARK) fail(`malformed pickle: unexpected MARK at offset ${pos}`);
    return v as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length === 0 || stack[stack.length - 1] === MARK) fail(`malformed pickle: stack underflow at offset ${pos}`);
    return stack[stack.length - 1] as PyValue;
  };
  const popMark = (): PyValue[] => {
    const items = stack;
    if (metastack.length === 0) fail(`malformed pickle: no MARK at offset ${pos}`);
    stack = metastack.pop()!;
    return items as PyValue[];
  };
  const str = (n: number, dec: { decode(b: Uint8Array): string }): string => {
    need(n);
    const s = data.subarray(pos, pos + n);
    pos += n;
    try {
      return dec.decode(s);
    } catch {
      return fail(`malformed pickle: invalid UTF-8 string at offset ${pos - n}`);
    }
  };
  const readLine = (): string => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0 || end - pos > 1024) fail(`malformed pickle: unterminated GLOBAL at offset ${pos}`);
    const s = latin1.decode(data.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const resolveGlobal = (module: string, name: string): PyGlobal => {
    const q = `${module}.${name}`;
    if (!ALLOWED_GLOBALS.has(q)) fail(`refusing to load: pickle calls ${q.replace(/[^\x20-\x7e]/g, '?').slice(0, 200)}, which is not part of a state dict`);
    return new PyGlobal(module, name);
  };
  const key = (v: PyValue): PyKey => {
    if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return v;
    return fail(`malformed pickle: unsupported dict key of type ${typeName(v)}`);
  };
  const setItems = (d: PyValue, kv: PyValue[]): void => {
    if (!(d instanceof PyDict)) fail(`malformed pickle: SETITEM on a ${typeName(d)}`);
    if (kv.length % 2) fail('malformed pickle: odd number of items in SETITEMS');
    for (let i = 0; i < kv.length; i += 2) (d as PyDict).map.set(key(kv[i]), kv[i + 1]);
  };
  const appendItems = (l: PyValue, items: PyValue[]): void => {
    if (!Array.isArray(l)) fail(`malformed pickle: APPEND on a ${typeName(l)}`);
    (l as PyValue[]).push(...items);
  };
  const call = (fn: PyValue, args: PyValue): PyValue => {
    if (!(fn instanceof PyGlobal)) return fail(`malformed pickle: REDUCE on a ${typeName(fn)}`);
    if (!(args instanceof PyTuple)) return fail(`malformed pickle: REDUCE arguments must be a tuple`);
    const a = args.items;
    switch (fn.qualname) {
      case 'collections.OrderedDict': {
        const d = new PyDict(true);
        if (a.length === 1 && Array.isArray(a[0])) {
          for (const kv of a[0]) {
            if (!(kv instanceof PyTuple) || kv.items.length !== 2) fail('malformed pickle: OrderedDict items must be pairs');
            d.map.set(key((kv as PyTuple).items[0]), (kv as PyTuple).items[1]);
          }
        } else if (a.length !== 0) fail('malformed pickle: unsupported OrderedDict arguments');
        return d;
      }
      case 'torch._utils._rebuild_tensor_v2': {
        if (a.length < 4) fail('malformed pickle: _rebuild_tensor_v2 needs (storage, offset, size, stride, ...)');
        const storage = a[0];
        if (!isStorageRef(storage)) return fail(`malformed pickle: _rebuild_tensor_v2 expects a storage, got ${typeName(storage)}`);
        const offset = asInt(a[1], 'storage offset', fail);
        if (offset < 0) fail('malformed pickle: negative storage offset');
        const size = intTuple(a[2], 'tensor size', fail);
        const stride = intTuple(a[3], 'tensor stride', fail);
        if (size.length !== stride.length) fail(`malformed pickle: size ${formatShape(size)} and stride ${formatShape(stride)} differ in length`);
        return { kind: 'tensor', storage, offset, size, stride };
      }
      case 'torch._utils._rebuild_parameter': {
        if (!isTensorRef(a[0])) fail(`malformed pickle: _rebuild_parameter expects a tensor, got ${typeName(a[0])}`);
        return a[0];
      }
      default:
        return fail(`refusing to load: pickle calls ${fn.qualname} in a way a state dict does not`);
    }
  };

  for (;;) {
    need(1);
    const op = data[pos++];
    switch (op) {
      case 0x80: // PROTO
        need(1);
        if (data[pos] > 5) fail(`malformed pickle: unsupported protocol ${data[pos]}`);
        pos += 1;
        break;
      case 0x95: // FRAME
        need(8);
        pos += 8;
        break;
      case 0x2e: {
        // STOP
        const v = pop();
        return v;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new PyDict());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new PyTuple([]));
        break;
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x74: {
        // TUPLE (popMark() replaces `stack`: evaluate it before touching the stack)
        const items = popMark();
        stack.push(new PyTuple(items));
        break;
      }
      case 0x85: // TUPLE1
        stack.push(new PyTuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        const a = pop();
        stack.push(new PyTuple([a, b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(new PyTuple([a, b, c]));
        break;
      }
      case 0x4a: // BININT
        need(4);
        stack.push(view.getInt32(pos, true));
        pos += 4;
        break;
      case 0x4b: // BININT1
        need(1);
        stack.push(data[pos]);
        pos += 1;
        break;
      case 0x4d: // BININT2
        need(2);
        stack.push(view.getUint16(pos, true));
        pos += 2;
        break;
      case 0x8a: // LONG1
      case 0x8b: {
        // LONG4
        let n: number;
        if (op === 0x8a) {
          need(1);
          n = data[pos];
          pos += 1;
        } else {
          need(4);
          n = view.getInt32(pos, true);
          pos += 4;
        }
        if (n < 0 || n > maxLong) fail(`malformed pickle: integer of ${n} bytes is not supported`);
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[pos + i]);
        if (n > 0 && data[pos + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        pos += n;
        stack.push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: // BINFLOAT (big-endian float64)
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x58: {
        // BINUNICODE
        need(4);
        const n = view.getUint32(pos, true);
        pos += 4;
        stack.push(str(n, utf8));
        break;
      }
      case 0x8c: {
        // SHORT_BINUNICODE
        need(1);
        const n = data[pos++];
        stack.push(str(n, utf8));
        break;
      }
      case 0x8d: {
        // BINUNICODE8
        need(8);
        const n = u64(view, pos, 'string length', fail);
        pos += 8;
        stack.push(str(n, utf8));
        break;
      }
      case 0x54: // BINSTRING (Python 2 str)
      case 0x55: {
        // SHORT_BINSTRING
        let n: number;
        if (op === 0x55) {
          need(1);
          n = data[pos++];
        } else {
          need(4);
          n = view.getInt32(pos, true);
          pos += 4;
          if (n < 0) fail('malformed pickle: negative string length');
        }
        stack.push(str(n, latin1));
        break;
      }
      case 0x42: // BINBYTES
      case 0x43: {
        // SHORT_BINBYTES
        let n: number;
        if (op === 0x43) {
          need(1);
          n = data[pos++];
        } else {
          need(4);
          n = view.getUint32(pos, true);
          pos += 4;
        }
        need(n);
        stack.push(data.slice(pos, pos + n));
        pos += n;
        break;
      }
      case 0x71: // BINPUT
        need(1);
        memo.set(data[pos++], top());
        break;
      case 0x72: // LONG_BINPUT
        need(4);
        memo.set(view.getUint32(pos, true), top());
        pos += 4;
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        let i: number;
        if (op === 0x68) {
          need(1);
          i = data[pos++];
        } else {
          need(4);
          i = view.getUint32(pos, true);
          pos += 4;
        }
        if (!memo.has(i)) fail(`malformed pickle: memo entry ${i} is not defined`);
        stack.push(memo.get(i)!);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x30: // POP
        if (stack.length === 0) fail('malformed pickle: POP on an empty stack');
        stack.pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = readLine();
        const name = readLine();
        stack.push(resolveGlobal(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('malformed pickle: STACK_GLOBAL needs two strings');
        stack.push(resolveGlobal(module as string, name as string));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        stack.push(call(fn, args));
        break;
      }
      case 0x62: {
        // BUILD: obj.__setstate__(state). Only OrderedDict (state dict `_metadata`) and
        // tensors (empty state) get here in a state dict; the state is not needed.
        pop();
        const obj = top();
        if (!(obj instanceof PyDict) && !isTensorRef(obj)) fail(`refusing to load: pickle sets the state of a ${typeName(obj)}, which is not part of a state dict`);
        break;
      }
      case 0x51: {
        // BINPERSID: ('storage', storage_type, key, location, numel)
        const pid = pop();
        if (!opts.persistentIds) fail('malformed pickle: persistent id outside a torch.save archive');
        if (!(pid instanceof PyTuple) || pid.items.length < 5 || pid.items[0] !== 'storage') fail('malformed pickle: unsupported persistent id (expected a storage)');
        const [, type, k, location, numel] = (pid as PyTuple).items;
        if (!(type instanceof PyGlobal) || type.module !== 'torch' || !STORAGE_TYPES[type.name]) fail(`malformed pickle: unsupported storage type ${typeName(type)}`);
        if (typeof k !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(k)) fail('malformed pickle: invalid storage key');
        const st = STORAGE_TYPES[(type as PyGlobal).name];
        stack.push({ kind: 'storage', dtype: st.dtype, itemSize: st.size, key: k as string, location: String(location), numel: asInt(numel, 'storage size', fail) });
        break;
      }
      default:
        return fail(`unsupported pickle opcode 0x${op.toString(16).padStart(2, '0')} at offset ${pos - 1} (not a plain state dict)`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------------

function decodeElement(view: DataView, byteOffset: number, dtype: PthDtype, le: boolean): number {
  switch (dtype) {
    case 'float32':
      return view.getFloat32(byteOffset, le);
    case 'float16':
      return f16ToNumber(view.getUint16(byteOffset, le));
    case 'bfloat16': {
      const bits = view.getUint16(byteOffset, le);
      BF16_U32[0] = bits << 16;
      return BF16_F32[0];
    }
    case 'float64':
      return view.getFloat64(byteOffset, le);
    case 'int64':
      return Number(view.getBigInt64(byteOffset, le));
    case 'int32':
      return view.getInt32(byteOffset, le);
    case 'int16':
      return view.getInt16(byteOffset, le);
    case 'int8':
      return view.getInt8(byteOffset);
    case 'uint8':
      return view.getUint8(byteOffset);
    case 'bool':
      return view.getUint8(byteOffset) ? 1 : 0;
  }
}
const BF16_U32 = new Uint32Array(1);
const BF16_F32 = new Float32Array(BF16_U32.buffer);

/** Gather a strided view of a storage into a fresh, contiguous Float32Array. */
function materialise(name: string, t: TensorRef, storage: Uint8Array, littleEndian: boolean, fail: Fail): Float32Array {
  const { dtype, itemSize } = t.storage;
  const numel = t.size.reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(numel)) fail(`tensor "${name}": shape ${formatShape(t.size)} is too large`);
  const out = new Float32Array(numel);
  if (numel === 0) return out;
  const available = Math.floor(storage.length / itemSize);
  let last = t.offset;
  for (let d = 0; d < t.size.length; d++) last += (t.size[d] - 1) * t.stride[d];
  if (last >= available) {
    fail(
      `tensor "${name}": storage out of bounds (storage data/${t.storage.key} holds ${available} element${available === 1 ? '' : 's'}; ` +
        `the view with offset ${t.offset}, size ${formatShape(t.size)}, stride ${formatShape(t.stride)} reaches element ${last})`,
    );
  }
  const view = new DataView(storage.buffer, storage.byteOffset, storage.byteLength);
  const nd = t.size.length;
  // Contiguous row-major? Then the elements are consecutive.
  let contiguous = true;
  for (let d = nd - 1, expect = 1; d >= 0; d--) {
    if (t.size[d] !== 1 && t.stride[d] !== expect) contiguous = false;
    expect *= t.size[d];
  }
  if (contiguous) {
    const begin = t.offset * itemSize;
    if (dtype === 'float32' && littleEndian && LITTLE_ENDIAN_HOST && (storage.byteOffset + begin) % 4 === 0) {
      out.set(new Float32Array(storage.buffer, storage.byteOffset + begin, numel));
    } else {
      for (let i = 0; i < numel; i++) out[i] = decodeElement(view, begin + i * itemSize, dtype, littleEndian);
    }
    return out;
  }
  // General strides: odometer over the index, innermost dimension in a tight loop.
  const idx = new Array<number>(nd).fill(0);
  const inner = nd - 1;
  const innerSize = t.size[inner];
  const innerStride = t.stride[inner];
  let base = t.offset;
  for (let o = 0; o < numel; o += innerSize) {
    for (let i = 0; i < innerSize; i++) out[o + i] = decodeElement(view, (base + i * innerStride) * itemSize, dtype, littleEndian);
    for (let d = inner - 1; d >= 0; d--) {
      idx[d]++;
      base += t.stride[d];
      if (idx[d] < t.size[d]) break;
      base -= t.stride[d] * t.size[d];
      idx[d] = 0;
    }
  }
  return out;
}

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const INTEGER_DTYPES = new Set<PthDtype>(['int64', 'int32', 'int16', 'int8', 'uint8']);

export interface PthFile {
  /** The state dict, in file order (float32 tensors; integer ones marked dtype 'int64'). */
  tensors: Map<string, Tensor>;
  /** The dtype each tensor was stored with. */
  dtypes: Map<string, PthDtype>;
  /** Where the state dict was found: '' (top level) or the wrapping key ('state_dict', 'model', …). */
  wrapperKey: string;
  /** The archive's top folder name. */
  archiveName: string;
}

/** Keys of a checkpoint dict that may hold the state dict, in order of preference. */
const WRAPPER_KEYS = ['state_dict', 'model_state_dict', 'model'];

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

function isStateDict(v: PyValue): v is PyDict {
  if (!(v instanceof PyDict) || v.map.size === 0) return false;
  for (const [k, t] of v.map) if (typeof k !== 'string' || !isTensorRef(t)) return false;
  return true;
}

function describeKeys(d: PyDict): string {
  const ks = [...d.map.keys()].map((k) => String(k));
  return ks.slice(0, 6).join(', ') + (ks.length > 6 ? `, … (${ks.length} keys)` : '');
}

function isZip(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x50 && bytes[1] === 0x4b && (bytes[2] === 0x03 || bytes[2] === 0x05) && (bytes[3] === 0x04 || bytes[3] === 0x06);
}

/**
 * Parse the bytes of a `.pth`/`.pt` file written by `torch.save(state_dict)` (or a checkpoint
 * dict wrapping it under `state_dict` / `model_state_dict` / `model`). `source` prefixes errors.
 */
export function parsePth(bytes: Uint8Array, source: string): PthFile {
  const fail = (msg: string): never => {
    throw new Error(`${source}: ${msg.replace(/\s*\n\s*/g, ' ')}`);
  };
  if (!isZip(bytes)) {
    if (bytes.length > 0 && bytes[0] === 0x80) {
      // A bare pickle: the legacy (pre-1.6) torch.save format starts with a pickled magic number.
      // Read (never execute) its first pickle to tell which, refusing disallowed globals.
      const first = unpickle(bytes, fail, { persistentIds: false });
      if (first === LEGACY_MAGIC) {
        fail('legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a current PyTorch (torch.save(torch.load(f), "new.pth")) or convert it to safetensors');
      }
      fail('a bare pickle, not a torch.save zip archive; refusing to load (only state dicts saved with torch.save are supported)');
    }
    fail('not a PyTorch checkpoint (a .pth/.pt file written by torch.save is a zip archive starting with "PK")');
  }
  const entries = readZipDirectory(bytes, fail);
  const pkl = entries.find((e) => /^[^/]+\/data\.pkl$/.test(e.name)) ?? entries.find((e) => e.name === 'data.pkl');
  if (!pkl) fail('not a torch.save archive: no data.pkl in the zip');
  const prefix = pkl!.name.slice(0, pkl!.name.length - 'data.pkl'.length);
  const byName = new Map(entries.map((e) => [e.name, e]));
  let littleEndian = true;
  const bo = byName.get(`${prefix}byteorder`);
  if (bo) {
    const s = new TextDecoder().decode(readZipEntry(bytes, bo, fail)).trim();
    if (s === 'big') littleEndian = false;
    else if (s !== 'little') fail(`unknown byteorder "${s.slice(0, 20)}"`);
  }
  const root = unpickle(readZipEntry(bytes, pkl!, fail), fail, { persistentIds: true });

  let sd: PyDict | null = null;
  let wrapperKey = '';
  if (isStateDict(root)) sd = root;
  else if (root instanceof PyDict) {
    for (const k of WRAPPER_KEYS) {
      const v = root.map.get(k);
      if (v !== undefined && isStateDict(v)) {
        sd = v;
        wrapperKey = k;
        break;
      }
    }
    if (!sd) {
      const bad = [...root.map].find(([k, v]) => typeof k !== 'string' || !isTensorRef(v));
      const hint = root.map.size === 0 ? 'an empty dict' : bad && [...root.map.values()].some(isTensorRef) ? `a dict whose entry "${String(bad[0])}" is a ${typeName(bad[1])}, not a tensor` : `a dict with keys ${describeKeys(root)}`;
      fail(`does not contain a state dict: found ${hint}; expected a dict of tensors (torch.save(model.state_dict(), path)) or a checkpoint with a "state_dict" or "model" entry`);
    }
  } else {
    fail(`does not contain a state dict: the pickle holds a ${typeName(root)}, expected a dict of tensors`);
  }

  const storages = new Map<string, Uint8Array>();
  const tensors = new Map<string, Tensor>();
  const dtypes = new Map<string, PthDtype>();
  for (const [k, ref] of sd!.map) {
    const name = k as string;
    const t = ref as TensorRef;
    let st = storages.get(t.storage.key);
    if (!st) {
      const e = byName.get(`${prefix}data/${t.storage.key}`);
      if (!e) return fail(`tensor "${name}": storage data/${t.storage.key} is missing from the archive`);
      st = readZipEntry(bytes, e, fail);
      storages.set(t.storage.key, st);
    }
    const values = materialise(name, t, st, littleEndian, fail);
    const tensor = new Tensor(values, t.size);
    if (INTEGER_DTYPES.has(t.storage.dtype)) tensor.dtype = 'int64';
    tensors.set(name, tensor);
    dtypes.set(name, t.storage.dtype);
  }
  return { tensors, dtypes, wrapperKey, archiveName: prefix.replace(/\/$/, '') };
}

/** Read a `.pth`/`.pt` state dict from disk; errors are prefixed with `path`. */
export async function readPthFile(path: string): Promise<PthFile> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new Error(`${path}: cannot read file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return parsePth(bytes, path);
}

/** Read a `.pth`/`.pt` state dict from disk as a map of float32 tensors. */
export async function loadPth(path: string): Promise<Map<string, Tensor>> {
  return (await readPthFile(path)).tensors;
}
