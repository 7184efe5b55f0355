// MobileNetV2 (Sandler et al., arXiv:1801.04381), CIFAR-10 form of the reference demo
// (../shared/reference/seed_models.py). Reads side by side with the PyTorch definition.
import * as F from '../tensor/functional.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from '../nn/module.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear, ReLU6, Sequential } from '../nn/layers.js';
import { checkImageInput } from './common.js';

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
}

export class MobileNetV2 extends Module {
  conv1: Conv2d;
  bn1: BatchNorm2d;
  layers: Sequential;
  pool: AdaptiveAvgPool2d;
  fc: Linear;

  constructor(opts: MobileNetV2Options = {}) {
    super();
    // NOTE: CIFAR form: 3×3 stem with stride 1 (stride 2 in the paper).
    this.conv1 = new Conv2d(3, 32, 3, { stride: 1, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(32);
    const layers: Module[] = [];
    let inC = 32;
    for (const [t, c, n, s] of MOBILENETV2_CIFAR_CFG) {
      for (let i = 0; i < n; i++) {
        layers.push(new InvertedResidual(inC, c, i === 0 ? s : 1, t));
        inC = c;
      }
    }
    this.layers = new Sequential(...layers);
    this.pool = new AdaptiveAvgPool2d(1);
    this.fc = new Linear(320, opts.numClasses ?? 10);
  }

  forward(x: Tensor): Tensor {
    checkImageInput('MobileNetV2', x);
    x = F.relu6(this.bn1.forward(this.conv1.forward(x)));
    x = this.layers.forward(x);
    x = this.pool.forward(x).flatten(1);
    return this.fc.forward(x);
  }
}
