// ResNet (He et al., arXiv:1512.03385), CIFAR-10 form of the reference demo
// (../shared/reference/seed_models.py). Reads side by side with the PyTorch definition.
import * as F from '../tensor/functional.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from '../nn/module.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear, Sequential } from '../nn/layers.js';
import { checkImageInput } from './common.js';

/** Two 3×3 convs with a shortcut; a 1×1 conv + BN on the shortcut when the shape changes. */
export class BasicBlock extends Module {
  static readonly expansion = 1;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  conv2: Conv2d;
  bn2: BatchNorm2d;
  shortcut: Sequential;

  constructor(inPlanes: number, planes: number, stride = 1) {
    super();
    this.conv1 = new Conv2d(inPlanes, planes, 3, { stride, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(planes);
    this.conv2 = new Conv2d(planes, planes, 3, { stride: 1, padding: 1, bias: false });
    this.bn2 = new BatchNorm2d(planes);
    this.shortcut = new Sequential();
    if (stride !== 1 || inPlanes !== BasicBlock.expansion * planes) {
      this.shortcut = new Sequential(new Conv2d(inPlanes, BasicBlock.expansion * planes, 1, { stride, bias: false }), new BatchNorm2d(BasicBlock.expansion * planes));
    }
  }

  forward(x: Tensor): Tensor {
    let out = F.relu(this.bn1.forward(this.conv1.forward(x)));
    out = this.bn2.forward(this.conv2.forward(out));
    out = F.add(out, this.shortcut.forward(x));
    return F.relu(out);
  }
}

export interface ResNetOptions {
  numClasses?: number;
}

/** ResNet-18, CIFAR form: blocks per stage [2, 2, 2, 2]. */
export class ResNet18 extends Module {
  private inPlanes = 64;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  layer1: Sequential;
  layer2: Sequential;
  layer3: Sequential;
  layer4: Sequential;
  pool: AdaptiveAvgPool2d;
  fc: Linear;

  constructor(opts: ResNetOptions = {}) {
    super();
    // NOTE: CIFAR form: 3×3 stem with stride 1 and no max-pool (7×7 stride 2 + max-pool on ImageNet).
    this.conv1 = new Conv2d(3, 64, 3, { stride: 1, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(64);
    this.layer1 = this.makeLayer(64, 2, 1);
    this.layer2 = this.makeLayer(128, 2, 2);
    this.layer3 = this.makeLayer(256, 2, 2);
    this.layer4 = this.makeLayer(512, 2, 2);
    this.pool = new AdaptiveAvgPool2d(1);
    this.fc = new Linear(512, opts.numClasses ?? 10);
  }

  private makeLayer(planes: number, blocks: number, stride: number): Sequential {
    const layers: Module[] = [new BasicBlock(this.inPlanes, planes, stride)];
    this.inPlanes = planes * BasicBlock.expansion;
    for (let i = 1; i < blocks; i++) layers.push(new BasicBlock(this.inPlanes, planes, 1));
    return new Sequential(...layers);
  }

  forward(x: Tensor): Tensor {
    checkImageInput('ResNet18', x);
    x = F.relu(this.bn1.forward(this.conv1.forward(x)));
    x = this.layer4.forward(this.layer3.forward(this.layer2.forward(this.layer1.forward(x))));
    x = this.pool.forward(x).flatten(1);
    return this.fc.forward(x);
  }
}
