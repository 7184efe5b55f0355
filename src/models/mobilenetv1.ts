// MobileNetV1 (Howard et al., arXiv:1704.04861). Reads side by side with the PyTorch definition
// of the reference demo (../shared/reference/seed_models.py); both forms share its module names
// (conv1, bn1, layers.N.{depthwise,bn1,pointwise,bn2}, pool, fc):
//   - CIFAR form (`MobileNetV1`, the demo's model): 3×3 stride-1 stem.
//   - ImageNet form (`MobileNetV1ImageNet`, the paper's network): 3×3 stride-2 stem.
// Width multiplier α (`widthMult`/`alpha`): every layer has int(c·α) channels (the paper's α ∈
// {1, 0.75, 0.5, 0.25}). Resolution multiplier ρ: the nets are fully convolutional up to the
// global average pool, so any input size works (ρ = size / 224, e.g. 128 for ρ = 0.571).
import * as F from '../tensor/functional.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from '../nn/module.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear, Sequential } from '../nn/layers.js';
import { checkImageInput, dropoutOption, initTorchvision, widthOption } from './common.js';

/** 3×3 depthwise conv + BN + ReLU, then 1×1 pointwise conv + BN + ReLU. */
export class DepthwiseSeparable extends Module {
  depthwise: Conv2d;
  bn1: BatchNorm2d;
  pointwise: Conv2d;
  bn2: BatchNorm2d;

  constructor(inC: number, outC: number, stride = 1) {
    super();
    this.depthwise = new Conv2d(inC, inC, 3, { stride, padding: 1, groups: inC, bias: false });
    this.bn1 = new BatchNorm2d(inC);
    this.pointwise = new Conv2d(inC, outC, 1, { stride: 1, padding: 0, bias: false });
    this.bn2 = new BatchNorm2d(outC);
  }

  forward(x: Tensor): Tensor {
    x = F.relu(this.bn1.forward(this.depthwise.forward(x)));
    x = F.relu(this.bn2.forward(this.pointwise.forward(x)));
    return x;
  }
}

/** Output channels, or [channels, stride] for a downsampling block. */
export type V1Config = (number | readonly [number, number])[];

/** The 13 depthwise-separable blocks (the paper's Table 1; its last stride-2 entry is a typo). */
export const MOBILENETV1_CFG: V1Config = [64, [128, 2], 128, [256, 2], 256, [512, 2], 512, 512, 512, 512, 512, [1024, 2], 1024];

/** The demo's CIFAR table: the same blocks as the paper (only the stem differs). */
export const MOBILENETV1_CIFAR_CFG: V1Config = MOBILENETV1_CFG;

/** Stem channels before the width multiplier. */
export const MOBILENETV1_STEM = 32;

export interface MobileNetV1Options {
  numClasses?: number;
  /** Width multiplier α: every layer gets int(c·α) channels. */
  widthMult?: number;
  /** The paper's name for widthMult. */
  alpha?: number;
  /** Dropout before fc (0, the default, adds no layer). */
  dropout?: number;
}

/** MobileNetV1, CIFAR form (the reference demo's model when α = 1). */
export class MobileNetV1 extends Module {
  readonly widthMult: number;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  layers: Sequential;
  pool: AdaptiveAvgPool2d;
  dropout: Dropout | null = null;
  fc: Linear;

  constructor(opts: MobileNetV1Options = {}, stemStride = 1) {
    super();
    const alpha = widthOption('MobileNetV1', opts);
    this.widthMult = alpha;
    const ch = (c: number): number => {
      const n = Math.trunc(c * alpha); // Python int(c·α)
      if (n < 1) throw new Error(`MobileNetV1: width multiplier ${alpha} leaves a layer with no channels`);
      return n;
    };
    // NOTE: the CIFAR form's 3×3 stem has stride 1 (stride 2 in the paper: MobileNetV1ImageNet).
    this.conv1 = new Conv2d(3, ch(MOBILENETV1_STEM), 3, { stride: stemStride, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(ch(MOBILENETV1_STEM));
    const layers: Module[] = [];
    let inPlanes = ch(MOBILENETV1_STEM);
    for (const c of MOBILENETV1_CFG) {
      const outPlanes = ch(typeof c === 'number' ? c : c[0]);
      const stride = typeof c === 'number' ? 1 : c[1];
      layers.push(new DepthwiseSeparable(inPlanes, outPlanes, stride));
      inPlanes = outPlanes;
    }
    this.layers = new Sequential(...layers);
    this.pool = new AdaptiveAvgPool2d(1);
    const p = dropoutOption('MobileNetV1', opts.dropout, 0);
    if (p > 0) this.dropout = new Dropout(p);
    this.fc = new Linear(inPlanes, opts.numClasses ?? (stemStride === 1 ? 10 : 1000));
  }

  forward(x: Tensor): Tensor {
    checkImageInput('MobileNetV1', x);
    x = F.relu(this.bn1.forward(this.conv1.forward(x)));
    x = this.layers.forward(x);
    x = this.pool.forward(x).flatten(1);
    if (this.dropout) x = this.dropout.forward(x);
    return this.fc.forward(x);
  }
}

/**
 * MobileNetV1, ImageNet form (the paper's network, 1000 classes by default): stride-2 3×3 stem
 * with 32·α channels, the 13 blocks, global average pool, fc. There is no torchvision model;
 * it is initialised like torchvision's MobileNetV2 (kaiming_normal fan_out convs, BN 1/0, fc
 * N(0, 0.01)). Parameters: α = 1 4,231,976 · 0.75 2,585,560 · 0.5 1,331,592 · 0.25 470,072.
 */
export class MobileNetV1ImageNet extends MobileNetV1 {
  constructor(opts: MobileNetV1Options = {}) {
    super(opts, 2);
    this.displayName = 'MobileNetV1';
    initTorchvision(this, { linear: 'normal' });
  }
}
