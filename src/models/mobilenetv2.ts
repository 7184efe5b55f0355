// MobileNetV2 (Sandler et al., arXiv:1801.04381) in two forms that read side by side with their
// PyTorch twins:
//   - CIFAR form (`MobileNetV2`, the reference demo's model, ../shared/reference/seed_models.py).
//   - ImageNet form (`MobileNetV2ImageNet`), equal to torchvision.models.mobilenet_v2 (0.14):
//     `features.N` of Conv2dNormActivation / InvertedResidual blocks, `classifier` =
//     Dropout(0.2) + Linear, channels _make_divisible(c·width, 8), 1280-channel head.
import * as F from '../tensor/functional.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from '../nn/module.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear, ReLU6, Sequential } from '../nn/layers.js';
import { checkImageInput, dropoutOption, initTorchvision, makeDivisible, widthOption } from './common.js';

/** Inverted residual: 1×1 expand → 3×3 depthwise → 1×1 linear projection (no ReLU after it). */
export class InvertedResidual extends Module {
  readonly useResConnect: boolean;
  conv: Sequential;

  constructor(inC: number, outC: number, stride: number, expandRatio = 6) {
    super();
    const hidden = Math.round(inC * expandRatio);
    this.useResConnect = stride === 1 && inC === outC;
    const layers: Module[] = [];
    if (expandRatio !== 1) {
      layers.push(new Conv2d(inC, hidden, 1, { stride: 1, padding: 0, bias: false }));
      layers.push(new BatchNorm2d(hidden));
      layers.push(new ReLU6(true));
    }
    layers.push(
      new Conv2d(hidden, hidden, 3, { stride, padding: 1, groups: hidden, bias: false }),
      new BatchNorm2d(hidden),
      new ReLU6(true),
      new Conv2d(hidden, outC, 1, { stride: 1, padding: 0, bias: false }),
      new BatchNorm2d(outC),
    );
    this.conv = new Sequential(...layers);
  }

  forward(x: Tensor): Tensor {
    if (this.useResConnect) return F.add(x, this.conv.forward(x));
    return this.conv.forward(x);
  }
}

/** [t (expansion), c (channels), n (repeats), s (first stride)] per stage. */
export type V2Config = readonly (readonly [number, number, number, number])[];

/** The paper's (and torchvision's) inverted_residual_setting. */
export const MOBILENETV2_CFG: V2Config = [
  [1, 16, 1, 1],
  [6, 24, 2, 2],
  [6, 32, 3, 2],
  [6, 64, 4, 2],
  [6, 96, 3, 1],
  [6, 160, 3, 2],
  [6, 320, 1, 1],
];

// NOTE: CIFAR form: the second stage has stride 1 (2 in the paper) and the net ends at 320
// channels (no 1280-channel head).
export const MOBILENETV2_CIFAR_CFG: V2Config = [
  [1, 16, 1, 1],
  [6, 24, 2, 1],
  [6, 32, 3, 2],
  [6, 64, 4, 2],
  [6, 96, 3, 1],
  [6, 160, 3, 2],
  [6, 320, 1, 1],
];

export interface MobileNetV2Options {
  numClasses?: number;
  /** Width multiplier: channels become _make_divisible(c·width, 8). */
  widthMult?: number;
  /** The paper's name for widthMult. */
  alpha?: number;
  /** Dropout before the classifier (ImageNet form: 0.2 like torchvision; CIFAR form: 0, no layer). */
  dropout?: number;
}

/** MobileNetV2, CIFAR form (the reference demo's model when widthMult = 1). */
export class MobileNetV2 extends Module {
  readonly widthMult: number;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  layers: Sequential;
  pool: AdaptiveAvgPool2d;
  dropout: Dropout | null = null;
  fc: Linear;

  constructor(opts: MobileNetV2Options = {}) {
    super();
    const width = widthOption('MobileNetV2', opts);
    this.widthMult = width;
    const stem = makeDivisible(32 * width);
    // NOTE: CIFAR form: 3×3 stem with stride 1 (stride 2 in the paper).
    this.conv1 = new Conv2d(3, stem, 3, { stride: 1, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(stem);
    const layers: Module[] = [];
    let inC = stem;
    for (const [t, c, n, s] of MOBILENETV2_CIFAR_CFG) {
      const outC = makeDivisible(c * width);
      for (let i = 0; i < n; i++) {
        layers.push(new InvertedResidual(inC, outC, i === 0 ? s : 1, t));
        inC = outC;
      }
    }
    this.layers = new Sequential(...layers);
    this.pool = new AdaptiveAvgPool2d(1);
    const p = dropoutOption('MobileNetV2', opts.dropout, 0);
    if (p > 0) this.dropout = new Dropout(p);
    this.fc = new Linear(inC, opts.numClasses ?? 10);
  }

  forward(x: Tensor): Tensor {
    checkImageInput('MobileNetV2', x);
    x = F.relu6(this.bn1.forward(this.conv1.forward(x)));
    x = this.layers.forward(x);
    x = this.pool.forward(x).flatten(1);
    if (this.dropout) x = this.dropout.forward(x);
    return this.fc.forward(x);
  }
}

// ---- ImageNet form (torchvision) ----------------------------------------------------------------

/**
 * torchvision.ops.Conv2dNormActivation (a Sequential): Conv2d (padding (k-1)/2, no bias) →
 * BatchNorm2d → ReLU6(inplace=True).
 */
export class Conv2dNormActivation extends Sequential {
  constructor(inC: number, outC: number, kernelSize = 3, stride = 1, groups = 1) {
    super(
      new Conv2d(inC, outC, kernelSize, { stride, padding: Math.floor((kernelSize - 1) / 2), groups, bias: false }),
      new BatchNorm2d(outC),
      new ReLU6(true),
    );
    this.displayName = 'Conv2dNormActivation';
  }
}

/** torchvision.models.mobilenetv2.InvertedResidual: `conv` = [expand CNA], depthwise CNA, 1×1 conv, BN. */
export class InvertedResidualImageNet extends Module {
  readonly stride: number;
  readonly useResConnect: boolean;
  readonly outChannels: number;
  conv: Sequential;

  constructor(inC: number, outC: number, stride: number, expandRatio: number) {
    super();
    this.displayName = 'InvertedResidual';
    if (stride !== 1 && stride !== 2) throw new Error(`InvertedResidual: stride should be 1 or 2, got ${stride}`);
    this.stride = stride;
    const hidden = Math.round(inC * expandRatio);
    this.useResConnect = stride === 1 && inC === outC;
    const layers: Module[] = [];
    if (expandRatio !== 1) layers.push(new Conv2dNormActivation(inC, hidden, 1));
    layers.push(new Conv2dNormActivation(hidden, hidden, 3, stride, hidden), new Conv2d(hidden, outC, 1, { stride: 1, padding: 0, bias: false }), new BatchNorm2d(outC));
    this.conv = new Sequential(...layers);
    this.outChannels = outC;
  }

  forward(x: Tensor): Tensor {
    if (this.useResConnect) return F.add(x, this.conv.forward(x));
    return this.conv.forward(x);
  }
}

/**
 * MobileNetV2, ImageNet form: torchvision.models.mobilenet_v2(num_classes, width_mult, dropout)
 * — same modules, state-dict keys, parameter count (3,504,872 at width 1; 1,968,680 at 0.5),
 * printed form and initialisation. Pooling is functional, as in torchvision.
 */
export class MobileNetV2ImageNet extends Module {
  readonly widthMult: number;
  readonly lastChannel: number;
  features: Sequential;
  classifier: Sequential;

  constructor(opts: MobileNetV2Options = {}) {
    super();
    this.displayName = 'MobileNetV2';
    const width = widthOption('MobileNetV2', opts);
    this.widthMult = width;
    let inC = makeDivisible(32 * width);
    this.lastChannel = makeDivisible(1280 * Math.max(1, width));
    const features: Module[] = [new Conv2dNormActivation(3, inC, 3, 2)];
    for (const [t, c, n, s] of MOBILENETV2_CFG) {
      const outC = makeDivisible(c * width);
      for (let i = 0; i < n; i++) {
        features.push(new InvertedResidualImageNet(inC, outC, i === 0 ? s : 1, t));
        inC = outC;
      }
    }
    features.push(new Conv2dNormActivation(inC, this.lastChannel, 1));
    this.features = new Sequential(...features);
    this.classifier = new Sequential(new Dropout(dropoutOption('MobileNetV2', opts.dropout, 0.2)), new Linear(this.lastChannel, opts.numClasses ?? 1000));
    initTorchvision(this, { linear: 'normal' });
  }

  forward(x: Tensor): Tensor {
    checkImageInput('MobileNetV2', x);
    x = this.features.forward(x);
    x = F.adaptiveAvgPool2d(x, [1, 1]).flatten(1);
    return this.classifier.forward(x);
  }
}
