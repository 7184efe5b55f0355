// The model zoo: constructors by name.
import type { Module } from '../nn/module.js';
import { MobileNetV1, type MobileNetV1Options } from './mobilenetv1.js';
import { MobileNetV2, type MobileNetV2Options } from './mobilenetv2.js';
import { ResNet18, type ResNetOptions } from './resnet.js';

export { MobileNetV1, DepthwiseSeparable, MOBILENETV1_CIFAR_CFG } from './mobilenetv1.js';
export { MobileNetV2, InvertedResidual, MOBILENETV2_CIFAR_CFG } from './mobilenetv2.js';
export { ResNet18, BasicBlock } from './resnet.js';

export interface ModelOptions {
  numClasses?: number;
}

export const mobilenetV1 = (opts: MobileNetV1Options = {}): MobileNetV1 => new MobileNetV1(opts);
export const mobilenetV2 = (opts: MobileNetV2Options = {}): MobileNetV2 => new MobileNetV2(opts);
export const resnet18 = (opts: ResNetOptions = {}): ResNet18 => new ResNet18(opts);

const registry: Record<string, { make: (o: ModelOptions) => Module; description: string }> = {
  mobilenetv1: { make: mobilenetV1, description: 'MobileNetV1, CIFAR form (3x3 stride-1 stem), 3.2 M parameters' },
  mobilenetv2: { make: mobilenetV2, description: 'MobileNetV2, CIFAR form (stride-1 stem and stage 2, 320-channel end), 1.8 M parameters' },
  resnet18: { make: resnet18, description: 'ResNet-18, CIFAR form (3x3 stride-1 stem, no max-pool), 11.2 M parameters' },
};

/** Names accepted by create(). */
export function list(): string[] {
  return Object.keys(registry);
}

export function describe(name: string): string {
  return registry[normalise(name)]?.description ?? '';
}

function normalise(name: string): string {
  return name.toLowerCase().replace(/[-_ ]/g, '');
}

/** Build a model by name, e.g. create('mobilenetv2', { numClasses: 10 }). */
export function create(name: string, opts: ModelOptions = {}): Module {
  const entry = registry[normalise(name)];
  if (!entry) throw new Error(`unknown model "${name}"; available: ${list().join(', ')}`);
  if (opts.numClasses !== undefined && (!Number.isInteger(opts.numClasses) || opts.numClasses < 1)) {
    throw new Error(`numClasses must be a positive integer, got ${opts.numClasses}`);
  }
  return entry.make(opts);
}
