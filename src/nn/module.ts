// nn.Module: the base of every layer and model, with PyTorch's naming, state dicts and repr.
//
// Children and parameters are discovered from the module's own properties, in the order they
// were assigned (as PyTorch's __setattr__ registers them), so a model written like its PyTorch
// twin gets the same state-dict keys. Buffers are registered explicitly with their PyTorch names.
import { Parameter, Tensor, formatShape } from '../tensor/tensor.js';

export type StateDict = Map<string, Tensor>;
export type StateDictLike = Map<string, Tensor> | Record<string, Tensor>;

export interface LoadResult {
  missingKeys: string[];
  unexpectedKeys: string[];
  mismatchedKeys: { key: string; expected: readonly number[]; got: readonly number[] }[];
}

export abstract class Module {
  training = true;
  private readonly buffersByName = new Map<string, Tensor>();
  /** The class name shown by toString() (PyTorch's _get_name()). */
  protected displayName?: string;

  abstract forward(...inputs: Tensor[]): Tensor;

  /** Direct children, in registration order. */
  namedChildren(): [string, Module][] {
    return Object.entries(this).filter((e): e is [string, Module] => e[1] instanceof Module);
  }

  children(): Module[] {
    return this.namedChildren().map((e) => e[1]);
  }

  /** This module's own parameters (not its children's), in registration order. */
  protected ownParameters(): [string, Parameter][] {
    return Object.entries(this).filter((e): e is [string, Parameter] => e[1] instanceof Parameter);
  }

  protected registerBuffer(name: string, t: Tensor): void {
    this.buffersByName.set(name, t);
  }

  protected buffer(name: string): Tensor {
    const b = this.buffersByName.get(name);
    if (!b) throw new Error(`${this.name()}: no buffer named ${name}`);
    return b;
  }

  /** Every module in the tree with its dotted name ('' for this one), depth first. */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [k, m] of this.namedChildren()) out.push(...m.namedModules(prefix ? `${prefix}.${k}` : k));
    return out;
  }

  modules(): Module[] {
    return this.namedModules().map((e) => e[1]);
  }

  namedParameters(prefix = ''): [string, Parameter][] {
    const out: [string, Parameter][] = [];
    const seen = new Set<Tensor>();
    for (const [mname, m] of this.namedModules(prefix)) {
      for (const [k, p] of m.ownParameters()) {
        if (seen.has(p)) continue;
        seen.add(p);
        out.push([mname ? `${mname}.${k}` : k, p]);
      }
    }
    return out;
  }

  parameters(): Parameter[] {
    return this.namedParameters().map((e) => e[1]);
  }

  namedBuffers(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [mname, m] of this.namedModules(prefix)) {
      for (const [k, b] of m.buffersByName) out.push([mname ? `${mname}.${k}` : k, b]);
    }
    return out;
  }

  /** Number of parameter elements (all, or only trainable ones). */
  numParameters(onlyTrainable = false): number {
    let n = 0;
    for (const p of this.parameters()) if (!onlyTrainable || p.requiresGrad) n += p.size;
    return n;
  }

  /**
   * The state dict, keyed as PyTorch keys it: for each module depth first, its parameters then
   * its buffers. Tensors share storage with the module (like PyTorch's state_dict()).
   */
  stateDict(): StateDict {
    const sd: StateDict = new Map();
    const walk = (m: Module, prefix: string): void => {
      for (const [k, p] of m.ownParameters()) sd.set(prefix + k, p);
      for (const [k, b] of m.buffersByName) sd.set(prefix + k, b);
      for (const [k, c] of m.namedChildren()) walk(c, `${prefix}${k}.`);
    };
    walk(this, '');
    return sd;
  }

  /**
   * Copy values from a state dict into this module's parameters and buffers. Strict (the
   * default) requires exactly the same keys and shapes and changes nothing otherwise; with
   * `strict: false` matching entries are loaded and the rest is reported.
   */
  loadStateDict(state: StateDictLike, opts: { strict?: boolean; source?: string } = {}): LoadResult {
    const strict = opts.strict ?? true;
    const src = state instanceof Map ? state : new Map(Object.entries(state));
    const own = this.stateDict();
    const res: LoadResult = { missingKeys: [], unexpectedKeys: [], mismatchedKeys: [] };
    for (const [k, t] of own) {
      const s = src.get(k);
      if (!s) res.missingKeys.push(k);
      else if (s.size !== t.size || s.ndim !== t.ndim || s.shape.some((d, i) => d !== t.shape[i])) res.mismatchedKeys.push({ key: k, expected: t.shape, got: s.shape });
    }
    for (const k of src.keys()) if (!own.has(k)) res.unexpectedKeys.push(k);
    if (strict && (res.missingKeys.length || res.unexpectedKeys.length || res.mismatchedKeys.length)) {
      throw new Error(`${opts.source ? opts.source + ': ' : ''}loadStateDict(${this.name()}): ${describeLoadProblems(res)}`);
    }
    const bad = new Set([...res.missingKeys, ...res.mismatchedKeys.map((m) => m.key)]);
    const todo = [...own].filter(([k]) => !bad.has(k));
    // Validate everything before changing anything.
    for (const [k] of todo) {
      const v = src.get(k)!.values;
      for (let i = 0; i < v.length; i++) {
        if (!Number.isFinite(v[i])) throw new Error(`${opts.source ? opts.source + ': ' : ''}loadStateDict: ${k} contains non-finite values (NaN or Inf)`);
      }
    }
    for (const [k, t] of todo) t.values.set(src.get(k)!.values);
    return res;
  }

  /** Set training mode (batch statistics in BatchNorm, active dropout) on the whole tree. */
  train(mode = true): this {
    for (const m of this.modules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Enable or disable gradients for every parameter (e.g. to freeze a backbone). */
  requiresGrad(flag = true): this {
    for (const p of this.parameters()) p.requiresGrad = flag;
    return this;
  }

  zeroGrad(): void {
    for (const p of this.parameters()) p.grad = null;
  }

  apply(fn: (m: Module) => void): this {
    for (const m of this.modules()) fn(m);
    return this;
  }

  name(): string {
    return this.displayName ?? this.constructor.name;
  }

  /** The layer's arguments as PyTorch's extra_repr() prints them. */
  extraRepr(): string {
    return '';
  }

  /** The module tree exactly as PyTorch's print(net) formats it. */
  toString(): string {
    const extra = this.extraRepr();
    const extraLines = extra ? extra.split('\n') : [];
    const childLines = this.namedChildren().map(([k, m]) => `(${k}): ${addIndent(m.toString(), 2)}`);
    const lines = [...extraLines, ...childLines];
    let s = `${this.name()}(`;
    if (lines.length) {
      if (extraLines.length === 1 && childLines.length === 0) s += extraLines[0];
      else s += '\n  ' + lines.join('\n  ') + '\n';
    }
    return s + ')';
  }
}

function addIndent(s: string, n: number): string {
  const lines = s.split('\n');
  if (lines.length === 1) return s;
  const pad = ' '.repeat(n);
  return [lines[0], ...lines.slice(1).map((l) => pad + l)].join('\n');
}

function listSome(items: string[], max = 5): string {
  return items.slice(0, max).join(', ') + (items.length > max ? `, … and ${items.length - max} more` : '');
}

export function describeLoadProblems(r: LoadResult): string {
  const parts: string[] = [];
  const plural = (n: number, w: string): string => `${n} ${w}${n === 1 ? '' : 's'}`;
  if (r.missingKeys.length) parts.push(`${plural(r.missingKeys.length, 'missing key')} (${listSome(r.missingKeys)})`);
  if (r.unexpectedKeys.length) parts.push(`${plural(r.unexpectedKeys.length, 'unexpected key')} (${listSome(r.unexpectedKeys)})`);
  if (r.mismatchedKeys.length) {
    parts.push(`${plural(r.mismatchedKeys.length, 'shape mismatch')} (${listSome(r.mismatchedKeys.map((m) => `${m.key}: checkpoint ${formatShape(m.got)} vs model ${formatShape(m.expected)}`))})`);
  }
  return parts.join('; ') || 'no problems';
}

/** Python's repr of a float, as PyTorch prints layer arguments (1e-05, 0.1, 1.0). */
export function pyFloat(x: number): string {
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return x.toFixed(1);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-4 || a >= 1e16)) {
    const [m, e] = x.toExponential().split('e');
    const sign = e[0] === '-' ? '-' : '+';
    const digits = e.replace(/^[-+]/, '').padStart(2, '0');
    return `${m}e${sign}${digits}`;
  }
  return String(x);
}

export function pyBool(b: boolean): string {
  return b ? 'True' : 'False';
}

export function pyTuple(v: readonly number[]): string {
  return v.length === 1 ? `(${v[0]},)` : `(${v.join(', ')})`;
}
