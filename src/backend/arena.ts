// Output buffers of the backend kernels, and the opt-in *step arena* that recycles them.
//
// Every kernel returns a fresh output buffer. Outside an arena these are ordinary allocations
// reclaimed by the garbage collector (what user code sees: no dispose(), ever). A training step
// allocates gigabytes of them, though, and V8 pays for that external memory with hundreds of
// collections per step on the JS thread. Inside `withArena(fn)` the outputs handed out are
// recorded, and when `fn` returns they go back to a size-keyed pool that the next step draws
// from: after the first step no output memory is allocated at all, and memory stays flat.
//
// Rules (enforced, not just documented):
//   - A tensor whose storage came from an arena must not be used after the arena ended: reading
//     its values (or running backward through it) throws. Keep plain numbers, or clone().
//   - Leaf gradients (`param.grad`) written by a backward pass inside an arena live in a
//     persistent per-leaf buffer (reused by the next backward once zeroGrad dropped the grad).
//   - A tensor the caller must keep can be taken out of the arena with `keep(t)` (tensor.ts).
//   - Inside an arena, inference (no graph) fuses convolution + batch norm + add + activation,
//     computing a convolution only when its output is read: do not modify a tensor's values in
//     place while a result computed from it may still be pending (nothing in the library does).
// With CONVNETS_ARENA_DEBUG=1 (or setArenaDebug(true)) recycled buffers are filled with NaN,
// so any use that slipped past the checks shows up as NaN instead of silently wrong numbers.
import type { F32 } from './backend.js';

/** Outputs smaller than this are plain allocations (zero-filled, cheap, never pooled). */
const POOL_MIN = 64;
/** Outputs at least this large skip zero-filling (kernels overwrite every element). */
const UNINIT_MIN = 4096;

/** A step arena. Internal: the public surface is withArena() and the Tensor checks. */
export class ArenaScope {
  /** Buffers handed out in this scope and not yet recycled: the view given out -> its pooled base. */
  readonly handed = new Map<F32, F32>();
  closed = false;
  readonly id: number;
  constructor(id: number) {
    this.id = id;
  }
  owns(b: F32): boolean {
    return this.handed.has(b);
  }
}

let current: ArenaScope | null = null;
let nextId = 1;
let debug = process.env.CONVNETS_ARENA_DEBUG === '1';

interface PoolEntry {
  buf: F32;
  lastUsed: number; // id of the last scope that took it
}
// Free buffers by exact capacity, and the sorted list of capacities that have any.
const pool = new Map<number, PoolEntry[]>();
let capacities: number[] = [];
let pooledFloats = 0;
let freshInArena = 0;
/**
 * Free buffers unused for this many arenas are dropped (one-off sizes). Large enough that an
 * evaluation pass between two training epochs (an arena per batch) does not drop the training
 * step's buffers.
 */
const KEEP_SCOPES = 256;

/**
 * Reports the address of a typed array's first element modulo 64, when a backend can tell
 * (native: SIMD loads that straddle two cache lines cost twice, so large buffers start on a
 * cache line). Null: no alignment beyond the allocator's.
 */
let addressMod64: ((a: F32) => number) | null = null;
export function setAddressProbe(probe: ((a: F32) => number) | null): void {
  addressMod64 = probe;
}

/**
 * Asks the operating system to back a buffer with huge pages, where a backend can (native on
 * Linux: madvise). Kernels that walk a tensor plane by plane touch a new 4 KB page per plane
 * at 32x32; with 2 MB pages those walks stop missing the TLB. Only large buffers, before their
 * first touch. CONVNETS_HUGE_PAGES=0 turns it off.
 */
let adviseHuge: ((a: F32) => boolean) | null = null;
const HUGE_MIN = 1 << 20; // floats (4 MB)
export function setHugePageAdvisor(advise: ((a: F32) => boolean) | null): ((a: F32) => boolean) | null {
  const prev = adviseHuge;
  adviseHuge = process.env.CONVNETS_HUGE_PAGES === '0' ? null : advise;
  return prev;
}

function fresh(n: number): F32 {
  const a = freshUnadvised(n);
  if (adviseHuge !== null && n >= HUGE_MIN) adviseHuge(a);
  return a;
}

function freshUnadvised(n: number): F32 {
  if (n < UNINIT_MIN) return new Float32Array(n);
  // Uninitialised memory (Buffer.allocUnsafeSlow: not pooled by Node, so the Float32Array
  // owns its whole ArrayBuffer), starting on a 64-byte boundary where the backend can tell.
  if (addressMod64 !== null) {
    const b = Buffer.allocUnsafeSlow(n * 4 + 64);
    const mis = addressMod64(new Float32Array(b.buffer, b.byteOffset, 1));
    if (mis % 4 === 0) return new Float32Array(b.buffer, b.byteOffset + ((64 - mis) % 64), n);
  }
  const b = Buffer.allocUnsafeSlow(n * 4);
  return new Float32Array(b.buffer, b.byteOffset, n);
}

function insertCapacity(cap: number): void {
  let lo = 0;
  let hi = capacities.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (capacities[mid] < cap) lo = mid + 1;
    else hi = mid;
  }
  if (capacities[lo] !== cap) capacities.splice(lo, 0, cap);
}

function putBack(base: F32, scopeId: number): void {
  if (debug) base.fill(NaN);
  let list = pool.get(base.length);
  if (!list) {
    list = [];
    pool.set(base.length, list);
    insertCapacity(base.length);
  }
  list.push({ buf: base, lastUsed: scopeId });
  pooledFloats += base.length;
}

/** The smallest free buffer of capacity in [n, 2n), or null. */
function take(n: number): F32 | null {
  let lo = 0;
  let hi = capacities.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (capacities[mid] < n) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < capacities.length && capacities[i] < 2 * n; i++) {
    const list = pool.get(capacities[i])!;
    const e = list.pop();
    if (!e) continue;
    pooledFloats -= e.buf.length;
    return e.buf;
  }
  return null;
}

/**
 * A buffer of n floats for a kernel output (contents unspecified: the kernel overwrites it).
 * Inside an arena it comes from the pool and is recorded; outside it is a plain allocation.
 */
export function allocOutput(n: number): F32 {
  const s = current;
  if (s === null || n < POOL_MIN) return fresh(n);
  let base = take(n);
  if (base === null) {
    base = fresh(n);
    freshInArena++;
  }
  const view = base.length === n ? base : base.subarray(0, n);
  s.handed.set(view, base);
  return view;
}

/** The active arena, or null. */
export function currentArena(): ArenaScope | null {
  return current;
}

/** The active arena if `b` was handed out by it (so a tensor over `b` belongs to it), else null. */
export function arenaOf(b: F32): ArenaScope | null {
  const s = current;
  return s !== null && s.handed.has(b) ? s : null;
}

/**
 * Give a buffer back before the arena ends, when the caller knows nothing references it any
 * more (the autograd engine does this for intermediate gradients). No-op for other buffers.
 */
export function releaseOutput(b: F32): void {
  const s = current;
  if (s === null) return;
  const base = s.handed.get(b);
  if (base === undefined) return;
  s.handed.delete(b);
  putBack(base, s.id);
}

/** Take a buffer out of the arena: it will not be recycled (the garbage collector owns it). */
export function escape(b: F32): void {
  current?.handed.delete(b);
}

/**
 * Run `fn` inside a step arena: kernel outputs allocated during `fn` are recycled when it
 * returns (or throws). Nested calls join the outer arena. Tensors created inside must not be
 * used afterwards (this throws); read plain numbers out of them before returning.
 */
export function withArena<T>(fn: () => T): T {
  const s = beginArena();
  try {
    return fn();
  } finally {
    endArena(s);
  }
}

/**
 * Start an arena explicitly (for code that cannot be one function, e.g. the body of a loop over
 * an async iterator). Returns null when an arena is already active (the caller joins it);
 * pass the result to endArena(). Everything allocated in between, by anyone, is recycled.
 */
export function beginArena(): ArenaScope | null {
  if (current !== null) return null;
  current = new ArenaScope(nextId++);
  return current;
}

/** End an arena started by beginArena() (null: it joined an outer one, nothing to do). */
export function endArena(s: ArenaScope | null): void {
  if (s === null) return;
  if (current !== s) throw new Error('endArena: arenas must end in the order they began');
  current = null;
  s.closed = true;
  for (const base of s.handed.values()) putBack(base, s.id);
  s.handed.clear();
  trim(s.id);
}

function trim(scopeId: number): void {
  if (scopeId % 16 !== 0) return;
  let changed = false;
  for (const [cap, list] of pool) {
    const keep = list.filter((e) => scopeId - e.lastUsed < KEEP_SCOPES);
    if (keep.length !== list.length) {
      for (const e of list) if (scopeId - e.lastUsed >= KEEP_SCOPES) pooledFloats -= e.buf.length;
      if (keep.length === 0) {
        pool.delete(cap);
        changed = true;
      } else pool.set(cap, keep);
    }
  }
  if (changed) capacities = [...pool.keys()].sort((a, b) => a - b);
}

/** Drop every pooled buffer (memory goes back to the garbage collector). */
export function clearArenaPool(): void {
  pool.clear();
  capacities = [];
  pooledFloats = 0;
}

/** Bytes held by the pool (free buffers waiting for the next arena). */
export function arenaPoolBytes(): number {
  return pooledFloats * 4;
}

/** Counters: buffers newly allocated inside arenas (flat once the pool is warm), pooled bytes. */
export function arenaStats(): { freshAllocations: number; pooledBytes: number } {
  return { freshAllocations: freshInArena, pooledBytes: pooledFloats * 4 };
}

/** Poison recycled buffers with NaN (tests, debugging). Returns the previous setting. */
export function setArenaDebug(on: boolean): boolean {
  const prev = debug;
  debug = on;
  return prev;
}
