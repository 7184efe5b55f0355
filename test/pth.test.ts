// The .pth/.pt loader (src/io/pth.ts) and loadWeights: real torch.save files from
// scripts/gen_torchvision_fixtures.py (dtypes, views, wrappers, refused and malformed files)
// and hand-built archives/pickles for the corners torch.save never writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { crc32, loadPth, parsePth, readPthFile } from '../src/io/pth.js';
import { detectWeightsFormat, loadWeights, saveSafetensors } from '../src/io/weights.js';
import { tensor } from '../src/index.js';
import { FIXTURES } from './helpers/compare.js';

const fx = (name: string): string => path.join(FIXTURES, name);
/** The file the malicious fixtures' payloads would create (scripts/gen_torchvision_fixtures.py). */
const PWNED_MARKER = '/tmp/convnets-pth-pwned-marker';

/** Assert `p` rejects with a one-line error that starts with the file name and matches `re`. */
async function refused(p: Promise<unknown>, file: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: Error) => {
    assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
    assert.ok(e.message.startsWith(`${file}: `), `names the file: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

function refusedSync(fn: () => unknown, source: string, re: RegExp): void {
  assert.throws(fn, (e: Error) => {
    assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
    assert.ok(e.message.startsWith(`${source}: `), `names the source: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

// ---- a minimal stored-zip writer and pickle assembler for hand-built files ----------------------

function zip(entries: [string, Uint8Array][]): Uint8Array {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of entries) {
    const n = Buffer.from(name, 'utf8');
    const crc = crc32(data);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(data.length, 18);
    lh.writeUInt32LE(data.length, 22);
    lh.writeUInt16LE(n.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(data.length, 20);
    ch.writeUInt32LE(data.length, 24);
    ch.writeUInt16LE(n.length, 28);
    ch.writeUInt32LE(offset, 42);
    locals.push(lh, n, Buffer.from(data));
    centrals.push(ch, n);
    offset += 30 + n.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return new Uint8Array(Buffer.concat([...locals, cd, eocd]));
}

/** Pickle bytes from opcodes: strings are latin1 text, numbers single bytes. */
function pk(...parts: (string | number | Uint8Array)[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : typeof p === 'number' ? Buffer.from([p]) : Buffer.from(p)))));
}
const u32 = (n: number): Uint8Array => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return new Uint8Array(b);
};
const uni = (s: string): Uint8Array => pk('X', u32(Buffer.byteLength(s)), s);
const f32bytes = (v: number[]): Uint8Array => new Uint8Array(new Float32Array(v).buffer);

/** `{name: _rebuild_tensor_v2(storage '0' (FloatStorage, numel), offset, size, stride, False, OrderedDict())}` */
function tensorDictPickle(name: string, numel: number, offset: number, size: number[], stride: number[]): Uint8Array {
  const tup = (v: number[]): (string | number)[] => ['(', ...v.flatMap((x) => ['K', x]), 't'];
  return pk(
    0x80, 2, '}', '(', uni(name),
    'ctorch._utils\n_rebuild_tensor_v2\n',
    '(', '(', uni('storage'), 'ctorch\nFloatStorage\n', uni('0'), uni('cpu'), 'K', numel, 't', 'Q',
    'K', offset, ...tup(size), ...tup(stride), 0x89, 'ccollections\nOrderedDict\n', ')', 'R', 't', 'R',
    'u', '.',
  );
}

// ---- real torch.save files ----------------------------------------------------------------------

test('dtypes (float32/16, bfloat16, float64, int64, int32), transposed and offset views, Parameter, empty', async () => {
  const f = await readPthFile(fx('tv_dtypes.pth'));
  const v = (k: string): number[] => Array.from(f.tensors.get(k)!.values);
  assert.deepEqual([...f.tensors.keys()], ['f32', 'f16', 'bf16', 'f64', 'i64', 'i32', 'transposed', 'offset_view', 'offset_step2', 'scalar', 'param', 'empty']);
  assert.deepEqual(v('f32'), [1.5, -2.25, 3]);
  assert.deepEqual(v('f16'), [0.5, -1, 65504, 2 ** -24]);
  assert.deepEqual(v('bf16'), [1, -3.5, 256, 0.0078125]);
  assert.deepEqual(v('f64'), [0.1, 0.2, 0.3, 0.4].map(Math.fround));
  assert.deepEqual(f.tensors.get('f64')!.shape, [2, 2]);
  assert.deepEqual(v('i64'), [0, -7, 2 ** 40, Math.fround(123456789)]);
  assert.equal(f.tensors.get('i64')!.dtype, 'int64');
  assert.equal(f.tensors.get('f32')!.dtype, 'float32');
  assert.deepEqual(v('i32'), [5, -6]);
  // arange(12).reshape(4, 3).t(): shape [3, 4], strides (1, 3)
  assert.deepEqual(f.tensors.get('transposed')!.shape, [3, 4]);
  assert.deepEqual(v('transposed'), [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]);
  // two views of one shared storage (arange(10) * 0.5): [3:7] and [1::3]
  assert.deepEqual(v('offset_view'), [1.5, 2, 2.5, 3]);
  assert.deepEqual(v('offset_step2'), [0.5, 2, 3.5]);
  assert.deepEqual(f.tensors.get('scalar')!.shape, []);
  assert.deepEqual(v('scalar'), [42]);
  assert.deepEqual(v('param'), [1, 2]);
  assert.deepEqual(f.tensors.get('empty')!.shape, [0, 3]);
  assert.equal(f.dtypes.get('f16'), 'float16');
  assert.equal(f.dtypes.get('bf16'), 'bfloat16');
  assert.equal(f.archiveName, 'tv_dtypes');
});

test('a checkpoint dict wrapping the state dict under "state_dict" or "model" is unwrapped', async () => {
  const expected = { weight: [1, 2], bias: [0.5, -0.5], running_mean: [0.25, 0.75], running_var: [1.5, 2.5], num_batches_tracked: [3] };
  for (const [file, key] of [['tv_nested.pth', 'state_dict'], ['tv_nested_model.pth', 'model']]) {
    const f = await readPthFile(fx(file));
    assert.equal(f.wrapperKey, key);
    assert.deepEqual(Object.fromEntries([...f.tensors].map(([k, t]) => [k, Array.from(t.values)])), expected);
    assert.equal(f.tensors.get('num_batches_tracked')!.dtype, 'int64');
  }
});

test('deflated entries and another top folder name are read too', async () => {
  const m = await loadPth(fx('tv_deflate.pth'));
  assert.deepEqual(Array.from(m.get('running_var')!.values), [1.5, 2.5]);
});

test('strided views of one shared storage: every torchvision ResNet-50 tensor, storage read once', async () => {
  const f = await readPthFile(fx('tv_resnet50.pth'));
  assert.equal(f.tensors.size, 320);
  assert.deepEqual(f.tensors.get('layer1.0.conv2.weight')!.shape, [64, 64, 3, 3]);
  const nbt = f.tensors.get('layer1.0.bn1.num_batches_tracked')!;
  assert.equal(nbt.dtype, 'int64');
  assert.ok(Number.isInteger(nbt.values[0]) && nbt.values[0] >= 0 && nbt.values[0] < 8);
  for (const [k, t] of f.tensors) {
    for (const x of t.values) assert.ok(Number.isFinite(x), k);
    if (k.endsWith('running_var')) assert.ok(t.values.every((x) => x >= 0.75 && x <= 1.25), k);
  }
});

// ---- refused files --------------------------------------------------------------------------------

test('malicious pickles are refused before anything runs (os.system, builtins.eval, bare pickle)', async () => {
  await rm(PWNED_MARKER, { force: true });
  await refused(loadPth(fx('tv_malicious.pth')), fx('tv_malicious.pth'), /refusing to load: pickle calls posix\.system, which is not part of a state dict$/);
  await refused(loadPth(fx('tv_malicious_eval.pth')), fx('tv_malicious_eval.pth'), /refusing to load: pickle calls __builtin__\.eval, which is not part of a state dict$/);
  await refused(loadPth(fx('tv_malicious_bare.pth')), fx('tv_malicious_bare.pth'), /refusing to load: pickle calls posix\.system/);
  await refused(loadWeights(fx('tv_malicious.pth')), fx('tv_malicious.pth'), /refusing to load: pickle calls posix\.system/);
  await refused(loadWeights(fx('tv_malicious_bare.pth')), fx('tv_malicious_bare.pth'), /refusing to load: pickle calls posix\.system/);
  assert.equal(existsSync(PWNED_MARKER), false, 'the payload did not run');
});

test('other disallowed globals are refused, STACK_GLOBAL included', () => {
  for (const [mod, name] of [['subprocess', 'Popen'], ['builtins', 'exec'], ['torch.storage', '_load_from_bytes'], ['numpy.core.multiarray', '_reconstruct']]) {
    const viaGlobal = zip([['a/data.pkl', pk(0x80, 2, `c${mod}\n${name}\n`, uni('x'), 0x85, 'R', '.')]]);
    refusedSync(() => parsePth(viaGlobal, 'evil.pth'), 'evil.pth', new RegExp(`refusing to load: pickle calls ${mod.replace('.', '\\.')}\\.${name}, which is not part of a state dict`));
    const viaStack = zip([['a/data.pkl', pk(0x80, 4, 0x8c, mod.length, mod, 0x8c, name.length, name, 0x93, uni('x'), 0x85, 'R', '.')]]);
    refusedSync(() => parsePth(viaStack, 'evil.pth'), 'evil.pth', /refusing to load: pickle calls/);
  }
  // An allowed global used in a way a state dict never does.
  const storageCall = zip([['a/data.pkl', pk(0x80, 2, 'ctorch\nFloatStorage\n', ')', 'R', '.')]]);
  refusedSync(() => parsePth(storageCall, 'odd.pth'), 'odd.pth', /refusing to load: pickle calls torch\.FloatStorage/);
  // Opcodes a state dict never needs (INST, OBJ, NEWOBJ) are not interpreted.
  for (const op of ['i', 'o', '\x81']) {
    const bad = zip([['a/data.pkl', pk(0x80, 2, '(', op, '.')]]);
    refusedSync(() => parsePth(bad, 'op.pth'), 'op.pth', /unsupported pickle opcode/);
  }
});

test('legacy (non-zip) torch.save files are refused with a re-save hint', async () => {
  await refused(loadPth(fx('tv_legacy.pth')), fx('tv_legacy.pth'), /legacy \(pre-1\.6, non-zip\) torch\.save format is not supported; re-save it with a current PyTorch .* or convert it to safetensors/);
});

test('malformed files: truncated zip, wrong magic, no data.pkl, storage out of bounds, not a state dict', async () => {
  await refused(loadPth(fx('tv_bad_truncated.pth')), fx('tv_bad_truncated.pth'), /truncated or not a zip archive/);
  await refused(loadPth(fx('tv_bad_magic.pth')), fx('tv_bad_magic.pth'), /not a PyTorch checkpoint/);
  await refused(loadPth(fx('tv_bad_no_datapkl.pth')), fx('tv_bad_no_datapkl.pth'), /no data\.pkl in the zip/);
  await refused(loadPth(fx('tv_bad_storage_oob.pth')), fx('tv_bad_storage_oob.pth'), /tensor "weight": storage out of bounds \(storage data\/0 holds 1 element;/);
  await refused(loadPth(fx('tv_not_state_dict.pth')), fx('tv_not_state_dict.pth'), /does not contain a state dict: found a dict with keys not, n/);
  await refused(loadPth(path.join(FIXTURES, 'no-such-file.pth')), path.join(FIXTURES, 'no-such-file.pth'), /cannot read file \(ENOENT\)/);
});

test('hand-built archives: strided view bounds, missing storage, CRC, truncated pickle, undefined memo', async () => {
  // A valid view: storage of 6 floats, size [2, 2], stride [3, 1], offset 1 -> [1, 2, 4, 5].
  const ok = zip([['x/data.pkl', tensorDictPickle('w', 6, 1, [2, 2], [3, 1])], ['x/data/0', f32bytes([0, 1, 2, 3, 4, 5])]]);
  assert.deepEqual(Array.from(parsePth(ok, 'ok.pth').tensors.get('w')!.values), [1, 2, 4, 5]);
  // stride [3, 1] with offset 2 reaches element 6 of 6.
  const oob = zip([['x/data.pkl', tensorDictPickle('w', 6, 2, [2, 2], [3, 1])], ['x/data/0', f32bytes([0, 1, 2, 3, 4, 5])]]);
  refusedSync(() => parsePth(oob, 'oob.pth'), 'oob.pth', /tensor "w": storage out of bounds .* reaches element 6/);
  const missing = zip([['x/data.pkl', tensorDictPickle('w', 6, 0, [6], [1])]]);
  refusedSync(() => parsePth(missing, 'missing.pth'), 'missing.pth', /tensor "w": storage data\/0 is missing from the archive/);
  // Corrupt one byte of the storage after the CRC was computed.
  const corrupt = Buffer.from(ok);
  const at = corrupt.indexOf(Buffer.from(f32bytes([0, 1, 2, 3, 4, 5])));
  corrupt[at + 5] ^= 0xff;
  refusedSync(() => parsePth(new Uint8Array(corrupt), 'crc.pth'), 'crc.pth', /CRC mismatch in entry x\/data\/0/);
  const cut = tensorDictPickle('w', 6, 0, [6], [1]);
  refusedSync(() => parsePth(zip([['x/data.pkl', cut.subarray(0, 40)]]), 'cut.pth'), 'cut.pth', /malformed pickle/);
  refusedSync(() => parsePth(zip([['x/data.pkl', pk(0x80, 2, 'h', 7, '.')]]), 'memo.pth'), 'memo.pth', /memo entry 7 is not defined/);
  refusedSync(() => parsePth(zip([['x/data.pkl', pk(0x80, 2, ']', '.')]]), 'list.pth'), 'list.pth', /does not contain a state dict: the pickle holds a list/);
  refusedSync(() => parsePth(zip([['x/data.pkl', pk(0x80, 2, '}', '.')]]), 'empty.pth'), 'empty.pth', /found an empty dict/);
  // A zip truncated inside an entry (central directory intact, data cut): sizes are checked.
  const bad = Buffer.from(ok);
  bad.writeUInt32LE(0x7fffffff, bad.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02])) + 20);
  refusedSync(() => parsePth(new Uint8Array(bad), 'size.pth'), 'size.pth', /truncated zip archive: entry x\/data\.pkl needs bytes/);
});

// ---- loadWeights ------------------------------------------------------------------------------------

test('loadWeights dispatches on magic bytes: safetensors, .pth, anything else refused', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'pth-test-'));
  try {
    const st = path.join(dir, 'w.pth'); // a safetensors file with a misleading extension
    await saveSafetensors(st, new Map([['a', tensor([1, 2, 3])]]));
    assert.deepEqual(Array.from((await loadWeights(st)).get('a')!.values), [1, 2, 3]);
    const pth = path.join(dir, 'w.safetensors'); // and a .pth with a misleading one
    await writeFile(pth, await readFile(fx('tv_nested.pth')));
    assert.deepEqual(Array.from((await loadWeights(pth)).get('weight')!.values), [1, 2]);
    const junk = path.join(dir, 'junk.bin');
    await writeFile(junk, 'hello world, not weights');
    await refused(loadWeights(junk), junk, /unrecognised weights format/);
    await refused(loadWeights(fx('tv_legacy.pth')), fx('tv_legacy.pth'), /legacy/);
    assert.equal(detectWeightsFormat(new Uint8Array([0x50, 0x4b, 3, 4])), 'pth');
    assert.equal(detectWeightsFormat(new Uint8Array([0x80, 2])), 'pickle');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
