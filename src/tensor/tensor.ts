// Tensor and the autograd engine (define-by-run), in one place.
//
// A Tensor is a float32 buffer with a shape. Operations on tensors (src/tensor/functional.ts)
// record a GradFn on their output when any input requires grad; `backward()` walks these
// records in reverse topological order and accumulates gradients into the leaves' `.grad`.
// After a backward pass the graph is released (like PyTorch without retain_graph), so memory
// is reclaimed by the garbage collector: an ordinary training loop never calls dispose().
import { getBackend } from '../backend/registry.js';
import type { F32 } from '../backend/backend.js';

let gradEnabled = true;

/** Run `fn` without recording operations for autograd (like `with torch.no_grad()`). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** The record an operation leaves on its output: how to map the output's gradient to its inputs'. */
export interface GradFn {
  readonly name: string;
  readonly inputs: readonly (Tensor | null)[];
  /** Given d(loss)/d(output), return d(loss)/d(input) for each input (null where not needed). */
  backward(gy: F32): (F32 | null)[];
}

export function shapeSize(shape: readonly number[]): number {
  let s = 1;
  for (const d of shape) s *= d;
  return s;
}

export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

function checkShape(shape: readonly number[], what: string): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new Error(`${what}: invalid shape ${formatShape(shape)} (dimensions must be non-negative integers)`);
  }
}

export class Tensor {
  readonly shape: readonly number[];
  readonly size: number;
  /** The storage. Backends read and write it directly; users read it through data()/dataSync(). */
  values: F32;
  requiresGrad: boolean;
  grad: Tensor | null = null;
  gradFn: GradFn | null = null;
  /** Element type for serialisation. Values are always held as float32; 'int64' marks counters
   *  such as BatchNorm's num_batches_tracked (exact up to 2^24). */
  dtype: 'float32' | 'int64' = 'float32';

  constructor(values: F32, shape: readonly number[], requiresGrad = false) {
    checkShape(shape, 'tensor');
    const size = shapeSize(shape);
    if (values.length !== size) {
      throw new Error(`tensor: ${values.length} values do not fit shape ${formatShape(shape)} (${size} elements)`);
    }
    this.values = values;
    this.shape = Object.freeze([...shape]);
    this.size = size;
    this.requiresGrad = requiresGrad;
  }

  get ndim(): number {
    return this.shape.length;
  }

  /** A copy of the values. Async so that a device backend can read back without blocking. */
  async data(): Promise<Float32Array> {
    return this.dataSync();
  }

  /** A copy of the values, synchronously (CPU backends). */
  dataSync(): Float32Array {
    return this.values.slice();
  }

  /** The value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new Error(`item(): tensor of shape ${formatShape(this.shape)} has ${this.size} elements, expected 1`);
    return this.values[0];
  }

  /** A tensor sharing this one's storage but cut from the graph. */
  detach(): Tensor {
    return new Tensor(this.values, this.shape, false);
  }

  /** A deep copy, cut from the graph. */
  clone(): Tensor {
    return new Tensor(this.values.slice(), this.shape, false);
  }

  /** Same storage, new shape (one dimension may be -1). Differentiable. */
  reshape(shape: readonly number[]): Tensor {
    const s = [...shape];
    const neg = s.indexOf(-1);
    if (neg >= 0) {
      const rest = shapeSize(s.filter((_, i) => i !== neg));
      if (rest === 0 || this.size % rest !== 0) throw new Error(`reshape: cannot reshape ${formatShape(this.shape)} into ${formatShape(shape)}`);
      s[neg] = this.size / rest;
    }
    if (shapeSize(s) !== this.size) throw new Error(`reshape: cannot reshape ${formatShape(this.shape)} (${this.size} elements) into ${formatShape(shape)}`);
    const out = new Tensor(this.values, s, this.requiresGrad && gradEnabled);
    if (out.requiresGrad) out.gradFn = { name: 'ReshapeBackward', inputs: [this], backward: (gy) => [gy] };
    return out;
  }

  /** Merge dimensions startDim..endDim into one, like torch.flatten. */
  flatten(startDim = 0, endDim = -1): Tensor {
    const nd = this.ndim;
    const s = startDim < 0 ? startDim + nd : startDim;
    const e = endDim < 0 ? endDim + nd : endDim;
    if (nd === 0) return this.reshape([1]);
    if (s < 0 || e >= nd || s > e) throw new Error(`flatten: dimensions ${startDim}..${endDim} out of range for shape ${formatShape(this.shape)}`);
    const merged = shapeSize(this.shape.slice(s, e + 1));
    return this.reshape([...this.shape.slice(0, s), merged, ...this.shape.slice(e + 1)]);
  }

  /**
   * Compute gradients of this tensor with respect to every leaf that requires grad, and
   * accumulate them into the leaves' `.grad`. Without an argument the tensor must hold one value.
   */
  backward(gradient?: Tensor, opts: { retainGraph?: boolean } = {}): void {
    if (!this.requiresGrad) throw new Error('backward(): this tensor does not require grad (no input of the computation requires grad)');
    let seed: F32;
    if (gradient) {
      if (gradient.size !== this.size) throw new Error(`backward(): gradient shape ${formatShape(gradient.shape)} does not match tensor shape ${formatShape(this.shape)}`);
      seed = gradient.values;
    } else {
      if (this.size !== 1) throw new Error(`backward(): gradient can be implicitly created only for one-element tensors, got shape ${formatShape(this.shape)}`);
      seed = new Float32Array([1]);
    }
    runBackward(this, seed, opts.retainGraph ?? false);
  }

  toString(): string {
    const v = this.values;
    const head = Array.from(v.subarray(0, Math.min(v.length, 8)), (x) => x.toPrecision(5)).join(', ');
    return `tensor(shape=${formatShape(this.shape)}, values=[${head}${v.length > 8 ? ', …' : ''}]${this.requiresGrad ? ', requiresGrad=true' : ''})`;
  }
}

/** A tensor that is a module's learnable parameter: a leaf that requires grad. */
export class Parameter extends Tensor {
  constructor(values: F32, shape: readonly number[], requiresGrad = true) {
    super(values, shape, requiresGrad);
  }
}

interface GradSlot {
  buf: F32;
  owned: boolean; // false while `buf` may be shared with another slot or a saved tensor
}

function runBackward(root: Tensor, seed: F32, retainGraph: boolean): void {
  // Topological order by iterative depth-first search over GradFn inputs.
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  visited.add(root);
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    const inputs = t.gradFn ? t.gradFn.inputs : [];
    if (i < inputs.length) {
      top[1] = i + 1;
      const child = inputs[i];
      if (child && child.requiresGrad && !visited.has(child)) {
        visited.add(child);
        stack.push([child, 0]);
      }
    } else {
      stack.pop();
      order.push(t);
    }
  }

  const backend = getBackend();
  const grads = new Map<Tensor, GradSlot>();
  grads.set(root, { buf: seed, owned: false });
  for (let k = order.length - 1; k >= 0; k--) {
    const t = order[k];
    const slot = grads.get(t);
    if (!slot) continue;
    grads.delete(t);
    const fn = t.gradFn;
    if (!fn) {
      // A leaf: accumulate into .grad.
      if (!t.requiresGrad) continue;
      if (t.grad === null) t.grad = new Tensor(slot.owned ? slot.buf : slot.buf.slice(), t.shape);
      else backend.addInPlace(t.grad.values, slot.buf);
      continue;
    }
    const inGrads = fn.backward(slot.buf);
    for (let j = 0; j < fn.inputs.length; j++) {
      const inp = fn.inputs[j];
      const g = inGrads[j];
      if (!inp || !inp.requiresGrad || !g) continue;
      if (g.length !== inp.size) throw new Error(`internal error: ${fn.name} produced a gradient of ${g.length} values for an input of shape ${formatShape(inp.shape)}`);
      const prev = grads.get(inp);
      if (!prev) {
        grads.set(inp, { buf: g, owned: false });
      } else if (prev.owned) {
        backend.addInPlace(prev.buf, g);
      } else {
        grads.set(inp, { buf: backend.add(prev.buf, g), owned: true });
      }
    }
    if (!retainGraph) t.gradFn = null;
  }
}

// ---- constructors --------------------------------------------------------------------------

export interface TensorOptions {
  requiresGrad?: boolean;
}

/** Make a tensor from values (copied unless a Float32Array is given) and a shape. */
export function tensor(values: ArrayLike<number> | Float32Array, shape?: readonly number[], opts: TensorOptions = {}): Tensor {
  const v = values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>);
  return new Tensor(v, shape ?? [v.length], opts.requiresGrad ?? false);
}

export function zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  checkShape(shape, 'zeros');
  return new Tensor(new Float32Array(shapeSize(shape)), shape, opts.requiresGrad ?? false);
}

export function full(shape: readonly number[], value: number, opts: TensorOptions = {}): Tensor {
  checkShape(shape, 'full');
  return new Tensor(new Float32Array(shapeSize(shape)).fill(value), shape, opts.requiresGrad ?? false);
}

export function ones(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 1, opts);
}
