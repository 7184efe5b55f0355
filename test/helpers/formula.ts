// Deterministic value formulas shared with scripts/gen_fixtures.py (see test/fixtures/FIXTURES.md).
//
// Every function here reproduces the generator bit for bit: the hash is pure 32-bit unsigned
// integer arithmetic, each value is computed in float64 with the same operation order as the
// Python/numpy code, then rounded to float32 (Math.fround ≡ numpy astype(float32), round to
// nearest even). test/fixtures/formula.safetensors holds values to check this file against.

/** Stream of the training-step input (B,3,32,32). */
export const STREAM_INPUT_TRAIN = 1000;
/** Stream of the BatchNorm calibration input (B,3,32,32). */
export const STREAM_INPUT_CALIB = 1001;
/** Stream of the evaluation input (B,3,32,32). */
export const STREAM_INPUT_EVAL = 1002;
/** Tensors with more elements than this are stored as `.norm` + `.sample` in the model fixtures. */
export const FULL_LIMIT = 4096;
/** Number of sampled elements of a large tensor. */
export const SAMPLE_COUNT = 256;

/** h(k, i): the u32 hash of stream k ≥ 0, element i ≥ 0. */
export function hashU32(k: number, i: number): number {
  let h = Math.imul(i + 1, 0x9e3779b1) ^ Math.imul(k + 1, 0x85ebca77);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

/** u(k, i) = h(k, i) / 2^32, a float64 in [0, 1) (exact). */
export function u(k: number, i: number): number {
  return hashU32(k, i) / 4294967296;
}

/** fround(u(k, i)) for i = 0..n-1 (the model inputs: k = 1000/1001/1002, n = B*3*32*32). */
export function uniformF32(k: number, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = u(k, i);
  return out;
}

/** fround(lo + (hi - lo) * u(k, i)) for i = 0..n-1 (op/optimiser fixture inputs). */
export function ranged(k: number, n: number, lo: number, hi: number): Float32Array {
  const out = new Float32Array(n);
  const span = hi - lo;
  for (let i = 0; i < n; i++) out[i] = lo + span * u(k, i);
  return out;
}

/** Number of elements of a shape ([] → 1). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/**
 * Values of the k-th formula state_dict entry (k counts entries in state_dict order, skipping
 * `num_batches_tracked`), float32, row-major. Rules, by shape then name:
 *   ndim ≥ 2          (2u-1) * sqrt(3 / fan_in), fan_in = shape[1] * prod(shape[2:])
 *   *running_mean     0.1 * (2u-1)
 *   *running_var      0.75 + 0.5u
 *   *bias             0.1 * (2u-1)
 *   *weight (1-d)     1 + 0.25 * (2u-1)
 */
export function formulaEntry(name: string, shape: readonly number[], k: number): Float32Array {
  const n = numel(shape);
  const out = new Float32Array(n);
  if (shape.length >= 2) {
    let fanIn = shape[1];
    for (let d = 2; d < shape.length; d++) fanIn *= shape[d];
    const scale = Math.sqrt(3 / fanIn);
    for (let i = 0; i < n; i++) out[i] = (2 * u(k, i) - 1) * scale;
  } else if (name.endsWith('running_mean')) {
    for (let i = 0; i < n; i++) out[i] = 0.1 * (2 * u(k, i) - 1);
  } else if (name.endsWith('running_var')) {
    for (let i = 0; i < n; i++) out[i] = 0.75 + 0.5 * u(k, i);
  } else if (name.endsWith('bias')) {
    for (let i = 0; i < n; i++) out[i] = 0.1 * (2 * u(k, i) - 1);
  } else if (name.endsWith('weight')) {
    for (let i = 0; i < n; i++) out[i] = 1 + 0.25 * (2 * u(k, i) - 1);
  } else {
    throw new Error(`no formula rule for state_dict entry ${name} [${shape.join(',')}]`);
  }
  return out;
}

/** A state_dict key list as stored in a model fixture's `keys` metadata: [[name, shape], ...]. */
export type StateKeys = ReadonlyArray<readonly [string, readonly number[]]>;

/** Parse the `keys` metadata string of a model fixture. */
export function parseStateKeys(json: string): Array<[string, number[]]> {
  const v: unknown = JSON.parse(json);
  if (!Array.isArray(v)) throw new Error('keys metadata: not a list');
  return v.map((e: unknown) => {
    if (!Array.isArray(e) || typeof e[0] !== 'string' || !Array.isArray(e[1])) {
      throw new Error(`keys metadata: bad entry ${JSON.stringify(e)}`);
    }
    return [e[0], (e[1] as unknown[]).map(Number)];
  });
}

/**
 * The formula weights of a whole model, in state_dict order. `num_batches_tracked` entries get a
 * single 0 (shape []) and do not advance the stream counter k.
 */
export function formulaStateDict(keys: StateKeys): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  let k = 0;
  for (const [name, shape] of keys) {
    if (name.endsWith('num_batches_tracked')) {
      out.set(name, new Float32Array(Math.max(1, numel(shape))));
      continue;
    }
    out.set(name, formulaEntry(name, shape, k));
    k++;
  }
  return out;
}

/** Model input (batch, 3, 32, 32) of stream k: fround(u(k, i)), flat NCHW index i. */
export function formulaInput(k: number, batch: number): Float32Array {
  return uniformF32(k, batch * 3 * 32 * 32);
}

/** Class targets y[n] = (3n + 1) % 10. */
export function formulaTargets(batch: number): Int32Array {
  const y = new Int32Array(batch);
  for (let n = 0; n < batch; n++) y[n] = (3 * n + 1) % 10;
  return y;
}

/** Flat indices floor(j * numel / 256), j = 0..255, of a `.sample` tensor. */
export function sampleIndices(n: number): number[] {
  const idx: number[] = [];
  for (let j = 0; j < SAMPLE_COUNT; j++) idx.push(Math.floor((j * n) / SAMPLE_COUNT));
  return idx;
}

/** The `.sample` values of a flat tensor (float64 array for comparison). */
export function sampleOf(data: ArrayLike<number>): Float64Array {
  const idx = sampleIndices(data.length);
  const out = new Float64Array(idx.length);
  for (let j = 0; j < idx.length; j++) out[j] = data[idx[j]];
  return out;
}

/** L2 norm accumulated in float64 (how `.norm` entries were computed, from float64 values). */
export function l2norm(data: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < data.length; i++) s += data[i] * data[i];
  return Math.sqrt(s);
}
