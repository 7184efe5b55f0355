// Tensor and the autograd engine (define-by-run), in one place.
//
// A Tensor is a float32 buffer with a shape. Operations on tensors (src/tensor/functional.ts)
// record a GradFn on their output when any input requires grad; `backward()` walks these
// records in reverse topological order and accumulates gradients into the leaves' `.grad`.
// After a backward pass the graph is released (like PyTorch without retain_graph), so memory
// is reclaimed by the garbage collector: an ordinary training loop never calls dispose().
// Optionally a step runs inside a step arena (backend/arena.ts, used by the trainer), which
// recycles the kernels' output buffers for the next step instead; intermediate gradients are
// handed back to it as soon as backward has consumed them.
import { getBackend } from '../backend/registry.js';
import type { Act, F32 } from '../backend/backend.js';
import { arenaOf, currentArena, escape, releaseOutput, type ArenaScope } from '../backend/arena.js';

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
  /**
   * Fusion (internal): an activation whose forward was fused with the batch norm feeding it
   * sets `act`; that batch norm's record has `backwardAct`, its backward through the activation
   * given the activation output's gradient. The engine uses it when the batch norm's output has
   * no other consumer, skipping the activation's own backward pass.
   */
  readonly act?: Act;
  backwardAct?(gy: F32, act: Act): (F32 | null)[];
  /**
   * Fusion (internal): that batch norm's backward through the activation leaving its input's
   * gradient to the operation that produced the input, which computes it while reading (when
   * nothing else consumes the input and that operation's record has `backwardDeferred`):
   * `grads` for the inputs (the first null) and `t`, what the producer needs; null when not
   * possible this time (then backwardAct runs).
   */
  backwardActDeferred?(gy: F32, act: Act): { grads: (F32 | null)[]; t: unknown } | null;
  /** The producer's side: its backward given gy and t from the batch norm's backwardActDeferred. */
  backwardDeferred?(gy: F32, t: unknown): (F32 | null)[];
}

/**
 * Values computed on first read (internal). Ops use it to fuse: e.g. batch norm returns a
 * tensor whose normalisation is still pending, and a following ReLU computes both in one pass
 * without ever materialising the batch norm's output. Reading `values` materialises it, so a
 * pending tensor behaves exactly like a computed one.
 */
export interface PendingValues {
  readonly kind: string;
  compute(): F32;
}

/** Placeholder storage of a pending tensor. */
const PENDING = new Float32Array(0);

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
  private _values: F32;
  /** Pending computation of the values (internal, see PendingValues), or null once computed. */
  _pending: PendingValues | null = null;
  /** The step arena that owns the storage (internal, see backend/arena.ts), or null. */
  _arena: ArenaScope | null;
  requiresGrad: boolean;
  grad: Tensor | null = null;
  gradFn: GradFn | null = null;
  /** Element type for serialisation. Values are always held as float32; 'int64' marks counters
   *  such as BatchNorm's num_batches_tracked (exact up to 2^24). */
  dtype: 'float32' | 'int64' = 'float32';

  constructor(values: F32, shape: readonly number[], requiresGrad = false) {
    checkShape(shape, 'tensor');
    const size = shapeSize(shape);
    if (values !== PENDING && values.length !== size) {
      throw new Error(`tensor: ${values.length} values do not fit shape ${formatShape(shape)} (${size} elements)`);
    }
    this._values = values;
    this._arena = values === PENDING ? currentArena() : arenaOf(values);
    this.shape = Object.freeze([...shape]);
    this.size = size;
    this.requiresGrad = requiresGrad;
  }

  /** The storage. Backends read and write it directly; users read it through data()/dataSync(). */
  get values(): F32 {
    if (this._arena !== null && this._arena.closed) staleArena(this);
    if (this._pending !== null) this.materialize();
    return this._values;
  }

  set values(v: F32) {
    if (v.length !== this.size) throw new Error(`tensor: ${v.length} values do not fit shape ${formatShape(this.shape)}`);
    this._values = v;
    this._pending = null;
    this._arena = arenaOf(v);
  }

  private materialize(): void {
    const p = this._pending!;
    const v = p.compute();
    if (v.length !== this.size) throw new Error(`internal error: pending ${p.kind} produced ${v.length} values for shape ${formatShape(this.shape)}`);
    this._values = v;
    this._pending = null;
    if (this._arena === null) this._arena = arenaOf(v);
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

/** A tensor whose values are computed on first read (internal, for fused ops). */
export function pendingTensor(shape: readonly number[], pending: PendingValues, requiresGrad: boolean): Tensor {
  const t = new Tensor(PENDING, shape, requiresGrad);
  t._pending = pending;
  return t;
}

/**
 * Keep a tensor computed inside a step arena (withArena) beyond it: its storage is taken out of
 * the arena and left to the garbage collector. Returns the tensor.
 */
export function keep(t: Tensor): Tensor {
  const v = t.values;
  escape(v);
  t._arena = null;
  return t;
}

function staleArena(t: Tensor): never {
  throw new Error(
    `tensor of shape ${formatShape(t.shape)} used after the step arena it was computed in ended (withArena): ` +
      'its memory has been recycled; read the numbers you need inside the arena, or clone() the tensor there',
  );
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
  act: Act; // non-zero: buf is the gradient of an activation fused into this node's batch norm
  deferred?: unknown; // set: buf and this come from a batch norm's backwardActDeferred (see GradFn)
}

/** Persistent storage of leaf gradients written inside a step arena (reused step after step). */
const leafGradStore = new WeakMap<Tensor, F32>();

function leafGradBuffer(t: Tensor): F32 {
  let b = leafGradStore.get(t);
  if (b === undefined || b.length !== t.size) {
    b = new Float32Array(t.size);
    leafGradStore.set(t, b);
  }
  return b;
}

function runBackward(root: Tensor, seed: F32, retainGraph: boolean): void {
  // Topological order by iterative depth-first search over GradFn inputs; consumers counts the
  // graph edges into each tensor.
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const consumers = new Map<Tensor, number>();
  const stack: [Tensor, number][] = [[root, 0]];
  visited.add(root);
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    const inputs = t.gradFn ? t.gradFn.inputs : [];
    if (i < inputs.length) {
      top[1] = i + 1;
      const child = inputs[i];
      if (child && child.requiresGrad) {
        consumers.set(child, (consumers.get(child) ?? 0) + 1);
        if (!visited.has(child)) {
          visited.add(child);
          stack.push([child, 0]);
        }
      }
    } else {
      stack.pop();
      order.push(t);
    }
  }
  for (const t of order) if (t._arena !== null && t._arena.closed) staleArena(t);

  // Intermediate gradients are released (to the step arena, if one is active) as soon as no
  // slot holds them any more; refs counts the slots holding each buffer.
  const refs = new Map<F32, number>();
  const hold = (b: F32): void => {
    refs.set(b, (refs.get(b) ?? 0) + 1);
  };
  const drop = (b: F32): void => {
    const r = (refs.get(b) ?? 0) - 1;
    if (r > 0) {
      refs.set(b, r);
      return;
    }
    refs.delete(b);
    if (b !== seed) releaseOutput(b);
  };

  const backend = getBackend();
  const inArena = currentArena() !== null;
  const grads = new Map<Tensor, GradSlot>();
  grads.set(root, { buf: seed, owned: false, act: 0 });
  hold(seed);
  for (let k = order.length - 1; k >= 0; k--) {
    const t = order[k];
    const slot = grads.get(t);
    if (!slot) continue;
    grads.delete(t);
    const fn = t.gradFn;
    if (!fn) {
      // A leaf: accumulate into .grad.
      if (t.requiresGrad) {
        if (t.grad !== null) backend.addInPlace(t.grad.values, slot.buf);
        else if (inArena) {
          const b = leafGradBuffer(t);
          b.set(slot.buf);
          t.grad = new Tensor(b, t.shape);
        } else t.grad = new Tensor(slot.owned ? slot.buf : slot.buf.slice(), t.shape);
      }
      drop(slot.buf);
      continue;
    }
    if (fn.act && slot.act === 0) {
      // An activation fused with the batch norm before it: when nothing else consumes the batch
      // norm's output, hand this gradient straight to the batch norm's fused backward.
      const u = fn.inputs[0];
      if (u && u.requiresGrad && u.gradFn && u.gradFn.backwardAct && consumers.get(u) === 1 && !grads.has(u)) {
        grads.set(u, { buf: slot.buf, owned: slot.owned, act: fn.act });
        if (!retainGraph) t.gradFn = null;
        continue;
      }
    }
    // A batch norm whose input's gradient its producer can compute while reading: hand it over.
    let inGrads: (F32 | null)[] | null = null;
    let moved = false;
    if (slot.act !== 0 && fn.backwardActDeferred) {
      const v = fn.inputs[0];
      if (v && v.requiresGrad && v.gradFn && v.gradFn.backwardDeferred && consumers.get(v) === 1 && !grads.has(v)) {
        const r = fn.backwardActDeferred(slot.buf, slot.act);
        if (r !== null) {
          grads.set(v, { buf: slot.buf, owned: slot.owned, act: 0, deferred: r.t });
          inGrads = r.grads;
          moved = true;
        }
      }
    }
    if (inGrads === null) {
      inGrads = slot.deferred !== undefined ? fn.backwardDeferred!(slot.buf, slot.deferred) : slot.act !== 0 ? fn.backwardAct!(slot.buf, slot.act) : fn.backward(slot.buf);
    }
    const unused: F32[] = [];
    for (let j = 0; j < fn.inputs.length; j++) {
      const inp = fn.inputs[j];
      const g = inGrads[j];
      if (!g) continue;
      if (!inp || !inp.requiresGrad) {
        unused.push(g);
        continue;
      }
      if (g.length !== inp.size) throw new Error(`internal error: ${fn.name} produced a gradient of ${g.length} values for an input of shape ${formatShape(inp.shape)}`);
      const prev = grads.get(inp);
      if (!prev) {
        grads.set(inp, { buf: g, owned: false, act: 0 });
        hold(g);
      } else if (prev.owned) {
        backend.addInPlace(prev.buf, g);
        unused.push(g);
      } else {
        const sum = backend.add(prev.buf, g);
        grads.set(inp, { buf: sum, owned: true, act: 0 });
        hold(sum);
        drop(prev.buf);
        unused.push(g);
      }
    }
    if (!moved) drop(slot.buf);
    for (const g of unused) if (!refs.has(g) && g !== seed) releaseOutput(g);
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
