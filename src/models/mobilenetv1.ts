// MobileNetV1 (Howard et al., arXiv:1704.04861), CIFAR-10 form of the reference demo
// (../shared/reference/seed_models.py). Reads side by side with the PyTorch definition.
import * as F from '../tensor/functional.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from '../nn/module.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear, Sequential } from '../nn/layers.js';
import { checkImageInput } from './common.js';

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

export const MOBILENETV1_CIFAR_CFG: V1Config = [64, [128, 2], 128, [256, 2], 256, [512, 2], 512, 512, 512, 512, 512, [1024, 2], 1024];

export interface MobileNetV1Options {
  numClasses?: number;
}

export class MobileNetV1 extends Module {
  conv1: Conv2d;
  bn1: BatchNorm2d;
  layers: Sequential;
  pool: AdaptiveAvgPool2d;
  fc: Linear;

  constructor(opts: MobileNetV1Options = {}) {
    super();
    const cfg = MOBILENETV1_CIFAR_CFG;
    // NOTE: CIFAR form: 3×3 stem with stride 1 (the paper's ImageNet stem has stride 2).
    this.conv1 = new Conv2d(3, 32, 3, { stride: 1, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(32);
    const layers: Module[] = [];
    let inPlanes = 32;
    for (const c of cfg) {
      const outPlanes = typeof c === 'number' ? c : c[0];
      const stride = typeof c === 'number' ? 1 : c[1];
      layers.push(new DepthwiseSeparable(inPlanes, outPlanes, stride));
      inPlanes = outPlanes;
    }
    this.layers = new Sequential(...layers);
    this.pool = new AdaptiveAvgPool2d(1);
    this.fc = new Linear(1024, opts.numClasses ?? 10);
  }

  forward(x: Tensor): Tensor {
    checkImageInput('MobileNetV1', x);
    x = F.relu(this.bn1.forward(this.conv1.forward(x)));
    x = this.layers.forward(x);
    x = this.pool.forward(x).flatten(1);
    return this.fc.forward(x);
  }
}
