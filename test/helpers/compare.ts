// Comparison helpers for tests against PyTorch fixtures.
import assert from 'node:assert/strict';
import { readSafetensorsFile, type SafetensorsFile } from '../../src/io/safetensors.js';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'test', 'fixtures');

const cache = new Map<string, Promise<SafetensorsFile>>();
export function fixture(name: string): Promise<SafetensorsFile> {
  let p = cache.get(name);
  if (!p) {
    p = readSafetensorsFile(path.join(FIXTURES, name));
    cache.set(name, p);
  }
  return p;
}

export function get(f: SafetensorsFile, name: string): Float32Array {
  const t = f.tensors.get(name);
  if (!t) throw new Error(`fixture has no tensor ${name}`);
  return t.data;
}

export function has(f: SafetensorsFile, name: string): boolean {
  return f.tensors.has(name);
}

export function l2(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

/** ||a - b|| / ||b|| (b is the reference). */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length mismatch');
  let d = 0;
  for (let i = 0; i < a.length; i++) d += (a[i] - b[i]) ** 2;
  const nb = l2(b);
  return nb === 0 ? Math.sqrt(d) : Math.sqrt(d) / nb;
}

export function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Assert relative L2 error ≤ tol, or absolute max error ≤ absTol when the reference is ~0. */
export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string, absTol = 0): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} vs expected ${expected.length}`);
  for (let i = 0; i < actual.length; i++) assert.ok(Number.isFinite(actual[i]), `${what}: non-finite value at ${i}`);
  const r = relL2(actual, expected);
  if (r <= tol) return;
  const m = maxAbs(actual, expected);
  if (absTol > 0 && m <= absTol) return;
  assert.fail(`${what}: relative L2 error ${r.toExponential(3)} > ${tol} (max abs diff ${m.toExponential(3)}, ‖expected‖ ${l2(expected).toExponential(3)})`);
}

/** Values at the fixture's sample indices floor(j * n / 256), j < 256. */
export function sample(a: ArrayLike<number>, count = 256): Float32Array {
  const n = a.length;
  const out = new Float32Array(count);
  for (let j = 0; j < count; j++) out[j] = a[Math.floor((j * n) / count)];
  return out;
}
