// ONNX export: graph structure read back with protobufjs, numerics against onnxruntime-node
// (an optional dependency: those tests skip when it is not installed) and, where Debian's
// python3-onnx is installed, the official checker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { F, Generator, models, nn, noGrad, tensor, type Tensor } from '../src/index.js';
import { exportOnnx, exportOnnxBytes } from '../src/io/onnx.js';
import { decodeModel, type ModelProtoObj } from '../src/io/onnx_proto.js';
import { setTracer } from '../src/tensor/functional.js';
import { Module } from '../src/nn/module.js';

// ---- onnxruntime-node, loaded only if installed ----------------------------------------------

interface OrtTensor {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}
interface OrtSession {
  run(feeds: Record<string, unknown>): Promise<Record<string, OrtTensor>>;
  release?(): Promise<void>;
}
interface Ort {
  InferenceSession: { create(model: Uint8Array | string, opts?: Record<string, unknown>): Promise<OrtSession> };
  Tensor: new (type: 'float32', data: Float32Array, dims: readonly number[]) => unknown;
}

async function loadOrt(): Promise<Ort | null> {
  const spec = 'onnxruntime-node'; // a variable: the module is optional, tsc must not resolve it
  try {
    const m = (await import(spec)) as Ort & { default?: Ort };
    return m.InferenceSession ? m : (m.default ?? null);
  } catch {
    return null;
  }
}

const ort = await loadOrt();
const noOrt = ort ? false : 'onnxruntime-node is not installed (optional dependency)';

const PY = '/usr/bin/python3';
const hasPyOnnx = spawnSync(PY, ['-c', 'import onnx'], { stdio: 'ignore' }).status === 0;

// ---- helpers -----------------------------------------------------------------------------------

function opCounts(m: ModelProtoObj): Record<string, number> {
  const c: Record<string, number> = {};
  for (const n of m.graph.node) c[n.opType] = (c[n.opType] ?? 0) + 1;
  return c;
}

function dims(v: ModelProtoObj['graph']['input'][number]): (number | string)[] {
  return v.type.tensorType.shape.dim.map((d) => d.dimParam ?? Number(d.dimValue));
}

/** Every node input is the graph input, an initializer or an earlier node's output. */
function assertTopological(m: ModelProtoObj): void {
  const known = new Set<string>([...m.graph.input.map((v) => v.name), ...m.graph.initializer.map((t) => t.name!)]);
  for (const n of m.graph.node) {
    for (const i of n.input) assert.ok(i === '' || known.has(i), `node ${n.name} (${n.opType}) reads undefined value ${i}`);
    for (const o of n.output) {
      assert.ok(!known.has(o), `value ${o} defined twice`);
      known.add(o);
    }
  }
  for (const o of m.graph.output) assert.ok(known.has(o.name), `output ${o.name} is not produced`);
}

/** Give BatchNorm statistics and affine parameters non-trivial values (seeded). */
function randomiseBatchNorm(net: Module, seed: number): void {
  const g = new Generator(seed);
  for (const m of net.modules()) {
    if (!(m instanceof nn.BatchNorm2d)) continue;
    const fill = (t: Tensor | null, lo: number, hi: number): void => {
      if (t) for (let i = 0; i < t.size; i++) t.values[i] = g.uniform(lo, hi);
    };
    fill(m.runningMean, -0.2, 0.2);
    fill(m.runningVar, 0.5, 1.5);
    fill(m.weight, 0.5, 1.5);
    fill(m.bias, -0.2, 0.2);
  }
}

function randomInput(shape: number[], seed: number): Tensor {
  const g = new Generator(seed);
  const v = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < v.length; i++) v[i] = g.uniform(-1, 1);
  return tensor(v, shape);
}

function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

/** Run the model bytes with onnxruntime and with our forward (eval mode) on the same input. */
async function compareWithOrt(net: Module, bytes: Uint8Array, x: Tensor): Promise<number> {
  const sess = await ort!.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const r = await sess.run({ input: new ort!.Tensor('float32', x.values, x.shape) });
  await sess.release?.();
  net.eval();
  const ours = noGrad(() => net.forward(x));
  assert.deepEqual([...r.output.dims], [...ours.shape]);
  return relL2(r.output.data, ours.values);
}

const SEED_MODELS: Record<string, { counts: Record<string, number> }> = {
  // CIFAR forms: V1 = stem + 13 depthwise-separable blocks (2 convs each); V2 = stem + a t=1
  // block (2 convs) + 16 blocks of 3 convs, 10 identity shortcuts, ReLU6 after all but the
  // projections (no 1280-channel head); ResNet-18 = stem + 16 block convs + 3 shortcut convs.
  mobilenetv1: { counts: { Conv: 27, BatchNormalization: 27, Relu: 27, GlobalAveragePool: 1, Flatten: 1, Gemm: 1 } },
  mobilenetv2: { counts: { Conv: 51, BatchNormalization: 51, Clip: 34, Constant: 2, Add: 10, GlobalAveragePool: 1, Flatten: 1, Gemm: 1 } },
  resnet18: { counts: { Conv: 20, BatchNormalization: 20, Relu: 17, Add: 8, GlobalAveragePool: 1, Flatten: 1, Gemm: 1 } },
};

// ---- structure -----------------------------------------------------------------------------------

for (const [name, { counts }] of Object.entries(SEED_MODELS)) {
  test(`${name}: exported graph has the expected ops, initializers named by state-dict keys, symbolic batch`, async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'convnets-onnx-'));
    try {
      const net = models.create(name);
      net.train(); // export must trace in eval mode and give the training flags back
      const file = path.join(dir, `${name}.onnx`);
      const res = await exportOnnx(net, [1, 3, 32, 32], file);
      assert.ok(net.modules().every((m) => m.training), 'training flags restored');
      assert.deepEqual(await readdir(dir), [`${name}.onnx`], 'no temporary file left behind');
      const bytes = await readFile(file);
      assert.equal(res.bytes, bytes.length);
      const m = decodeModel(bytes);

      assert.equal(Number(m.irVersion), 8);
      assert.deepEqual(m.opsetImport.map((o) => [o.domain ?? '', Number(o.version)]), [['', 17]]);
      assert.equal(m.producerName, 'convnets');
      assert.deepEqual(opCounts(m), counts);
      assert.deepEqual(res.opCounts, counts);
      // the Conv count is the number of 4-d weights, one BatchNormalization per BatchNorm2d
      const sd = net.stateDict();
      assert.equal(counts.Conv, [...sd.values()].filter((t) => t.ndim === 4).length);
      assert.equal(counts.BatchNormalization, net.modules().filter((mm) => mm instanceof nn.BatchNorm2d).length);

      // initializers: exactly the state dict minus the num_batches_tracked counters, in order, bit-exact
      const expectKeys = [...sd.keys()].filter((k) => !k.endsWith('num_batches_tracked'));
      assert.deepEqual(m.graph.initializer.map((t) => t.name), expectKeys);
      assert.deepEqual(res.initializers, expectKeys);
      for (const init of m.graph.initializer) {
        const t = sd.get(init.name!)!;
        assert.deepEqual(init.dims.map(Number), [...t.shape], init.name);
        assert.equal(init.dataType, 1);
        const raw = init.rawData!;
        assert.equal(raw.length, t.size * 4, init.name);
        const back = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
        assert.deepEqual(back, t.values, init.name);
      }
      assert.equal(m.graph.input.length, 1);
      assert.equal(m.graph.input[0].name, 'input');
      assert.deepEqual(dims(m.graph.input[0]), ['N', 3, 32, 32]);
      assert.deepEqual(m.graph.output.map((o) => [o.name, dims(o)]), [['output', ['N', 10]]]);
      assertTopological(m);

      // nodes are named after their modules; convolution attributes follow the layer
      const conv1 = m.graph.node.find((n) => n.name === 'conv1')!;
      assert.equal(conv1.opType, 'Conv');
      assert.deepEqual(conv1.input, ['input', 'conv1.weight']);
      const attr = (n: typeof conv1, a: string): number | number[] | undefined => {
        const at = n.attribute.find((x) => x.name === a);
        return at?.ints?.length ? at.ints.map(Number) : at?.i !== undefined ? Number(at.i) : at?.f;
      };
      assert.deepEqual(attr(conv1, 'kernel_shape'), [3, 3]);
      assert.deepEqual(attr(conv1, 'pads'), [1, 1, 1, 1]);
      assert.deepEqual(attr(conv1, 'strides'), [1, 1]);
      assert.equal(attr(conv1, 'group'), 1);
      const bn1 = m.graph.node.find((n) => n.name === 'bn1')!;
      assert.deepEqual(bn1.input, ['conv1', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var']);
      assert.ok(Math.abs((attr(bn1, 'epsilon') as number) - 1e-5) < 1e-10);
      const fc = m.graph.node.find((n) => n.name === 'fc')!;
      assert.equal(fc.opType, 'Gemm');
      assert.deepEqual(fc.input.slice(1), ['fc.weight', 'fc.bias']);
      assert.equal(attr(fc, 'transB'), 1);
      assert.deepEqual(fc.output, ['output']);
      if (name === 'mobilenetv2') {
        const dw = m.graph.node.find((n) => n.name === 'layers.1.conv.3')!; // 3x3 depthwise, stride 1, 96 channels
        assert.equal(dw.opType, 'Conv');
        assert.equal(attr(dw, 'group'), 96);
        const clip = m.graph.node.find((n) => n.opType === 'Clip')!;
        assert.equal(clip.input.length, 3, 'Clip takes min and max as inputs (opset ≥ 11)');
      }
      if (name === 'mobilenetv1') {
        const dw = m.graph.node.find((n) => n.name === 'layers.1.depthwise')!; // [128, 2]: stride 2 on 64 channels
        assert.equal(attr(dw, 'group'), 64);
        assert.deepEqual(attr(dw, 'strides'), [2, 2]);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}

test('opset 13 and a fixed batch size are available; the tracer is removed afterwards', () => {
  const net = models.create('mobilenetv2');
  const { bytes, info } = exportOnnxBytes(net, [2, 3, 16, 16], { opset: 13, dynamicBatch: false });
  const m = decodeModel(bytes);
  assert.equal(Number(m.irVersion), 7);
  assert.equal(Number(m.opsetImport[0].version), 13);
  assert.equal(info.opset, 13);
  assert.deepEqual(dims(m.graph.input[0]), [2, 3, 16, 16]);
  assert.deepEqual(dims(m.graph.output[0]), [2, 10]);
  assert.equal(setTracer(null), null, 'no tracer left installed');
  assert.throws(() => exportOnnxBytes(net, [1, 3, 32, 32], { opset: 11 as 13 }), /opset 11 is not supported/);
  assert.throws(() => exportOnnxBytes(net, [1, 3, 0, 32]), /inputShape must be positive integers/);
});

// ---- small custom models: the other ops and the errors ------------------------------------------

class Small extends Module {
  conv = new nn.Conv2d(3, 8, 3, { stride: 1, padding: 1 }); // with bias
  bn = new nn.BatchNorm2d(8, { affine: false });
  act = new nn.ReLU6();
  pool = new nn.MaxPool2d(3, { stride: 2, padding: 1 });
  avg = new nn.AdaptiveAvgPool2d(2);
  flat = new nn.Flatten();
  drop = new nn.Dropout(0.5);
  fc = new nn.Linear(32, 5, { bias: false });
  forward(x: Tensor): Tensor {
    let y = this.pool.forward(this.act.forward(this.bn.forward(this.conv.forward(x))));
    y = F.mul(F.relu(y), 0.5);
    y = this.drop.forward(this.flat.forward(this.avg.forward(y)));
    return F.logSoftmax(this.fc.forward(y));
  }
}

test('other ops: MaxPool, AveragePool for divisible sizes, Mul by a constant, Gemm without bias, LogSoftmax; eval dropout leaves no node', () => {
  const net = new Small();
  const { bytes, info } = exportOnnxBytes(net, [1, 3, 8, 8]);
  const m = decodeModel(bytes);
  assert.deepEqual(
    m.graph.node.filter((n) => n.opType !== 'Constant').map((n) => n.opType),
    ['Conv', 'BatchNormalization', 'Clip', 'MaxPool', 'Relu', 'Mul', 'AveragePool', 'Flatten', 'Gemm', 'LogSoftmax'],
  );
  assert.deepEqual(info.initializers, ['conv.weight', 'conv.bias', 'bn.running_mean', 'bn.running_var', 'fc.weight', 'bn.onnx_unit_scale', 'bn.onnx_zero_bias']);
  const avg = m.graph.node.find((n) => n.opType === 'AveragePool')!;
  assert.deepEqual(avg.attribute.find((a) => a.name === 'kernel_shape')!.ints!.map(Number), [2, 2]);
  assertTopological(m);
});

test('errors: ops outside an inference graph, unequal adaptive pooling windows, constants made in forward()', () => {
  class Loss extends Module {
    fc = new nn.Linear(4, 3);
    forward(x: Tensor): Tensor {
      return F.sum(this.fc.forward(x));
    }
  }
  assert.throws(() => exportOnnxBytes(new Loss(), [2, 4]), /op sum cannot be exported/);
  class Pool extends Module {
    forward(x: Tensor): Tensor {
      return F.adaptiveAvgPool2d(x, 3);
    }
  }
  assert.throws(() => exportOnnxBytes(new Pool(), [1, 2, 8, 8]), /from 8x8 to 3x3 has windows of unequal size/);
  class Const extends Module {
    forward(x: Tensor): Tensor {
      return F.add(x, tensor(new Float32Array(x.size), x.shape));
    }
  }
  assert.throws(() => exportOnnxBytes(new Const(), [1, 4]), /neither the input, a parameter or buffer/);
  class NoStats extends Module {
    bn = new nn.BatchNorm2d(2, { trackRunningStats: false });
    forward(x: Tensor): Tensor {
      return this.bn.forward(x);
    }
  }
  assert.throws(() => exportOnnxBytes(new NoStats(), [2, 2, 2, 2]), /only evaluation-mode BatchNorm with running statistics/);
  assert.equal(setTracer(null), null, 'the tracer is removed after a failed export');
});

// ---- numerics against onnxruntime ---------------------------------------------------------------

for (const name of Object.keys(SEED_MODELS)) {
  test(`${name}: onnxruntime output equals our forward (traced at batch 1, run at batch 3)`, { skip: noOrt }, async () => {
    const net = models.create(name);
    randomiseBatchNorm(net, 11);
    const { bytes } = exportOnnxBytes(net, [1, 3, 32, 32]);
    const err = await compareWithOrt(net, bytes, randomInput([3, 3, 32, 32], 5));
    assert.ok(err <= 1e-4, `relative L2 ${err}`);
  });
}

test('custom ops and opset 13: onnxruntime output equals our forward', { skip: noOrt }, async () => {
  const net = new Small();
  randomiseBatchNorm(net, 3);
  const { bytes } = exportOnnxBytes(net, [1, 3, 8, 8], { opset: 13 });
  const err = await compareWithOrt(net, bytes, randomInput([4, 3, 8, 8], 9));
  assert.ok(err <= 1e-4, `relative L2 ${err}`);
});

test('the official ONNX checker accepts the exports (full check, strict shape inference)', { skip: hasPyOnnx ? false : 'python3-onnx not installed' }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'convnets-onnx-'));
  try {
    const files = [path.join(dir, 'mobilenetv2.onnx'), path.join(dir, 'small.onnx')];
    await exportOnnx(models.create('mobilenetv2'), [1, 3, 32, 32], files[0]);
    await exportOnnx(new Small(), [1, 3, 8, 8], files[1], { opset: 13 });
    const script = [
      'import sys, onnx',
      'from onnx import checker, shape_inference',
      'for p in sys.argv[1:]:',
      '    m = onnx.load(p)',
      '    checker.check_model(m, full_check=True)',
      '    shape_inference.infer_shapes(m, check_type=True, strict_mode=True)',
      'print("ok")',
    ].join('\n');
    const r = spawnSync(PY, ['-c', script, ...files], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /ok/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
