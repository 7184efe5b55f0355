import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  parseSafetensors,
  readSafetensorsFile,
  serializeSafetensors,
  writeSafetensorsFile,
} from '../src/io/safetensors.js';

const SRC = 'model.safetensors';

/** Builds a file by hand: u64 LE header length, header text padded to 8, then data. */
function build(header: string | object, data: Uint8Array = new Uint8Array(0), headerLen?: bigint): Uint8Array {
  let text = typeof header === 'string' ? header : JSON.stringify(header);
  while (text.length % 8 !== 0) text += ' ';
  const h = Buffer.from(text, 'utf8');
  const out = Buffer.alloc(8 + h.length + data.length);
  out.writeBigUInt64LE(headerLen ?? BigInt(h.length), 0);
  h.copy(out, 8);
  out.set(data, 8 + h.length);
  return new Uint8Array(out);
}

/** Little-endian bytes from a list of u16 values. */
function u16le(values: number[]): Uint8Array {
  const b = Buffer.alloc(values.length * 2);
  values.forEach((v, i) => b.writeUInt16LE(v, i * 2));
  return new Uint8Array(b);
}

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'safetensors-test-'));
}

test('round trip: several shapes, scalar, empty tensors and metadata', () => {
  const tensors = {
    'conv.weight': { shape: [2, 1, 3, 3], data: Float32Array.from({ length: 18 }, (_, i) => i * 0.5 - 3) },
    'bn.running_mean': { shape: [4], data: new Float32Array([0.1, -0.2, 1e-30, 3.4e38]) },
    'bn.num_batches_tracked': { shape: [], data: new BigInt64Array([123456789n]) },
    scalar: { shape: [], data: new Float32Array([Math.fround(Math.PI)]) },
    empty: { shape: [0, 5], data: new Float32Array(0) },
    ints: { shape: [3], data: new Int32Array([-7, 0, 2147483647]) },
  };
  const meta = { format: 'pt', epoch: '12' };
  const bytes = serializeSafetensors(tensors, meta);
  const file = parseSafetensors(bytes, SRC);

  assert.deepEqual(file.metadata, meta);
  assert.deepEqual([...file.tensors.keys()].sort(), Object.keys(tensors).sort());
  for (const [name, t] of Object.entries(tensors)) {
    const got = file.tensors.get(name)!;
    assert.equal(got.dtype, 'F32');
    assert.deepEqual(got.shape, t.shape);
    assert.ok(got.data instanceof Float32Array);
    assert.deepEqual([...got.data], Array.from(t.data as ArrayLike<number | bigint>, (v) => Math.fround(Number(v))));
  }
  assert.equal(file.tensors.get('ints')!.sourceDtype, 'I32');
  assert.equal(file.tensors.get('bn.num_batches_tracked')!.sourceDtype, 'I64');
  assert.equal(file.tensors.get('scalar')!.sourceDtype, 'F32');

  // Returned arrays must not alias the input bytes.
  const before = file.tensors.get('scalar')!.data[0];
  bytes.fill(0xff, 8);
  assert.equal(file.tensors.get('scalar')!.data[0], before);

  // Same with a Node Buffer as input (Buffer#slice is a view, not a copy).
  const buf = Buffer.from(serializeSafetensors(tensors, meta));
  const fromBuf = parseSafetensors(buf, SRC);
  buf.fill(0xff, 8);
  assert.equal(fromBuf.tensors.get('scalar')!.data[0], before);
  assert.equal(fromBuf.tensors.get('scalar')!.data.length, 1);
  assert.equal(fromBuf.tensors.get('conv.weight')!.data.buffer.byteLength, 18 * 4);

  // A Map works too, and no metadata → no __metadata__ key.
  const viaMap = parseSafetensors(serializeSafetensors(new Map([['x', tensors.scalar]])), SRC);
  assert.deepEqual(viaMap.metadata, {});
  assert.equal(viaMap.tensors.size, 1);
});

test('empty tensor list is allowed', () => {
  const bytes = serializeSafetensors({});
  // "{}" padded to 8 bytes.
  assert.deepEqual([...bytes], [8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d, 32, 32, 32, 32, 32, 32]);
  const f = parseSafetensors(bytes, SRC);
  assert.equal(f.tensors.size, 0);
  assert.deepEqual(f.metadata, {});
});

test('exact byte layout of a small file', () => {
  // Inserted out of order: the writer must sort by name ("a" before "b").
  const bytes = serializeSafetensors(
    { b: { shape: [2], data: new Float32Array([1, 2]) }, a: { shape: [], data: new Int32Array([7]) } },
    { k: 'v' },
  );
  const header =
    '{"__metadata__":{"k":"v"},' +
    '"a":{"dtype":"I32","shape":[],"data_offsets":[0,4]},' +
    '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}';
  assert.equal(header.length, 132);
  const padded = header + ' '.repeat(4); // 132 → 136, a multiple of 8
  const expected = [
    ...[136, 0, 0, 0, 0, 0, 0, 0], // u64 LE header length
    ...Buffer.from(padded, 'latin1'),
    ...[0x07, 0x00, 0x00, 0x00], // a: I32 7
    ...[0x00, 0x00, 0x80, 0x3f], // b[0]: F32 1.0
    ...[0x00, 0x00, 0x00, 0x40], // b[1]: F32 2.0
  ];
  assert.deepEqual([...bytes], expected);
  assert.equal(bytes.length, 8 + 136 + 12);
});

test('F16 decoding, including subnormals, infinities and NaN', () => {
  const halves = [0x3c00, 0xc000, 0x7c00, 0xfc00, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x3555, 0x8000, 0x0000, 0x7e00];
  const expected = [
    1, -2, Infinity, -Infinity, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, 65504, Math.fround(0.333251953125), -0, 0, NaN,
  ];
  const f = parseSafetensors(
    build({ h: { dtype: 'F16', shape: [halves.length], data_offsets: [0, halves.length * 2] } }, u16le(halves)),
    SRC,
  );
  const t = f.tensors.get('h')!;
  assert.equal(t.sourceDtype, 'F16');
  assert.deepEqual([...t.data], expected); // deepEqual distinguishes -0 and matches NaN
});

test('BF16 decoding', () => {
  const vals = [0x3f80, 0xc000, 0x7f80, 0xff80, 0x0001, 0x4049, 0x7fc0];
  const expected = [1, -2, Infinity, -Infinity, 2 ** -133, 3.140625, NaN];
  const f = parseSafetensors(
    build({ b: { dtype: 'BF16', shape: [vals.length], data_offsets: [0, vals.length * 2] } }, u16le(vals)),
    SRC,
  );
  assert.deepEqual([...f.tensors.get('b')!.data], expected);
  assert.equal(f.tensors.get('b')!.sourceDtype, 'BF16');
});

test('I64, F64, I32, U8 and BOOL decoding', () => {
  const data = Buffer.alloc(16 + 16 + 8 + 3 + 3);
  data.writeBigInt64LE(-5n, 0);
  data.writeBigInt64LE(1n << 40n, 8);
  data.writeDoubleLE(0.1, 16);
  data.writeDoubleLE(-1e300, 24);
  data.writeInt32LE(-1, 32);
  data.writeInt32LE(65536, 36);
  data.set([0, 200, 255], 40);
  data.set([0, 1, 1], 43);
  const f = parseSafetensors(
    build(
      {
        i64: { dtype: 'I64', shape: [2], data_offsets: [0, 16] },
        f64: { dtype: 'F64', shape: [2, 1], data_offsets: [16, 32] },
        i32: { dtype: 'I32', shape: [1, 2], data_offsets: [32, 40] },
        u8: { dtype: 'U8', shape: [3], data_offsets: [40, 43] },
        bool: { dtype: 'BOOL', shape: [3], data_offsets: [43, 46] },
      },
      data,
    ),
    SRC,
  );
  assert.deepEqual([...f.tensors.get('i64')!.data], [-5, 2 ** 40]);
  assert.deepEqual([...f.tensors.get('f64')!.data], [Math.fround(0.1), -Infinity]);
  assert.deepEqual(f.tensors.get('f64')!.shape, [2, 1]);
  assert.deepEqual([...f.tensors.get('i32')!.data], [-1, 65536]);
  assert.deepEqual([...f.tensors.get('u8')!.data], [0, 200, 255]);
  assert.deepEqual([...f.tensors.get('bool')!.data], [0, 1, 1]);
  assert.equal(f.tensors.get('bool')!.sourceDtype, 'BOOL');
});

test('unaligned data offsets are handled', () => {
  // One U8 byte first, so the F32 tensor starts at data offset 1 (unaligned).
  const data = Buffer.alloc(1 + 8);
  data[0] = 9;
  data.writeFloatLE(1.5, 1);
  data.writeFloatLE(-4, 5);
  // Also make the whole input a subarray at an odd byteOffset.
  const file = build(
    { u: { dtype: 'U8', shape: [1], data_offsets: [0, 1] }, f: { dtype: 'F32', shape: [2], data_offsets: [1, 9] } },
    data,
  );
  const shifted = new Uint8Array(file.length + 3);
  shifted.set(file, 3);
  const f = parseSafetensors(shifted.subarray(3), SRC);
  assert.deepEqual([...f.tensors.get('f')!.data], [1.5, -4]);
  assert.deepEqual([...f.tensors.get('u')!.data], [9]);
});

test('malformed files give one-line errors naming the source', () => {
  const f32 = (begin: number, end: number, shape: number[] = [1]) => ({ dtype: 'F32', shape, data_offsets: [begin, end] });
  const cases: Array<[string, Uint8Array, RegExp]> = [
    ['too short', new Uint8Array(5), /too short/],
    ['header larger than file', build({}, new Uint8Array(0), 1000n), /header length 1000 is larger than the file/],
    ['absurd header', build({}, new Uint8Array(0), 1n << 40n), /absurd/],
    ['invalid utf-8', build('\u0000', new Uint8Array(0)).map((b, i) => (i === 8 ? 0xff : b)), /not valid UTF-8/],
    ['invalid JSON', build('{"a": ', new Uint8Array(0)), /not valid JSON/],
    ['array header', build('[1,2]'), /not a JSON object/],
    ['null header', build('null'), /not a JSON object/],
    ['entry not object', build({ a: 3 }), /"a".*not an object/],
    ['missing dtype', build({ a: { shape: [1], data_offsets: [0, 4] } }), /missing "dtype"/],
    ['missing shape', build({ a: { dtype: 'F32', data_offsets: [0, 4] } }), /missing "shape"/],
    ['missing offsets', build({ a: { dtype: 'F32', shape: [1] } }), /missing "data_offsets"/],
    ['dtype not string', build({ a: { dtype: 4, shape: [1], data_offsets: [0, 4] } }), /"dtype" must be a string/],
    ['unknown dtype', build({ a: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }), /unknown dtype "F8_E4M3"/],
    ['shape not array', build({ a: { dtype: 'F32', shape: 4, data_offsets: [0, 4] } }), /"shape" must be an array/],
    ['negative dim', build({ a: f32(0, 4, [-1]) }, new Uint8Array(4)), /invalid shape dimension -1/],
    ['fractional dim', build({ a: f32(0, 4, [1.5]) }, new Uint8Array(4)), /invalid shape dimension 1\.5/],
    ['offsets wrong arity', build({ a: { dtype: 'F32', shape: [1], data_offsets: [0] } }), /invalid "data_offsets"/],
    ['offsets negative', build({ a: f32(-4, 0) }), /invalid "data_offsets"/],
    ['offsets begin > end', build({ a: f32(8, 4) }, new Uint8Array(8)), /begin > end/],
    [
      'truncated',
      build({ a: f32(0, 4), b: f32(4, 8) }, new Uint8Array(6)),
      /truncated: tensor "b" needs bytes 4\.\.8 but the data section has only 6 bytes/,
    ],
    ['byte length mismatch', build({ a: f32(0, 8, [3]) }, new Uint8Array(8)), /byte length 8 does not match.*12 bytes/],
    ['overlap', build({ a: f32(0, 8, [2]), b: f32(4, 8) }, new Uint8Array(8)), /overlapping tensors "a".*"b"/],
    ['metadata not object', build({ __metadata__: 'x' }), /"__metadata__" is not an object/],
    ['metadata value not string', build({ __metadata__: { epoch: 3 } }), /"__metadata__" value for "epoch" is not a string/],
  ];
  for (const [label, bytes, re] of cases) {
    assert.throws(
      () => parseSafetensors(bytes, SRC),
      (err: unknown) => {
        assert.ok(err instanceof Error, label);
        assert.ok(err.message.startsWith(`${SRC}: `), `${label}: ${err.message}`);
        assert.match(err.message, re, label);
        assert.ok(!err.message.includes('\n'), `${label}: multi-line message`);
        return true;
      },
      label,
    );
  }
});

test('edge cases that are valid: scalar [], empty tensor with zero-length range, gaps', () => {
  const data = Buffer.alloc(12);
  data.writeFloatLE(2.5, 0);
  data.writeFloatLE(7, 8); // bytes 4..8 unused
  const f = parseSafetensors(
    build({
      s: { dtype: 'F32', shape: [], data_offsets: [0, 4] },
      e: { dtype: 'F32', shape: [3, 0], data_offsets: [4, 4] },
      g: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
    }, data),
    SRC,
  );
  assert.deepEqual([...f.tensors.get('s')!.data], [2.5]);
  assert.deepEqual(f.tensors.get('s')!.shape, []);
  assert.equal(f.tensors.get('e')!.data.length, 0);
  assert.deepEqual([...f.tensors.get('g')!.data], [7]);
});

test('serializer rejects inconsistent input', () => {
  assert.throws(() => serializeSafetensors({ a: { shape: [3], data: new Float32Array(2) } }), /"a".*does not match/);
  assert.throws(() => serializeSafetensors({ a: { shape: [-1], data: new Float32Array(0) } }), /invalid shape/);
  assert.throws(() => serializeSafetensors({ __metadata__: { shape: [], data: new Float32Array(1) } }), /reserved/);
});

test('atomic write leaves no temp file; read back matches', async () => {
  const dir = await tempDir();
  try {
    const path = join(dir, 'w.safetensors');
    await writeFile(path, 'old contents');
    const t = { w: { shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } };
    await writeSafetensorsFile(path, t, { note: 'hi' });
    assert.deepEqual(await readdir(dir), ['w.safetensors']);
    assert.deepEqual(await readFile(path), Buffer.from(serializeSafetensors(t, { note: 'hi' })));
    const f = await readSafetensorsFile(path);
    assert.deepEqual([...f.tensors.get('w')!.data], [1, 2, 3, 4]);
    assert.deepEqual(f.metadata, { note: 'hi' });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('failing write throws and leaves no partial file', async () => {
  const dir = await tempDir();
  try {
    const path = join(dir, 'missing-subdir', 'x.safetensors');
    await assert.rejects(writeSafetensorsFile(path, { a: { shape: [1], data: new Float32Array([1]) } }), /ENOENT/);
    assert.deepEqual(await readdir(dir), []);

    // Rename failure (target is a non-empty directory): temp file must be cleaned up.
    const blocked = join(dir, 'blocked');
    await writeFile(join(dir, 'keep'), '');
    await mkdir(blocked);
    await writeFile(join(blocked, 'f'), '');
    await assert.rejects(writeSafetensorsFile(blocked, { a: { shape: [1], data: new Float32Array([1]) } }));
    assert.deepEqual((await readdir(dir)).sort(), ['blocked', 'keep']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('reading a missing or malformed file names the path', async () => {
  const dir = await tempDir();
  try {
    const path = join(dir, 'bad.safetensors');
    await writeFile(path, Buffer.from([1, 2, 3]));
    await assert.rejects(readSafetensorsFile(path), (e: Error) => e.message.startsWith(`${path}: `) && /too short/.test(e.message));
    await assert.rejects(readSafetensorsFile(join(dir, 'nope.safetensors')), /ENOENT/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

const hasPythonSafetensors =
  spawnSync('/usr/bin/python3', ['-c', 'import safetensors, numpy'], { stdio: 'ignore' }).status === 0;

test(
  'reads a file written by the Python reference implementation',
  { skip: hasPythonSafetensors ? false : 'python3 with safetensors+numpy not available' },
  async () => {
    const dir = await tempDir();
    try {
      const path = join(dir, 'py.safetensors');
      const script = [
        'import sys, numpy as np',
        'from safetensors.numpy import save_file',
        'save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3),',
        '           "h": np.array([1.0, -2.0, np.inf], dtype=np.float16),',
        '           "n": np.array(42, dtype=np.int64)}, sys.argv[1], metadata={"format": "np"})',
      ].join('\n');
      const r = spawnSync('/usr/bin/python3', ['-c', script, path], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const f = await readSafetensorsFile(path);
      assert.deepEqual(f.metadata, { format: 'np' });
      assert.deepEqual(f.tensors.get('w')!.shape, [2, 3]);
      assert.deepEqual([...f.tensors.get('w')!.data], [0, 1, 2, 3, 4, 5]);
      assert.deepEqual([...f.tensors.get('h')!.data], [1, -2, Infinity]);
      assert.deepEqual(f.tensors.get('n')!.shape, []);
      assert.deepEqual([...f.tensors.get('n')!.data], [42]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
);
