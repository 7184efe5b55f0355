// The model zoo: constructors by name.
//
// Naming scheme. Every family has two forms:
//   - the CIFAR form (32×32 inputs, 10 classes by default; the reference demo's stem rules: 3×3
//     stride-1 stem, no max-pool): `mobilenetv1`, `mobilenetv2`, `resnet18`, `resnet34`,
//     `resnet50`, `resnet101`, `resnet152`. This is what a bare name gives;
//     `mobilenetv1`, `mobilenetv2` and `resnet18` are the demo's models exactly.
//   - the ImageNet form (the paper's network; for ResNet and MobileNetV2 equal to torchvision's,
//     state-dict keys included, so torchvision checkpoints load; 1000 classes by default):
//     the same name with the suffix `_imagenet` (`resnet50_imagenet`), or the prefix `tv_`
//     (`tv_resnet50`, `tv_mobilenet_v2`), or `{ imagenet: true }`.
// Names are case-insensitive and '-', '_' and ' ' inside the base name are ignored
// (`mobilenet_v2` = `mobilenetv2`). MobileNets accept a width suffix: `mobilenetv1_0.25`,
// `mobilenet_v2_0.5_imagenet` (same as `{ widthMult: 0.25 }`).
import type { Module } from '../nn/module.js';
import { MobileNetV1, MobileNetV1ImageNet, type MobileNetV1Options } from './mobilenetv1.js';
import { MobileNetV2, MobileNetV2ImageNet, type MobileNetV2Options } from './mobilenetv2.js';
import { RESNET_CFG, RESNET_DEPTHS, ResNet18, ResNetCifar, ResNetImageNet, type ResNetDepth, type ResNetOptions } from './resnet.js';

export { MobileNetV1, MobileNetV1ImageNet, DepthwiseSeparable, MOBILENETV1_CFG, MOBILENETV1_CIFAR_CFG, MOBILENETV1_STEM } from './mobilenetv1.js';
export type { MobileNetV1Options, V1Config } from './mobilenetv1.js';
export { MobileNetV2, MobileNetV2ImageNet, InvertedResidual, InvertedResidualImageNet, Conv2dNormActivation, MOBILENETV2_CFG, MOBILENETV2_CIFAR_CFG } from './mobilenetv2.js';
export type { MobileNetV2Options, V2Config } from './mobilenetv2.js';
export { ResNet18, ResNetCifar, ResNetImageNet, BasicBlock, Bottleneck, BasicBlockImageNet, BottleneckImageNet, RESNET_CFG, RESNET_DEPTHS } from './resnet.js';
export type { ResNetOptions, ResNetDepth, ResNetBlockKind } from './resnet.js';
export { makeDivisible } from './common.js';
export { summary, formatSummary, formatMacs, layerMacs } from './summary.js';
export type { ModelSummary, SummaryRow, SeparableComparison, SummaryOptions } from './summary.js';
export { findClassifier, replaceClassifier, freeze, prepareFineTune, FREEZE_MODES } from './finetune.js';
export type { ClassifierHead, FreezeMode, FineTuneOptions, FineTuneReport } from './finetune.js';

export interface ModelOptions {
  numClasses?: number;
  /** The ImageNet (paper / torchvision) form instead of the CIFAR form. */
  imagenet?: boolean;
  /** MobileNets: width multiplier (α). */
  widthMult?: number;
  /** MobileNets: the paper's name for widthMult. */
  alpha?: number;
  /** ResNets: zero the last BN weight of each residual branch. */
  zeroInitResidual?: boolean;
  /** Dropout before the classifier (torchvision MobileNetV2: 0.2 by default; others: none). */
  dropout?: number;
}

export const mobilenetV1 = (opts: MobileNetV1Options = {}): MobileNetV1 => new MobileNetV1(opts);
export const mobilenetV2 = (opts: MobileNetV2Options = {}): MobileNetV2 => new MobileNetV2(opts);
export const resnet18 = (opts: ResNetOptions = {}): ResNet18 => new ResNet18(opts);
/** ResNet of any depth in RESNET_CFG, CIFAR form (or ImageNet form with `imagenet: true`). */
export const resnet = (depth: ResNetDepth, opts: ResNetOptions & { imagenet?: boolean } = {}): ResNetCifar | ResNetImageNet =>
  opts.imagenet ? new ResNetImageNet(depth, opts) : depth === 18 ? new ResNet18(opts) : new ResNetCifar(depth, opts);
export const mobilenetV1ImageNet = (opts: MobileNetV1Options = {}): MobileNetV1ImageNet => new MobileNetV1ImageNet(opts);
export const mobilenetV2ImageNet = (opts: MobileNetV2Options = {}): MobileNetV2ImageNet => new MobileNetV2ImageNet(opts);

type Family = 'mobilenetv1' | 'mobilenetv2' | 'resnet';

interface Entry {
  family: Family;
  depth?: ResNetDepth;
  imagenet: boolean;
  description: string;
}

const RESNET_PARAMS_CIFAR: Record<ResNetDepth, string> = { 18: '11.2 M', 34: '21.3 M', 50: '23.5 M', 101: '42.5 M', 152: '58.2 M' };
const RESNET_PARAMS_IMAGENET: Record<ResNetDepth, string> = { 18: '11.7 M', 34: '21.8 M', 50: '25.6 M', 101: '44.5 M', 152: '60.2 M' };

const registry = new Map<string, Entry>([
  ['mobilenetv1', { family: 'mobilenetv1', imagenet: false, description: 'MobileNetV1, CIFAR form (3x3 stride-1 stem), 3.2 M parameters; widthMult/alpha scales channels' }],
  ['mobilenetv2', { family: 'mobilenetv2', imagenet: false, description: 'MobileNetV2, CIFAR form (stride-1 stem and stage 2, 320-channel end), 1.8 M parameters; widthMult scales channels' }],
  ...RESNET_DEPTHS.map((d): [string, Entry] => [
    `resnet${d}`,
    {
      family: 'resnet',
      depth: d,
      imagenet: false,
      description: `ResNet-${d}, CIFAR form (3x3 stride-1 stem, no max-pool, ${RESNET_CFG[d][0] === 'basic' ? 'BasicBlock' : 'Bottleneck'} ${RESNET_CFG[d][1].join('-')}), ${RESNET_PARAMS_CIFAR[d]} parameters`,
    },
  ]),
  ['mobilenetv1_imagenet', { family: 'mobilenetv1', imagenet: true, description: 'MobileNetV1, ImageNet form (paper; stride-2 stem), 4.2 M parameters (alpha 0.75/0.5/0.25: 2.6/1.3/0.47 M), 0.569 GMACs at 224' }],
  ['mobilenetv2_imagenet', { family: 'mobilenetv2', imagenet: true, description: 'MobileNetV2, ImageNet form = torchvision mobilenet_v2 (1280-channel head), 3.5 M parameters, 0.30 GMACs at 224' }],
  ...RESNET_DEPTHS.map((d): [string, Entry] => [
    `resnet${d}_imagenet`,
    { family: 'resnet', depth: d, imagenet: true, description: `ResNet-${d}, ImageNet form = torchvision resnet${d} (7x7 stride-2 stem + max-pool), ${RESNET_PARAMS_IMAGENET[d]} parameters` },
  ]),
]);

/** Canonical model names accepted by create(): the CIFAR forms first, then the ImageNet forms. */
export function list(): string[] {
  return [...registry.keys()];
}

/** A name resolved to its canonical entry, with the width multiplier the name carries (if any). */
export interface ResolvedName {
  canonical: string;
  family: Family;
  depth?: ResNetDepth;
  imagenet: boolean;
  widthMult?: number;
}

/** Resolve a user-given model name (aliases, `_imagenet` / `tv_`, width suffix); null if unknown. */
export function resolve(name: string): ResolvedName | null {
  let n = name.trim().toLowerCase();
  let imagenet = false;
  const tv = /^(tv|torchvision)[-_. ]/.exec(n);
  if (tv) {
    n = n.slice(tv[0].length);
    imagenet = true;
  }
  const inet = /[-_ ]?imagenet$/.exec(n);
  if (inet) {
    n = n.slice(0, n.length - inet[0].length);
    imagenet = true;
  }
  let widthMult: number | undefined;
  const w = /[-_ ]x?(\d*\.\d+|\d+\.\d*)x?$/.exec(n);
  if (w) {
    widthMult = Number(w[1]);
    n = n.slice(0, n.length - w[0].length);
  }
  const base = n.replace(/[-_ ]/g, '');
  const e = registry.get(base);
  if (!e) return null;
  if (widthMult !== undefined && e.family === 'resnet') return null;
  const canonical = imagenet ? `${base}_imagenet` : base;
  return { canonical, family: e.family, depth: e.depth, imagenet, widthMult };
}

export function describe(name: string): string {
  const r = resolve(name);
  return r ? (registry.get(r.canonical)?.description ?? '') : '';
}

/** Build a model by name, e.g. create('mobilenetv2', { numClasses: 10 }) or create('resnet50_imagenet'). */
export function create(name: string, opts: ModelOptions = {}): Module {
  const r = resolve(name);
  if (!r) throw new Error(`unknown model "${name}"; available: ${list().join(', ')}`);
  if (opts.numClasses !== undefined && (!Number.isInteger(opts.numClasses) || opts.numClasses < 1)) {
    throw new Error(`numClasses must be a positive integer, got ${opts.numClasses}`);
  }
  const imagenet = r.imagenet || opts.imagenet === true;
  const what = `${r.canonical}${imagenet && !r.imagenet ? ' (imagenet)' : ''}`;
  if (r.family === 'resnet') {
    if (opts.widthMult !== undefined || opts.alpha !== undefined) throw new Error(`${what}: ResNets have no width multiplier (widthMult/alpha are MobileNet options)`);
    const o: ResNetOptions = { numClasses: opts.numClasses, zeroInitResidual: opts.zeroInitResidual, dropout: opts.dropout };
    return resnet(r.depth!, { ...o, imagenet });
  }
  if (opts.zeroInitResidual !== undefined) throw new Error(`${what}: zeroInitResidual is a ResNet option`);
  const named = r.widthMult;
  const given = opts.widthMult ?? opts.alpha;
  if (named !== undefined && given !== undefined && named !== given) throw new Error(`${what}: the name says width ${named} but the options say ${given}`);
  const o = { numClasses: opts.numClasses, widthMult: opts.widthMult ?? named, alpha: opts.alpha, dropout: opts.dropout };
  if (r.family === 'mobilenetv1') return imagenet ? new MobileNetV1ImageNet(o) : new MobileNetV1(o);
  return imagenet ? new MobileNetV2ImageNet(o) : new MobileNetV2(o);
}
