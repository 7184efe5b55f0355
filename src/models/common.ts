// Helpers shared by the model definitions.
import { Tensor, formatShape } from '../tensor/tensor.js';
import { Generator, defaultGenerator } from '../tensor/random.js';
import type { Module } from '../nn/module.js';
import { BatchNorm2d, Conv2d, Linear } from '../nn/layers.js';

/** Check a model input is (N, channels, H, W) with H, W ≥ minSize; one-line error otherwise. */
export function checkImageInput(model: string, x: Tensor, channels = 3, minSize = 1): void {
  if (x.ndim !== 4 || x.shape[1] !== channels || x.shape[0] < 1) {
    throw new Error(`${model}.forward: expected input of shape [N, ${channels}, H, W], got ${formatShape(x.shape)}`);
  }
  if (x.shape[2] < minSize || x.shape[3] < minSize) {
    throw new Error(`${model}.forward: input ${formatShape(x.shape)} is too small; this model needs H and W of at least ${minSize}`);
  }
}

/**
 * torchvision's `_make_divisible`: round `v` to the nearest multiple of `divisor` (at least
 * `minValue`), never going more than 10 % below `v`. Used for MobileNetV2 channel counts.
 */
export function makeDivisible(v: number, divisor = 8, minValue?: number): number {
  const min = minValue ?? divisor;
  let n = Math.max(min, Math.floor(Math.trunc(v + divisor / 2) / divisor) * divisor);
  if (n < 0.9 * v) n += divisor;
  return n;
}

/** Fill with N(mean, std²) draws from `gen` (Box-Muller, both values of each pair used). */
export function fillNormal(values: Float32Array, mean: number, std: number, gen: Generator = defaultGenerator): void {
  for (let i = 0; i < values.length; i += 2) {
    let u1 = gen.random();
    while (u1 === 0) u1 = gen.random();
    const u2 = gen.random();
    const r = Math.sqrt(-2 * Math.log(u1));
    values[i] = mean + std * r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < values.length) values[i + 1] = mean + std * r * Math.sin(2 * Math.PI * u2);
  }
}

/** kaiming_normal_(w, mode='fan_out', nonlinearity='relu'): N(0, 2 / fan_out), fan_out = O·kh·kw. */
export function kaimingNormalFanOut(w: Tensor, gen: Generator = defaultGenerator): void {
  let receptive = 1;
  for (let d = 2; d < w.ndim; d++) receptive *= w.shape[d];
  const fanOut = w.shape[0] * receptive;
  fillNormal(w.values, 0, Math.sqrt(2 / fanOut), gen);
}

/**
 * torchvision's weight initialisation, applied to every module of `net` in order: convs
 * kaiming_normal (fan_out, ReLU gain) with zero bias, BatchNorm weight 1 / bias 0, and
 * Linear either left at PyTorch's default (ResNet) or N(0, 0.01) with zero bias (MobileNetV2).
 */
export function initTorchvision(net: Module, opts: { linear: 'default' | 'normal'; generator?: Generator }): void {
  const gen = opts.generator ?? defaultGenerator;
  for (const m of net.modules()) {
    if (m instanceof Conv2d) {
      kaimingNormalFanOut(m.weight, gen);
      if (m.bias) m.bias.values.fill(0);
    } else if (m instanceof BatchNorm2d) {
      m.weight?.values.fill(1);
      m.bias?.values.fill(0);
    } else if (m instanceof Linear && opts.linear === 'normal') {
      fillNormal(m.weight.values, 0, 0.01, gen);
      m.bias?.values.fill(0);
    }
  }
}

/** Width multiplier from the options (`widthMult` or its paper name `alpha`), validated. */
export function widthOption(model: string, opts: { widthMult?: number; alpha?: number }): number {
  if (opts.widthMult !== undefined && opts.alpha !== undefined && opts.widthMult !== opts.alpha) {
    throw new Error(`${model}: widthMult (${opts.widthMult}) and alpha (${opts.alpha}) are the same option; give one`);
  }
  const w = opts.widthMult ?? opts.alpha ?? 1;
  if (!(typeof w === 'number' && Number.isFinite(w) && w > 0 && w <= 4)) throw new Error(`${model}: width multiplier must be a number in (0, 4], got ${w}`);
  return w;
}

/** Dropout probability from the options, validated (0 = no dropout layer). */
export function dropoutOption(model: string, p: number | undefined, dflt: number): number {
  const v = p ?? dflt;
  if (!(typeof v === 'number' && v >= 0 && v < 1)) throw new Error(`${model}: dropout must be a probability in [0, 1), got ${v}`);
  return v;
}
