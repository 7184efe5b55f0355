// The layers of the classic convnets, with PyTorch's constructor arguments, default
// initialisation, parameter names and printed form.
import * as F from '../tensor/functional.js';
import { Generator, defaultGenerator } from '../tensor/random.js';
import { Parameter, Tensor, formatShape, full, zeros } from '../tensor/tensor.js';
import { Module, pyBool, pyFloat, pyTuple } from './module.js';

type IntPair = number | readonly [number, number];

function asPair(v: IntPair): [number, number] {
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
}

/** U(-bound, bound) parameter of the given shape. */
export function uniformParameter(shape: readonly number[], bound: number, gen: Generator = defaultGenerator): Parameter {
  let n = 1;
  for (const d of shape) n *= d;
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = gen.uniform(-bound, bound);
  return new Parameter(v, shape);
}

/**
 * PyTorch's default init for conv and linear layers: kaiming_uniform_(a=√5) for the weight,
 * which is U(-1/√fan_in, 1/√fan_in), and the same bound for the bias.
 */
function defaultBound(fanIn: number): number {
  return fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0;
}

export interface Conv2dOptions {
  stride?: IntPair;
  padding?: IntPair;
  groups?: number;
  bias?: boolean;
  generator?: Generator;
}

export class Conv2d extends Module {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernelSize: [number, number];
  readonly stride: [number, number];
  readonly padding: [number, number];
  readonly groups: number;
  weight: Parameter;
  bias: Parameter | null;

  constructor(inChannels: number, outChannels: number, kernelSize: IntPair, opts: Conv2dOptions = {}) {
    super();
    this.inChannels = inChannels;
    this.outChannels = outChannels;
    this.kernelSize = asPair(kernelSize);
    this.stride = asPair(opts.stride ?? 1);
    this.padding = asPair(opts.padding ?? 0);
    this.groups = opts.groups ?? 1;
    if (inChannels % this.groups !== 0) throw new Error(`Conv2d: in_channels (${inChannels}) must be divisible by groups (${this.groups})`);
    if (outChannels % this.groups !== 0) throw new Error(`Conv2d: out_channels (${outChannels}) must be divisible by groups (${this.groups})`);
    const [kh, kw] = this.kernelSize;
    const fanIn = (inChannels / this.groups) * kh * kw;
    const bound = defaultBound(fanIn);
    this.weight = uniformParameter([outChannels, inChannels / this.groups, kh, kw], bound, opts.generator);
    this.bias = opts.bias ?? true ? uniformParameter([outChannels], bound, opts.generator) : null;
  }

  forward(x: Tensor): Tensor {
    return F.conv2d(x, this.weight, this.bias, { stride: this.stride, padding: this.padding, groups: this.groups });
  }

  override extraRepr(): string {
    let s = `${this.inChannels}, ${this.outChannels}, kernel_size=${pyTuple(this.kernelSize)}, stride=${pyTuple(this.stride)}`;
    if (this.padding[0] !== 0 || this.padding[1] !== 0) s += `, padding=${pyTuple(this.padding)}`;
    if (this.groups !== 1) s += `, groups=${this.groups}`;
    if (!this.bias) s += ', bias=False';
    return s;
  }
}

export interface BatchNorm2dOptions {
  eps?: number;
  /** Weight of the batch statistic in the running average; null for a cumulative average. */
  momentum?: number | null;
  affine?: boolean;
  trackRunningStats?: boolean;
}

export class BatchNorm2d extends Module {
  readonly numFeatures: number;
  eps: number;
  momentum: number | null;
  readonly affine: boolean;
  readonly trackRunningStats: boolean;
  weight: Parameter | null;
  bias: Parameter | null;

  constructor(numFeatures: number, opts: BatchNorm2dOptions = {}) {
    super();
    this.numFeatures = numFeatures;
    this.eps = opts.eps ?? 1e-5;
    this.momentum = opts.momentum === undefined ? 0.1 : opts.momentum;
    this.affine = opts.affine ?? true;
    this.trackRunningStats = opts.trackRunningStats ?? true;
    this.weight = this.affine ? new Parameter(new Float32Array(numFeatures).fill(1), [numFeatures]) : null;
    this.bias = this.affine ? new Parameter(new Float32Array(numFeatures), [numFeatures]) : null;
    if (this.trackRunningStats) {
      this.registerBuffer('running_mean', zeros([numFeatures]));
      this.registerBuffer('running_var', full([numFeatures], 1));
      const nbt = zeros([]);
      nbt.dtype = 'int64';
      this.registerBuffer('num_batches_tracked', nbt);
    }
  }

  get runningMean(): Tensor | null {
    return this.trackRunningStats ? this.buffer('running_mean') : null;
  }

  get runningVar(): Tensor | null {
    return this.trackRunningStats ? this.buffer('running_var') : null;
  }

  get numBatchesTracked(): number {
    return this.trackRunningStats ? this.buffer('num_batches_tracked').values[0] : 0;
  }

  forward(x: Tensor): Tensor {
    if (x.ndim !== 4) throw new Error(`BatchNorm2d: expected 4-d input (N, C, H, W), got shape ${formatShape(x.shape)}`);
    if (x.shape[1] !== this.numFeatures) throw new Error(`BatchNorm2d: expected ${this.numFeatures} channels, got input of shape ${formatShape(x.shape)}`);
    const useBatchStats = this.training || !this.trackRunningStats;
    let factor = 0;
    if (this.training && this.trackRunningStats) {
      const nbt = this.buffer('num_batches_tracked');
      nbt.values[0] += 1;
      factor = this.momentum === null ? 1 / nbt.values[0] : this.momentum;
    }
    return F.batchNorm(x, this.runningMean, this.runningVar, this.weight, this.bias, { training: useBatchStats, momentum: factor, eps: this.eps });
  }

  override extraRepr(): string {
    return `${this.numFeatures}, eps=${pyFloat(this.eps)}, momentum=${this.momentum === null ? 'None' : pyFloat(this.momentum)}, affine=${pyBool(this.affine)}, track_running_stats=${pyBool(this.trackRunningStats)}`;
  }
}

export class Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  weight: Parameter;
  bias: Parameter | null;

  constructor(inFeatures: number, outFeatures: number, opts: { bias?: boolean; generator?: Generator } = {}) {
    super();
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    const bound = defaultBound(inFeatures);
    this.weight = uniformParameter([outFeatures, inFeatures], bound, opts.generator);
    this.bias = opts.bias ?? true ? uniformParameter([outFeatures], bound, opts.generator) : null;
  }

  forward(x: Tensor): Tensor {
    return F.linear(x, this.weight, this.bias);
  }

  override extraRepr(): string {
    return `in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${pyBool(this.bias !== null)}`;
  }
}

export class ReLU extends Module {
  constructor(readonly inplace = false) {
    super();
  }
  forward(x: Tensor): Tensor {
    return F.relu(x);
  }
  override extraRepr(): string {
    return this.inplace ? 'inplace=True' : '';
  }
}

export class ReLU6 extends Module {
  constructor(readonly inplace = false) {
    super();
  }
  forward(x: Tensor): Tensor {
    return F.relu6(x);
  }
  override extraRepr(): string {
    return this.inplace ? 'inplace=True' : '';
  }
}

export class Identity extends Module {
  forward(x: Tensor): Tensor {
    return x;
  }
}

export class Flatten extends Module {
  constructor(readonly startDim = 1, readonly endDim = -1) {
    super();
  }
  forward(x: Tensor): Tensor {
    return x.flatten(this.startDim, this.endDim);
  }
  override extraRepr(): string {
    return `start_dim=${this.startDim}, end_dim=${this.endDim}`;
  }
}

export class Dropout extends Module {
  constructor(readonly p = 0.5, readonly inplace = false, readonly generator: Generator = defaultGenerator) {
    super();
    if (!(p >= 0 && p <= 1)) throw new Error(`Dropout: probability must be in [0, 1], got ${p}`);
  }
  forward(x: Tensor): Tensor {
    return F.dropout(x, this.p, this.training, this.generator);
  }
  override extraRepr(): string {
    return `p=${pyFloat(this.p)}, inplace=${pyBool(this.inplace)}`;
  }
}

export class AdaptiveAvgPool2d extends Module {
  constructor(readonly outputSize: IntPair) {
    super();
  }
  forward(x: Tensor): Tensor {
    return F.adaptiveAvgPool2d(x, this.outputSize);
  }
  override extraRepr(): string {
    return `output_size=${typeof this.outputSize === 'number' ? this.outputSize : pyTuple(this.outputSize)}`;
  }
}

export class MaxPool2d extends Module {
  readonly stride: IntPair;
  readonly padding: IntPair;
  constructor(readonly kernelSize: IntPair, opts: { stride?: IntPair; padding?: IntPair } = {}) {
    super();
    this.stride = opts.stride ?? kernelSize;
    this.padding = opts.padding ?? 0;
  }
  forward(x: Tensor): Tensor {
    return F.maxPool2d(x, this.kernelSize, { stride: this.stride, padding: this.padding });
  }
  override extraRepr(): string {
    const f = (v: IntPair): string => (typeof v === 'number' ? String(v) : pyTuple(v));
    return `kernel_size=${f(this.kernelSize)}, stride=${f(this.stride)}, padding=${f(this.padding)}, dilation=1, ceil_mode=False`;
  }
}

/** A chain of modules, named '0', '1', … like torch.nn.Sequential. */
export class Sequential extends Module {
  private readonly list: Module[];

  constructor(...modules: Module[]) {
    super();
    this.list = modules;
  }

  override namedChildren(): [string, Module][] {
    return this.list.map((m, i) => [String(i), m]);
  }

  get length(): number {
    return this.list.length;
  }

  at(i: number): Module {
    const m = this.list[i < 0 ? this.list.length + i : i];
    if (!m) throw new Error(`Sequential: index ${i} out of range for ${this.list.length} modules`);
    return m;
  }

  /** Replace the i-th module (e.g. a classifier head for fine-tuning). */
  set(i: number, m: Module): void {
    if (i < 0 || i >= this.list.length) throw new Error(`Sequential: index ${i} out of range for ${this.list.length} modules`);
    this.list[i] = m;
  }

  forward(x: Tensor): Tensor {
    for (const m of this.list) x = m.forward(x);
    return x;
  }
}
