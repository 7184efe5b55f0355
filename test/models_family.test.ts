// The full model families: ImageNet forms against torchvision (keys, shapes, parameter counts,
// printed form, logits from a real torch.save file), MobileNetV1 α variants, the CIFAR forms,
// the naming scheme of models.create, initialisation, and fine-tuning from a checkpoint.
// Fixtures: test/fixtures/tv_* from scripts/gen_torchvision_fixtures.py (tv_README.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { F, Tensor, manualSeed, models, nn, noGrad, tensor } from '../src/index.js';
import { loadPth } from '../src/io/pth.js';
import { assertClose, fixture, FIXTURES, get } from './helpers/compare.js';
import { uniformF32 } from './helpers/formula.js';

const TV = 'tv_models.safetensors';
const LOGIT_TOL = 1e-4; // relative L2 (PyTorch's own float32 is within 1e-5 of its float64 here)

function shapes(net: nn.Module): [string, number[]][] {
  return [...net.stateDict()].map(([k, v]) => [k, [...v.shape]]);
}

// ---- ImageNet forms = torchvision -------------------------------------------------------------

const TORCHVISION: [string, string, models.ModelOptions][] = [
  ['resnet18', 'resnet18_imagenet', {}],
  ['resnet34', 'resnet34_imagenet', {}],
  ['resnet50', 'resnet50_imagenet', {}],
  ['resnet101', 'resnet101_imagenet', {}],
  ['resnet152', 'resnet152_imagenet', {}],
  ['mobilenet_v2', 'mobilenetv2_imagenet', {}],
  ['mobilenet_v2_0.5', 'mobilenetv2_imagenet', { widthMult: 0.5 }],
];

test('ImageNet forms: state-dict keys, shapes and parameter counts equal torchvision (ResNet-18…152, MobileNetV2 1.0/0.5)', async () => {
  const f = await fixture(TV);
  const expectedCounts: Record<string, number> = {
    resnet18: 11_689_512,
    resnet34: 21_797_672,
    resnet50: 25_557_032,
    resnet101: 44_549_160,
    resnet152: 60_192_808,
    mobilenet_v2: 3_504_872,
    'mobilenet_v2_0.5': 1_968_680,
  };
  for (const [tv, name, opts] of TORCHVISION) {
    const net = models.create(name, opts);
    assert.equal(Number(f.metadata[`num_params.${tv}`]), expectedCounts[tv], `${tv}: fixture count`);
    assert.equal(net.numParameters(), expectedCounts[tv], `${tv}: parameter count`);
    assert.deepEqual(shapes(net), JSON.parse(f.metadata[`keys.${tv}`]), `${tv}: state-dict keys and shapes`);
  }
});

test('ImageNet forms print exactly like torchvision (resnet18, resnet50, mobilenet_v2 1.0 and 0.5)', async () => {
  const f = await fixture(TV);
  assert.equal(String(models.create('resnet18_imagenet')), f.metadata['repr.resnet18']);
  assert.equal(String(models.create('tv_resnet50')), f.metadata['repr.resnet50']);
  assert.equal(String(models.create('tv_mobilenet_v2')), f.metadata['repr.mobilenet_v2']);
  assert.equal(String(models.create('mobilenet_v2_0.5_imagenet')), f.metadata['repr.mobilenet_v2_0.5']);
});

async function torchvisionLogits(tv: string, name: string): Promise<void> {
  const f = await fixture(TV);
  const sd = await loadPth(path.join(FIXTURES, `tv_${tv}.pth`));
  const net = models.create(name);
  const res = net.loadStateDict(sd); // strict: every key and shape matches
  assert.deepEqual(res, { missingKeys: [], unexpectedKeys: [], mismatchedKeys: [] });
  net.eval();
  const x = tensor(uniformF32(5000, 2 * 3 * 64 * 64), [2, 3, 64, 64]);
  assertClose(x.values.subarray(0, 16), get(f, 'input.head'), 0, 'input formula');
  const y = noGrad(() => net.forward(x));
  assert.deepEqual(y.shape, [2, 1000]);
  assertClose(y.values, get(f, `${tv}.logits`), LOGIT_TOL, `${tv} logits`);
}

test('ResNet-50 loaded from a real torch.save file gives torchvision\'s eval logits', () => torchvisionLogits('resnet50', 'resnet50_imagenet'));

test('MobileNetV2 loaded from a real torch.save file gives torchvision\'s eval logits', () => torchvisionLogits('mobilenet_v2', 'mobilenetv2_imagenet'));

// ---- MobileNetV1 ---------------------------------------------------------------------------------

test('MobileNetV1 ImageNet form: parameter counts for α = 1, 0.75, 0.5, 0.25 and the paper\'s structure', () => {
  const counts: [number, number][] = [
    [1, 4_231_976],
    [0.75, 2_585_560],
    [0.5, 1_331_592],
    [0.25, 470_072],
  ];
  const cifarKeys = [...models.create('mobilenetv1').stateDict().keys()];
  for (const [alpha, n] of counts) {
    const net = models.create('mobilenetv1_imagenet', { alpha }) as models.MobileNetV1ImageNet;
    assert.equal(net.numParameters(), n, `α=${alpha}`);
    assert.equal(net.name(), 'MobileNetV1');
    // the same module names as the CIFAR MobileNetV1: the families read alike
    assert.deepEqual([...net.stateDict().keys()], cifarKeys);
    assert.deepEqual(net.conv1.stride, [2, 2]);
    assert.equal(net.conv1.outChannels, Math.trunc(32 * alpha));
    assert.equal(net.layers.length, 13);
    const blocks = net.layers.children() as models.DepthwiseSeparable[];
    assert.deepEqual(
      blocks.map((b) => [b.pointwise.outChannels, b.depthwise.stride[0]]),
      [64, [128, 2], 128, [256, 2], 256, [512, 2], 512, 512, 512, 512, 512, [1024, 2], 1024].map((c) => (typeof c === 'number' ? [Math.trunc(c * alpha), 1] : [Math.trunc(c[0] * alpha), c[1]])),
    );
    for (const b of blocks) assert.equal(b.depthwise.groups, b.depthwise.inChannels);
    assert.equal(net.fc.inFeatures, Math.trunc(1024 * alpha));
    assert.equal(net.fc.outFeatures, 1000);
  }
  assert.equal(models.create('mobilenetv1_0.25_imagenet').numParameters(), 470_072);
  // widthMult and alpha are the same option
  assert.equal(models.create('mobilenetv1_imagenet', { widthMult: 0.5 }).numParameters(), 1_331_592);
});

test('MobileNetV1 takes any input size (resolution multiplier ρ): 1x3x64x64, 1x3x96x80', () => {
  const net = models.create('mobilenetv1_imagenet', { alpha: 0.25, numClasses: 7 }).eval();
  for (const [h, w] of [
    [64, 64],
    [96, 80],
  ]) {
    const y = noGrad(() => net.forward(tensor(new Float32Array(3 * h * w).fill(0.5), [1, 3, h, w])));
    assert.deepEqual(y.shape, [1, 7]);
    assert.ok(y.values.every(Number.isFinite));
  }
});

// ---- CIFAR forms and naming ------------------------------------------------------------------------

test('CIFAR forms: bare names are the demo\'s models; resnet34/50 run on 1x3x32x32 and give [1, 10]', () => {
  // the seed models are unchanged
  assert.equal(models.create('mobilenetv1').numParameters(), 3_217_226);
  assert.equal(models.create('mobilenetv2').numParameters(), 1_814_922);
  assert.equal(models.create('resnet18').numParameters(), 11_173_962);
  assert.ok(models.create('resnet18') instanceof models.ResNet18);
  assert.equal(models.create('resnet18').name(), 'ResNet18');
  const x = tensor(uniformF32(77, 3 * 32 * 32), [1, 3, 32, 32]);
  for (const [name, params] of [
    ['resnet34', 21_282_122],
    ['resnet50', 23_520_842],
  ] as const) {
    manualSeed(0);
    const net = models.create(name);
    assert.ok(net instanceof models.ResNetCifar && !(net instanceof models.ResNetImageNet));
    assert.equal(net.numParameters(), params, name);
    assert.equal(net.name(), name === 'resnet34' ? 'ResNet34' : 'ResNet50');
    net.eval();
    const y = noGrad(() => net.forward(x));
    assert.deepEqual(y.shape, [1, 10]);
    assert.ok(y.values.every(Number.isFinite));
  }
  // kuangliu-style Bottleneck with a `shortcut`, 3×3 stride-1 stem and no max-pool
  const r50 = models.create('resnet50') as models.ResNetCifar;
  const keys = [...r50.stateDict().keys()];
  assert.ok(keys.includes('layer1.0.conv3.weight') && keys.includes('layer1.0.shortcut.0.weight') && keys.includes('layer2.0.shortcut.1.running_var'));
  assert.ok(!keys.includes('layer1.1.shortcut.0.weight') && !keys.some((k) => k.includes('downsample')));
  assert.deepEqual(r50.conv1.kernelSize, [3, 3]);
  assert.deepEqual(r50.conv1.stride, [1, 1]);
  assert.ok(!String(r50).includes('MaxPool2d'));
  assert.match(String(r50), /^ResNet50\(\n {2}\(conv1\): Conv2d\(3, 64, kernel_size=\(3, 3\), stride=\(1, 1\), padding=\(1, 1\), bias=False\)/);
  assert.match(String(r50), /\(0\): Bottleneck\(/);
});

test('naming scheme: _imagenet suffix, tv_ prefix and { imagenet: true } select the torchvision form', () => {
  for (const [name, opts] of [
    ['resnet50_imagenet', {}],
    ['tv_resnet50', {}],
    ['ResNet-50-ImageNet', {}],
    ['resnet50', { imagenet: true }],
  ] as [string, models.ModelOptions][]) {
    const net = models.create(name, { ...opts, numClasses: 5 });
    assert.ok(net instanceof models.ResNetImageNet, name);
    assert.equal(net.numParameters(), 25_557_032 - 2049 * 995, name);
  }
  assert.ok(models.create('mobilenet_v2') instanceof models.MobileNetV2, 'torchvision spelling without tv_ = the CIFAR form');
  assert.ok(models.create('tv_mobilenet_v2') instanceof models.MobileNetV2ImageNet);
  assert.ok(models.create('mobilenetv1', { imagenet: true }) instanceof models.MobileNetV1ImageNet);
  assert.deepEqual(models.resolve('mobilenet_v2_0.5_imagenet'), { canonical: 'mobilenetv2_imagenet', family: 'mobilenetv2', depth: undefined, imagenet: true, widthMult: 0.5 });
  assert.equal(models.resolve('resnet50_0.5'), null);
  const names = models.list();
  assert.deepEqual(names.slice(0, 7), ['mobilenetv1', 'mobilenetv2', 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152']);
  assert.deepEqual(names.slice(7), ['mobilenetv1_imagenet', 'mobilenetv2_imagenet', 'resnet18_imagenet', 'resnet34_imagenet', 'resnet50_imagenet', 'resnet101_imagenet', 'resnet152_imagenet']);
  for (const n of names) assert.ok(models.describe(n).length > 20, n);
  assert.match(models.describe('tv_resnet50'), /torchvision resnet50/);
  assert.throws(() => models.create('vgg16'), /unknown model "vgg16"; available: mobilenetv1, mobilenetv2, resnet18, resnet34/);
  assert.throws(() => models.create('resnet50', { widthMult: 0.5 }), /ResNets have no width multiplier/);
  assert.throws(() => models.create('mobilenetv2', { zeroInitResidual: true }), /zeroInitResidual is a ResNet option/);
  assert.throws(() => models.create('mobilenetv1_0.5', { alpha: 0.25 }), /the name says width 0.5 but the options say 0.25/);
  assert.throws(() => models.create('mobilenetv1', { widthMult: 0.5, alpha: 0.25 }), /same option/);
  assert.throws(() => models.create('mobilenetv2', { dropout: 1.5 }), /dropout must be a probability/);
});

test('model tables are data: RESNET_CFG, MOBILENETV2_CFG, MOBILENETV1_CFG', () => {
  assert.deepEqual(models.RESNET_CFG[50], ['bottleneck', [3, 4, 6, 3]]);
  assert.deepEqual(models.RESNET_CFG[152], ['bottleneck', [3, 8, 36, 3]]);
  assert.deepEqual(models.RESNET_CFG[34], ['basic', [3, 4, 6, 3]]);
  assert.deepEqual(models.MOBILENETV2_CFG[1], [6, 24, 2, 2]);
  assert.deepEqual(models.MOBILENETV2_CIFAR_CFG[1], [6, 24, 2, 1]);
  assert.equal(models.MOBILENETV1_CFG.length, 13);
  assert.equal(models.makeDivisible(32 * 0.5), 16);
  assert.equal(models.makeDivisible(24 * 0.35), 8);
  assert.equal(models.makeDivisible(1280 * 1.4), 1792);
  assert.equal(models.makeDivisible(96 * 0.75), 72);
});

test('options: dropout adds a Dropout before the classifier; widthMult on the CIFAR MobileNets', () => {
  const plain = models.create('resnet50');
  const drop = models.create('resnet50', { dropout: 0.3 });
  assert.deepEqual([...drop.stateDict().keys()], [...plain.stateDict().keys()]);
  assert.match(String(drop), /\(dropout\): Dropout\(p=0\.3, inplace=False\)\n {2}\(fc\): Linear/);
  assert.match(String(models.create('tv_mobilenet_v2', { dropout: 0.5 })), /\(0\): Dropout\(p=0\.5, inplace=False\)/);
  const v1 = models.create('mobilenetv1', { alpha: 0.5 }) as models.MobileNetV1;
  assert.equal(v1.conv1.outChannels, 16);
  assert.equal(v1.fc.inFeatures, 512);
  const v2 = models.create('mobilenetv2', { widthMult: 0.5 }) as models.MobileNetV2;
  assert.equal(v2.conv1.outChannels, 16);
  assert.equal(v2.fc.inFeatures, 160);
  const y = noGrad(() => v2.eval().forward(tensor(new Float32Array(2 * 3 * 16 * 16).fill(0.25), [2, 3, 16, 16])));
  assert.deepEqual(y.shape, [2, 10]);
});

// ---- initialisation -----------------------------------------------------------------------------

function stats(v: Float32Array): { mean: number; std: number } {
  let m = 0;
  for (const x of v) m += x;
  m /= v.length;
  let s = 0;
  for (const x of v) s += (x - m) ** 2;
  return { mean: m, std: Math.sqrt(s / v.length) };
}

test('initialisation like torchvision: kaiming_normal fan_out convs, BN 1/0, MobileNetV2 Linear N(0, 0.01); zeroInitResidual', () => {
  manualSeed(3);
  const r = models.create('resnet18_imagenet') as models.ResNetImageNet;
  const w = (r.layer1.at(0) as models.BasicBlockImageNet).conv1.weight; // [64, 64, 3, 3], fan_out 576
  const s = stats(w.values);
  assert.ok(Math.abs(s.std / Math.sqrt(2 / 576) - 1) < 0.03, `std ${s.std}`);
  assert.ok(Math.abs(s.mean) < 0.003);
  const bn = r.bn1;
  assert.ok(bn.weight!.values.every((v) => v === 1) && bn.bias!.values.every((v) => v === 0));
  // fc keeps PyTorch's default U(-1/√512, 1/√512)
  assert.ok(r.fc.weight.values.every((v) => Math.abs(v) <= 1 / Math.sqrt(512)));
  assert.ok(stats(r.fc.weight.values).std > 0.02);
  // the seeded default generator makes it reproducible
  manualSeed(3);
  assert.deepEqual((models.create('resnet18_imagenet') as models.ResNetImageNet).conv1.weight.values, r.conv1.weight.values);

  const m = models.create('tv_mobilenet_v2') as models.MobileNetV2ImageNet;
  const fc = m.classifier.at(1) as nn.Linear;
  assert.ok(Math.abs(stats(fc.weight.values).std / 0.01 - 1) < 0.02);
  assert.ok(fc.bias!.values.every((v) => v === 0));

  const z = models.create('resnet50_imagenet', { zeroInitResidual: true }) as models.ResNetImageNet;
  for (const b of z.layer3.children() as models.BottleneckImageNet[]) {
    assert.ok(b.bn3.weight!.values.every((v) => v === 0));
    assert.ok(b.bn2.weight!.values.every((v) => v === 1));
  }
  const zc = models.create('resnet34', { zeroInitResidual: true }) as models.ResNetCifar;
  for (const b of zc.layer2.children() as models.BasicBlock[]) assert.ok(b.bn2.weight!.values.every((v) => v === 0));
});

// ---- fine-tuning ----------------------------------------------------------------------------------

test('fine-tuning from an ImageNet torch.save checkpoint to 10 classes: non-strict load, new head, frozen backbone', async () => {
  const weights = path.join(FIXTURES, 'tv_resnet50.pth');
  const sd = await loadPth(weights);
  // Built with the new class count: the 1000-class head is skipped, everything else loaded.
  const net = models.create('resnet50_imagenet', { numClasses: 10 }) as models.ResNetImageNet;
  const r = await models.prepareFineTune(net, { weights, numClasses: 10, freeze: 'backbone' });
  assert.equal(r.head, 'fc');
  assert.deepEqual(r.skippedHead, ['fc.weight', 'fc.bias']);
  assert.equal(r.loaded, 318);
  assert.equal(r.replacedHead, false);
  assert.deepEqual(net.layer4.stateDict().get('0.conv2.weight')!.values, sd.get('layer4.0.conv2.weight')!.values);
  assert.deepEqual(net.fc.weight.shape, [10, 2048]);
  assert.equal(r.trainableParams, 2048 * 10 + 10);
  assert.equal(net.numParameters(true), 20_490);
  assert.ok(net.conv1.weight.requiresGrad === false && net.fc.weight.requiresGrad);
  assert.ok(r.lines.some((l) => /loaded 318 of 320 tensors/.test(l)));
  // Built with 1000 classes: everything loads, then the head is replaced.
  const net2 = models.create('resnet50_imagenet');
  const r2 = await models.prepareFineTune(net2, { weights: sd, numClasses: 10 });
  assert.equal(r2.loaded, 320);
  assert.equal(r2.replacedHead, true);
  assert.equal(models.findClassifier(net2).layer.outFeatures, 10);
  assert.equal(net2.numParameters(true), net2.numParameters());
  // MobileNetV2's head is classifier.1
  const mv2 = models.create('tv_mobilenet_v2', { numClasses: 4 });
  const r3 = await models.prepareFineTune(mv2, { weights: path.join(FIXTURES, 'tv_mobilenet_v2.pth'), freeze: 'backbone' });
  assert.equal(r3.head, 'classifier.1');
  assert.deepEqual(r3.skippedHead, ['classifier.1.weight', 'classifier.1.bias']);
  assert.equal(r3.trainableParams, 1280 * 4 + 4);
  const logits = noGrad(() => mv2.eval().forward(tensor(new Float32Array(3 * 32 * 32).fill(0.5), [1, 3, 32, 32])));
  assert.deepEqual(logits.shape, [1, 4]);
  // The wrong form of the model is a clear error, not a silent partial load.
  await assert.rejects(models.prepareFineTune(models.create('resnet50', { numClasses: 10 }), { weights }), (e: Error) => {
    assert.ok(!e.message.includes('\n'));
    assert.match(e.message, /tv_resnet50\.pth: the checkpoint does not fit ResNet50 outside its classifier: .*missing key.*\(CIFAR vs ImageNet form of the model\?\)/);
    return true;
  });
});

test('freeze and replaceClassifier', () => {
  const net = models.create('mobilenetv1', { numClasses: 10 });
  assert.deepEqual(models.freeze(net, 'all'), { trainable: 0, total: net.numParameters() });
  assert.equal(models.freeze(net, 'backbone').trainable, 1024 * 10 + 10);
  assert.equal(models.freeze(net, 'none').trainable, net.numParameters());
  const fc = models.replaceClassifier(net, 3);
  assert.deepEqual(fc.weight.shape, [3, 1024]);
  assert.equal((net as models.MobileNetV1).fc, fc);
  assert.equal([...net.stateDict().keys()].at(-1), 'fc.bias');
  assert.throws(() => models.freeze(net, 'head' as models.FreezeMode), /mode must be one of backbone, none, all/);
  assert.throws(() => models.replaceClassifier(net, 0), /positive integer/);
  // a gradient step only reaches the head when the backbone is frozen
  models.freeze(net, 'backbone');
  net.train();
  const loss = F.crossEntropy(net.forward(tensor(new Float32Array(2 * 3 * 8 * 8).fill(0.3), [2, 3, 8, 8])), [0, 2]);
  loss.backward();
  assert.equal((net as models.MobileNetV1).conv1.weight.grad, null);
  assert.ok(fc.weight.grad instanceof Tensor);
});
