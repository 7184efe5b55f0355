// models.summary: per-layer shapes, parameters and MACs from one forward pass; totals against the
// published figures (ResNet-50 4.09 G, MobileNetV2 0.30 G, MobileNetV1 0.569 G at 224, α = 0.25
// at 128: 0.0136 G), the depthwise-separable comparison, and that it leaves the model as it was.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { models, nn, tensor } from '../src/index.js';

const near = (got: number, want: number, rel = 0.005): boolean => Math.abs(got / want - 1) <= rel;

test('MAC totals: ResNet-50 4.09 G, MobileNetV2 0.30 G, MobileNetV1 0.569 G at 224; α = 0.25 at 128: 0.0136 G', () => {
  const cases: [string, models.ModelOptions, number[], number, number][] = [
    ['resnet50_imagenet', {}, [3, 224, 224], 4.09e9, 25_557_032],
    ['mobilenetv2_imagenet', {}, [3, 224, 224], 0.3e9, 3_504_872],
    ['mobilenetv1_imagenet', {}, [3, 224, 224], 0.569e9, 4_231_976],
    ['mobilenetv1_imagenet', { alpha: 0.25 }, [3, 128, 128], 0.0136e9, 470_072],
  ];
  for (const [name, opts, shape, macs, params] of cases) {
    const s = models.summary(models.create(name, opts), shape);
    assert.ok(near(s.totalMacs, macs), `${name} ${JSON.stringify(opts)}: ${s.totalMacs} MACs vs ${macs}`);
    assert.equal(s.totalParams, params);
    assert.equal(s.trainableParams, params);
    assert.deepEqual(s.outputShape, [1, 1000]);
    assert.equal(s.totalMacs, s.rows.reduce((a, r) => a + r.macs, 0));
  }
});

test('rows: names, types, output shapes, parameters and MACs per layer (ResNet-18 CIFAR)', () => {
  const net = models.create('resnet18');
  const s = models.summary(net, [3, 32, 32]);
  const conv1 = s.rows[0];
  assert.deepEqual(conv1, { name: 'conv1', type: 'Conv2d', inputShape: [1, 3, 32, 32], outputShape: [1, 64, 32, 32], params: 1728, macs: 64 * 32 * 32 * 27 });
  const fc = s.rows.at(-1)!;
  assert.deepEqual(fc, { name: 'fc', type: 'Linear', inputShape: [1, 512], outputShape: [1, 10], params: 5130, macs: 5120 });
  const sc = s.rows.find((r) => r.name === 'layer2.0.shortcut.0')!;
  assert.deepEqual(sc.outputShape, [1, 128, 16, 16]);
  assert.equal(sc.macs, 128 * 16 * 16 * 64);
  assert.ok(s.rows.filter((r) => r.type === 'BatchNorm2d').every((r) => r.macs === 0));
  // every parameter belongs to exactly one row
  assert.equal(s.rows.reduce((a, r) => a + r.params, 0), net.numParameters());
  assert.equal(s.totalMacs, 555_422_720);
  // the empty `shortcut` Sequential of identity blocks is a leaf with no parameters
  assert.ok(s.rows.some((r) => r.name === 'layer1.0.shortcut' && r.type === 'Sequential' && r.params === 0));
});

test('a batch multiplies the MACs; [N, C, H, W] input shapes are accepted', () => {
  const net = models.create('mobilenetv1', { alpha: 0.25 });
  const one = models.summary(net, [3, 32, 32]);
  const four = models.summary(net, [4, 3, 32, 32]);
  assert.equal(four.totalMacs, 4 * one.totalMacs);
  assert.deepEqual(models.summary(net, [3, 32, 32], { batchSize: 4 }).totalMacs, four.totalMacs);
  assert.match(four.text, /per image/);
});

test('text: a readable table with totals; MobileNets get the depthwise-separable comparison (8-9x)', () => {
  const s = models.summary(models.create('mobilenetv1_imagenet'), [3, 224, 224]);
  assert.match(s.text, /^MobileNetV1: input \[1, 3, 224, 224\] -> output \[1, 1000\]/);
  assert.match(s.text, /Layer \(type\) +Output shape +Params +MACs/);
  assert.match(s.text, /conv1 \(Conv2d\) +\[1, 32, 112, 112\] +864 +10,838,016/);
  assert.match(s.text, /Total params: 4,231,976\nTrainable params: 4,231,976\nNon-trainable params: 0\nTotal MACs: 568\.74 M/);
  assert.equal(s.separable.length, 13);
  for (const c of s.separable) assert.ok(c.ratio > 7.8 && c.ratio < 9, `${c.block}: ${c.ratio}`);
  assert.equal(s.separable[0].block, 'layers.0');
  assert.deepEqual(s.separable[0].inputShape, [1, 32, 112, 112]);
  assert.deepEqual(s.separable[0].outputShape, [1, 64, 112, 112]);
  // standard 3×3 conv 32→64 on 112×112 vs depthwise + pointwise
  assert.equal(s.separable[0].standardMacs, 112 * 112 * 64 * 32 * 9);
  assert.equal(s.separable[0].macs, 112 * 112 * 32 * 9 + 112 * 112 * 32 * 64);
  assert.match(s.text, /Depthwise-separable convolutions vs a standard conv/);
  assert.match(s.text, /All 13 blocks: .* MACs instead of .*: 8\.\dx less computation/);
  // MobileNetV2 (torchvision): the depthwise + projection pair of each of its 17 blocks
  const v2 = models.summary(models.create('tv_mobilenet_v2'), [3, 64, 64]);
  assert.equal(v2.separable.length, 17);
  assert.equal(v2.separable[1].block, 'features.2.conv');
  // ResNet has no depthwise convs: no comparison section
  const r = models.summary(models.create('resnet18_imagenet'), [3, 64, 64]);
  assert.equal(r.separable.length, 0);
  assert.ok(!/Depthwise/.test(r.text));
  assert.match(r.text, /Total params: 11,689,512/);
});

test('summary leaves the model as it was: modes restored, forward unwrapped, even when the pass fails', () => {
  const net = models.create('mobilenetv2');
  net.train();
  (net as models.MobileNetV2).layers.at(0).eval(); // a mixed state
  const before = net.modules().map((m) => m.training);
  const bnBefore = (net as models.MobileNetV2).bn1.runningMean!.values.slice();
  models.summary(net, [3, 32, 32]);
  assert.deepEqual(net.modules().map((m) => m.training), before);
  assert.deepEqual((net as models.MobileNetV2).bn1.runningMean!.values, bnBefore, 'eval mode: running stats untouched');
  for (const m of net.modules()) assert.ok(!Object.prototype.hasOwnProperty.call(m, 'forward'));
  assert.throws(() => models.summary(net, [4, 32, 32]), /expected input of shape \[N, 3, H, W\]/);
  for (const m of net.modules()) assert.ok(!Object.prototype.hasOwnProperty.call(m, 'forward'));
  assert.deepEqual(net.modules().map((m) => m.training), before);
  assert.throws(() => models.summary(net, [3, 32]), /input shape must be \[C, H, W\] or \[N, C, H, W\]/);
  // the model still computes normally afterwards (and records nothing)
  const y = (net as models.MobileNetV2).eval().forward(tensor(new Float32Array(3 * 8 * 8), [1, 3, 8, 8]));
  assert.deepEqual(y.shape, [1, 10]);
});

test('layerMacs counts conv (grouped) and linear, nothing else', () => {
  const dw = new nn.Conv2d(8, 8, 3, { padding: 1, groups: 8 });
  const y = dw.forward(tensor(new Float32Array(2 * 8 * 5 * 5), [2, 8, 5, 5]));
  assert.equal(models.layerMacs(dw, y), 2 * 8 * 5 * 5 * 9);
  const lin = new nn.Linear(6, 4);
  assert.equal(models.layerMacs(lin, lin.forward(tensor(new Float32Array(18), [3, 6]))), 3 * 24);
  assert.equal(models.layerMacs(new nn.ReLU(), y), 0);
  assert.equal(models.formatMacs(4.0892e9), '4.09 G');
  assert.equal(models.formatMacs(300_774_272), '300.77 M');
});
