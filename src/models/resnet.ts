// ResNet (He et al., arXiv:1512.03385) in two forms that read side by side with their PyTorch
// twins:
//   - CIFAR form (the reference demo, ../shared/reference/seed_models.py, and kuangliu's
//     pytorch-cifar for the deeper nets): 3×3 stride-1 stem, no max-pool, blocks with a
//     `shortcut` Sequential. `ResNet18` is the demo's model exactly.
//   - ImageNet form, equal to torchvision.models.resnet18/34/50/101/152: 7×7 stride-2 stem,
//     3×3 max-pool, blocks with `downsample.0/1`, torchvision's initialisation.
import * as F from '../tensor/functional.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from '../nn/module.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d, ReLU, Sequential } from '../nn/layers.js';
import { checkImageInput, dropoutOption, initTorchvision } from './common.js';

// ---- the table --------------------------------------------------------------------------------

export type ResNetDepth = 18 | 34 | 50 | 101 | 152;
export type ResNetBlockKind = 'basic' | 'bottleneck';

/** Block type and blocks per stage, as torchvision's resnet18 … resnet152 builders pass them. */
export const RESNET_CFG: Readonly<Record<ResNetDepth, readonly [ResNetBlockKind, readonly [number, number, number, number]]>> = {
  18: ['basic', [2, 2, 2, 2]],
  34: ['basic', [3, 4, 6, 3]],
  50: ['bottleneck', [3, 4, 6, 3]],
  101: ['bottleneck', [3, 4, 23, 3]],
  152: ['bottleneck', [3, 8, 36, 3]],
};

export const RESNET_DEPTHS = Object.keys(RESNET_CFG).map(Number) as ResNetDepth[];

export interface ResNetOptions {
  numClasses?: number;
  /** Zero the last BN weight of every block, so each residual branch starts as the identity. */
  zeroInitResidual?: boolean;
  /** Dropout before the classifier (0, the default, adds no layer). */
  dropout?: number;
}

function checkDepth(depth: number): ResNetDepth {
  if (!(depth in RESNET_CFG)) throw new Error(`ResNet: unsupported depth ${depth}; available: ${RESNET_DEPTHS.join(', ')}`);
  return depth as ResNetDepth;
}

// ---- CIFAR form ---------------------------------------------------------------------------------

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

/** 1×1 reduce → 3×3 (carries the stride) → 1×1 expand (×4), with a `shortcut` like BasicBlock. */
export class Bottleneck extends Module {
  static readonly expansion = 4;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  conv2: Conv2d;
  bn2: BatchNorm2d;
  conv3: Conv2d;
  bn3: BatchNorm2d;
  shortcut: Sequential;

  constructor(inPlanes: number, planes: number, stride = 1) {
    super();
    const out = Bottleneck.expansion * planes;
    this.conv1 = new Conv2d(inPlanes, planes, 1, { bias: false });
    this.bn1 = new BatchNorm2d(planes);
    this.conv2 = new Conv2d(planes, planes, 3, { stride, padding: 1, bias: false });
    this.bn2 = new BatchNorm2d(planes);
    this.conv3 = new Conv2d(planes, out, 1, { bias: false });
    this.bn3 = new BatchNorm2d(out);
    this.shortcut = new Sequential();
    if (stride !== 1 || inPlanes !== out) this.shortcut = new Sequential(new Conv2d(inPlanes, out, 1, { stride, bias: false }), new BatchNorm2d(out));
  }

  forward(x: Tensor): Tensor {
    let out = F.relu(this.bn1.forward(this.conv1.forward(x)));
    out = F.relu(this.bn2.forward(this.conv2.forward(out)));
    out = this.bn3.forward(this.conv3.forward(out));
    return F.relu(F.add(out, this.shortcut.forward(x)));
  }
}

/**
 * ResNet, CIFAR form: any depth of RESNET_CFG (the kuangliu/pytorch-cifar construction;
 * depth 18 is the reference demo's ResNet18). Prints as `ResNet<depth>`.
 */
export class ResNetCifar extends Module {
  private inPlanes = 64;
  readonly depth: ResNetDepth;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  layer1: Sequential;
  layer2: Sequential;
  layer3: Sequential;
  layer4: Sequential;
  pool: AdaptiveAvgPool2d;
  dropout: Dropout | null = null;
  fc: Linear;

  constructor(depth: number, opts: ResNetOptions = {}) {
    super();
    this.depth = checkDepth(depth);
    this.displayName = `ResNet${this.depth}`;
    const [kind, blocks] = RESNET_CFG[this.depth];
    const expansion = kind === 'basic' ? BasicBlock.expansion : Bottleneck.expansion;
    // NOTE: CIFAR form: 3×3 stem with stride 1 and no max-pool (7×7 stride 2 + max-pool on ImageNet).
    this.conv1 = new Conv2d(3, 64, 3, { stride: 1, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(64);
    this.layer1 = this.makeLayer(kind, 64, blocks[0], 1);
    this.layer2 = this.makeLayer(kind, 128, blocks[1], 2);
    this.layer3 = this.makeLayer(kind, 256, blocks[2], 2);
    this.layer4 = this.makeLayer(kind, 512, blocks[3], 2);
    this.pool = new AdaptiveAvgPool2d(1);
    const p = dropoutOption(this.name(), opts.dropout, 0);
    if (p > 0) this.dropout = new Dropout(p);
    this.fc = new Linear(512 * expansion, opts.numClasses ?? 10);
    if (opts.zeroInitResidual) zeroInitResidual(this);
  }

  private makeLayer(kind: ResNetBlockKind, planes: number, blocks: number, stride: number): Sequential {
    const Block = kind === 'basic' ? BasicBlock : Bottleneck;
    const layers: Module[] = [];
    for (let i = 0; i < blocks; i++) {
      layers.push(new Block(this.inPlanes, planes, i === 0 ? stride : 1));
      this.inPlanes = planes * Block.expansion;
    }
    return new Sequential(...layers);
  }

  forward(x: Tensor): Tensor {
    checkImageInput(this.name(), x);
    x = F.relu(this.bn1.forward(this.conv1.forward(x)));
    x = this.layer4.forward(this.layer3.forward(this.layer2.forward(this.layer1.forward(x))));
    x = this.pool.forward(x).flatten(1);
    if (this.dropout) x = this.dropout.forward(x);
    return this.fc.forward(x);
  }
}

/** ResNet-18, CIFAR form: blocks per stage [2, 2, 2, 2] (the reference demo's model). */
export class ResNet18 extends ResNetCifar {
  constructor(opts: ResNetOptions = {}) {
    super(18, opts);
  }
}

// ---- ImageNet form (torchvision) ----------------------------------------------------------------

/** torchvision.models.resnet.BasicBlock: conv1, bn1, relu, conv2, bn2, downsample. */
export class BasicBlockImageNet extends Module {
  static readonly expansion = 1;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  relu: ReLU;
  conv2: Conv2d;
  bn2: BatchNorm2d;
  downsample: Sequential | null;

  constructor(inPlanes: number, planes: number, stride = 1, downsample: Sequential | null = null) {
    super();
    this.displayName = 'BasicBlock';
    this.conv1 = new Conv2d(inPlanes, planes, 3, { stride, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(planes);
    this.relu = new ReLU(true);
    this.conv2 = new Conv2d(planes, planes, 3, { stride: 1, padding: 1, bias: false });
    this.bn2 = new BatchNorm2d(planes);
    this.downsample = downsample;
  }

  forward(x: Tensor): Tensor {
    let out = this.relu.forward(this.bn1.forward(this.conv1.forward(x)));
    out = this.bn2.forward(this.conv2.forward(out));
    const identity = this.downsample ? this.downsample.forward(x) : x;
    return this.relu.forward(F.add(out, identity));
  }
}

/** torchvision.models.resnet.Bottleneck (ResNet V1.5: the stride is on the 3×3 conv). */
export class BottleneckImageNet extends Module {
  static readonly expansion = 4;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  conv2: Conv2d;
  bn2: BatchNorm2d;
  conv3: Conv2d;
  bn3: BatchNorm2d;
  relu: ReLU;
  downsample: Sequential | null;

  constructor(inPlanes: number, planes: number, stride = 1, downsample: Sequential | null = null) {
    super();
    this.displayName = 'Bottleneck';
    const width = planes; // groups = 1, base_width = 64
    this.conv1 = new Conv2d(inPlanes, width, 1, { bias: false });
    this.bn1 = new BatchNorm2d(width);
    this.conv2 = new Conv2d(width, width, 3, { stride, padding: 1, bias: false });
    this.bn2 = new BatchNorm2d(width);
    this.conv3 = new Conv2d(width, planes * BottleneckImageNet.expansion, 1, { bias: false });
    this.bn3 = new BatchNorm2d(planes * BottleneckImageNet.expansion);
    this.relu = new ReLU(true);
    this.downsample = downsample;
  }

  forward(x: Tensor): Tensor {
    let out = this.relu.forward(this.bn1.forward(this.conv1.forward(x)));
    out = this.relu.forward(this.bn2.forward(this.conv2.forward(out)));
    out = this.bn3.forward(this.conv3.forward(out));
    const identity = this.downsample ? this.downsample.forward(x) : x;
    return this.relu.forward(F.add(out, identity));
  }
}

/**
 * ResNet, ImageNet form: torchvision.models.resnet<depth>() — same modules, state-dict keys,
 * parameter count, printed form and initialisation (kaiming_normal fan_out convs, BN 1/0,
 * PyTorch's default Linear init for fc). Prints as `ResNet`.
 */
export class ResNetImageNet extends Module {
  private inPlanes = 64;
  readonly depth: ResNetDepth;
  conv1: Conv2d;
  bn1: BatchNorm2d;
  relu: ReLU;
  maxpool: MaxPool2d;
  layer1: Sequential;
  layer2: Sequential;
  layer3: Sequential;
  layer4: Sequential;
  avgpool: AdaptiveAvgPool2d;
  dropout: Dropout | null = null;
  fc: Linear;

  constructor(depth: number, opts: ResNetOptions = {}) {
    super();
    this.depth = checkDepth(depth);
    this.displayName = 'ResNet';
    const [kind, blocks] = RESNET_CFG[this.depth];
    const expansion = kind === 'basic' ? BasicBlockImageNet.expansion : BottleneckImageNet.expansion;
    this.conv1 = new Conv2d(3, 64, 7, { stride: 2, padding: 3, bias: false });
    this.bn1 = new BatchNorm2d(64);
    this.relu = new ReLU(true);
    this.maxpool = new MaxPool2d(3, { stride: 2, padding: 1 });
    this.layer1 = this.makeLayer(kind, 64, blocks[0], 1);
    this.layer2 = this.makeLayer(kind, 128, blocks[1], 2);
    this.layer3 = this.makeLayer(kind, 256, blocks[2], 2);
    this.layer4 = this.makeLayer(kind, 512, blocks[3], 2);
    this.avgpool = new AdaptiveAvgPool2d([1, 1]);
    const p = dropoutOption('ResNet', opts.dropout, 0);
    if (p > 0) this.dropout = new Dropout(p); // NOTE: not in torchvision; only when asked for
    this.fc = new Linear(512 * expansion, opts.numClasses ?? 1000);
    initTorchvision(this, { linear: 'default' });
    if (opts.zeroInitResidual) zeroInitResidual(this);
  }

  private makeLayer(kind: ResNetBlockKind, planes: number, blocks: number, stride: number): Sequential {
    const Block = kind === 'basic' ? BasicBlockImageNet : BottleneckImageNet;
    let downsample: Sequential | null = null;
    if (stride !== 1 || this.inPlanes !== planes * Block.expansion) {
      downsample = new Sequential(new Conv2d(this.inPlanes, planes * Block.expansion, 1, { stride, bias: false }), new BatchNorm2d(planes * Block.expansion));
    }
    const layers: Module[] = [new Block(this.inPlanes, planes, stride, downsample)];
    this.inPlanes = planes * Block.expansion;
    for (let i = 1; i < blocks; i++) layers.push(new Block(this.inPlanes, planes));
    return new Sequential(...layers);
  }

  forward(x: Tensor): Tensor {
    checkImageInput('ResNet', x);
    x = this.maxpool.forward(this.relu.forward(this.bn1.forward(this.conv1.forward(x))));
    x = this.layer4.forward(this.layer3.forward(this.layer2.forward(this.layer1.forward(x))));
    x = this.avgpool.forward(x).flatten(1);
    if (this.dropout) x = this.dropout.forward(x);
    return this.fc.forward(x);
  }
}

/** zero_init_residual: the last BN of each residual branch gets weight 0. */
function zeroInitResidual(net: Module): void {
  for (const m of net.modules()) {
    if (m instanceof Bottleneck || m instanceof BottleneckImageNet) m.bn3.weight?.values.fill(0);
    else if (m instanceof BasicBlock || m instanceof BasicBlockImageNet) m.bn2.weight?.values.fill(0);
  }
}
