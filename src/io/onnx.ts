// ONNX export: run one forward pass of a model in evaluation mode with an op tracer installed
// (src/tensor/functional.ts), turn the recorded ops into an ONNX graph and write it as a
// ModelProto (protobufjs, schema in onnx_proto.ts). Parameters and buffers become
// initializers named by their state-dict keys (`layers.0.conv.0.weight`), so a file opened in
// Netron reads like the PyTorch model, and the batch dimension is symbolic ("N").
//
// Op mapping: conv2d → Conv, eval batch_norm → BatchNormalization, relu → Relu,
// relu6 → Clip(0, 6), add → Add, mul → Mul, max_pool2d → MaxPool, adaptive_avg_pool2d →
// GlobalAveragePool (1×1) or AveragePool (sizes that divide the input), flatten/reshape →
// Flatten or Reshape, linear → Gemm (transB = 1), log_softmax → LogSoftmax; dropout in
// evaluation mode is the identity and leaves no node.
import type { F32 } from '../backend/backend.js';
import type { Module } from '../nn/module.js';
import { setTracer, type Tracer } from '../tensor/functional.js';
import { Tensor, formatShape, noGrad, zeros } from '../tensor/tensor.js';
import { writeFileAtomic } from './atomic.js';
import {
  AttributeType,
  DataType,
  encodeModel,
  type AttributeProtoObj,
  type DimensionObj,
  type ModelProtoObj,
  type NodeProtoObj,
  type TensorProtoObj,
  type ValueInfoProtoObj,
} from './onnx_proto.js';

export interface ExportOnnxOptions {
  /** ONNX opset of the default domain: 17 (default) or 13. */
  opset?: 13 | 17;
  /** Make the first (batch) dimension of the input, output and every value symbolic ("N"). Default true. */
  dynamicBatch?: boolean;
  /** Name of the graph input (default "input") and output (default "output"). */
  inputName?: string;
  outputName?: string;
  /** Graph name (default: the model's class name). */
  graphName?: string;
  /** ModelProto.producer_version (default empty). */
  producerVersion?: string;
  /** ModelProto.doc_string. */
  docString?: string;
}

export interface OnnxExportInfo {
  /** Number of nodes of each ONNX op type, e.g. { Conv: 52, BatchNormalization: 52, … }. */
  opCounts: Record<string, number>;
  /** Initializer names, in state-dict order. */
  initializers: string[];
  /** Shape of the traced output (batch dimension as traced). */
  outputShape: number[];
  opset: number;
  irVersion: number;
}

export interface OnnxExportResult extends OnnxExportInfo {
  path: string;
  bytes: number;
}

/** IR version that goes with each supported opset (opset 13 came with IR 7, opset 17 with IR 8). */
const IR_FOR_OPSET: Record<number, number> = { 13: 7, 17: 8 };

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function floatBytes(v: ArrayLike<number>): Uint8Array {
  if (LITTLE_ENDIAN && v instanceof Float32Array) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength).slice();
  const out = new Uint8Array(v.length * 4);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < v.length; i++) dv.setFloat32(i * 4, v[i], true);
  return out;
}

function int64Bytes(v: readonly number[]): Uint8Array {
  const out = new Uint8Array(v.length * 8);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < v.length; i++) dv.setBigInt64(i * 8, BigInt(v[i]), true);
  return out;
}

const attrInt = (name: string, i: number): AttributeProtoObj => ({ name, type: AttributeType.INT, i });
const attrInts = (name: string, ints: readonly number[]): AttributeProtoObj => ({ name, type: AttributeType.INTS, ints: [...ints] });
const attrFloat = (name: string, f: number): AttributeProtoObj => ({ name, type: AttributeType.FLOAT, f });

function asPair(v: unknown, what: string): [number, number] {
  if (Array.isArray(v) && v.length === 2 && v.every((x) => Number.isInteger(x))) return [v[0] as number, v[1] as number];
  throw new Error(`exportOnnx: internal error: ${what} is ${JSON.stringify(v)}`);
}

function stripSuffix(name: string, suffixes: readonly string[]): string {
  for (const s of suffixes) if (name.endsWith(s)) return name.slice(0, -s.length);
  return name;
}

/** Builds the graph from the traced ops. */
class GraphBuilder {
  readonly nodes: NodeProtoObj[] = [];
  /** Traced values (the graph input and op outputs) by tensor identity. */
  private readonly values = new Map<Tensor, string>();
  /** The latest traced value or parameter holding each storage buffer (to recognise reshapes). */
  private readonly byStorage = new Map<F32, Tensor>();
  /** Shapes of the values, by name. */
  readonly shapes = new Map<string, readonly number[]>();
  /** Parameters and buffers by tensor identity → state-dict key. */
  private readonly paramNames = new Map<Tensor, string>();
  /** Initializers referenced by the graph. */
  readonly usedParams = new Map<string, Tensor>();
  /** Initializers the exporter adds itself (e.g. a unit scale for a BatchNorm without affine). */
  readonly extraInitializers: TensorProtoObj[] = [];
  private readonly usedNames = new Set<string>();
  private readonly counters = new Map<string, number>();
  private readonly constants = new Map<string, string>();

  constructor(
    state: Iterable<[string, Tensor]>,
    private readonly dynamicBatch: boolean,
  ) {
    for (const [k, t] of state) {
      if (this.paramNames.has(t)) continue; // a shared tensor keeps its first name
      this.paramNames.set(t, k);
      this.usedNames.add(k);
      this.byStorage.set(t.values, t);
    }
  }

  unique(base: string): string {
    let name = base;
    for (let k = 1; this.usedNames.has(name); k++) name = `${base}_${k}`;
    this.usedNames.add(name);
    return name;
  }

  private autoName(opType: string): string {
    const k = this.counters.get(opType) ?? 0;
    this.counters.set(opType, k + 1);
    return this.unique(`${opType}_${k}`);
  }

  defineInput(t: Tensor, name: string): void {
    this.usedNames.add(name);
    this.values.set(t, name);
    this.byStorage.set(t.values, t);
    this.shapes.set(name, t.shape);
  }

  private paramName(t: Tensor): string | undefined {
    const name = this.paramNames.get(t);
    if (name !== undefined) this.usedParams.set(name, t);
    return name;
  }

  /** The ONNX value name of a tensor an op reads, adding a Flatten/Reshape node for a reshaped view. */
  ref(t: Tensor, op: string): string {
    const v = this.values.get(t);
    if (v !== undefined) return v;
    const p = this.paramName(t);
    if (p !== undefined) return p;
    const src = this.byStorage.get(t.values);
    if (src && src !== t && src.size === t.size) return this.reshape(src, t, op);
    throw new Error(
      `exportOnnx: ${op} reads a tensor of shape ${formatShape(t.shape)} that is neither the input, a parameter or buffer of the model, nor the result of a traced op (constants made inside forward() cannot be exported)`,
    );
  }

  private reshape(src: Tensor, t: Tensor, op: string): string {
    const srcName = this.ref(src, op);
    const sameBatch = src.ndim >= 1 && t.ndim >= 1 && t.shape[0] === src.shape[0];
    if (sameBatch && t.ndim === 2) {
      // flatten(1): t.shape[1] is the product of src's other dimensions since the sizes agree
      this.addNode('Flatten', this.autoName('Flatten'), [srcName], [attrInt('axis', 1)], t);
    } else if (sameBatch || !this.dynamicBatch) {
      // 0 copies the input's (batch) dimension, so the reshape follows a symbolic batch size.
      const target = sameBatch ? [0, ...t.shape.slice(1)] : [...t.shape];
      const shapeName = this.constantInt64(target);
      this.addNode('Reshape', this.autoName('Reshape'), [srcName, shapeName], [], t);
    } else {
      throw new Error(
        `exportOnnx: a reshape from ${formatShape(src.shape)} to ${formatShape(t.shape)} changes the batch dimension, which a graph with a symbolic batch size cannot express; export with dynamicBatch: false`,
      );
    }
    return this.values.get(t)!;
  }

  /** Add a node whose single output is the traced tensor `out`. */
  addNode(opType: string, name: string, inputs: string[], attribute: AttributeProtoObj[], out: Tensor): void {
    this.nodes.push({ name, opType, input: inputs, output: [name], attribute });
    this.values.set(out, name);
    this.byStorage.set(out.values, out);
    this.shapes.set(name, out.shape);
  }

  private constantNode(key: string, t: TensorProtoObj): string {
    const have = this.constants.get(key);
    if (have !== undefined) return have;
    const name = this.autoName('Constant');
    this.nodes.push({ name, opType: 'Constant', input: [], output: [name], attribute: [{ name: 'value', type: AttributeType.TENSOR, t }] });
    this.constants.set(key, name);
    return name;
  }

  /** A float scalar produced by a Constant node (shared between uses of the same value). */
  constantScalar(x: number): string {
    return this.constantNode(`f32:${x}`, { dims: [], dataType: DataType.FLOAT, rawData: floatBytes([x]) });
  }

  /** A 1-d int64 tensor produced by a Constant node. */
  constantInt64(v: readonly number[]): string {
    return this.constantNode(`i64:${v.join(',')}`, { dims: [v.length], dataType: DataType.INT64, rawData: int64Bytes(v) });
  }

  /** Base for a node's name: its first parameter's module path ("layers.0.conv.0"), else the op type. */
  private nameFrom(param: string | undefined, opType: string, suffixes: readonly string[]): string {
    return param !== undefined ? this.unique(stripSuffix(param, suffixes)) : this.autoName(opType);
  }

  /** Translate one traced op into ONNX nodes. */
  record(op: string, inputs: readonly (Tensor | null)[], out: Tensor, attrs: Readonly<Record<string, unknown>>): void {
    const need = (i: number): Tensor => {
      const t = inputs[i];
      if (!t) throw new Error(`exportOnnx: internal error: ${op} input ${i} is missing`);
      return t;
    };
    switch (op) {
      case 'conv2d': {
        const x = this.ref(need(0), op);
        const w = need(1);
        const wn = this.ref(w, op);
        const b = inputs[2] ? this.ref(inputs[2], op) : null;
        const [sh, sw] = asPair(attrs.stride, 'stride');
        const [ph, pw] = asPair(attrs.padding, 'padding');
        const name = this.nameFrom(this.paramNames.get(w), 'Conv', ['.weight']);
        this.addNode('Conv', name, b ? [x, wn, b] : [x, wn], [
          attrInts('dilations', [1, 1]),
          attrInt('group', attrs.groups as number),
          attrInts('kernel_shape', [w.shape[2], w.shape[3]]),
          attrInts('pads', [ph, pw, ph, pw]),
          attrInts('strides', [sh, sw]),
        ], out);
        return;
      }
      case 'batch_norm': {
        const [xt, rm, rv, w, b] = inputs;
        if (attrs.training || !rm || !rv) {
          throw new Error('exportOnnx: a BatchNorm normalises with batch statistics (training mode, or track_running_stats=False); only evaluation-mode BatchNorm with running statistics can be exported');
        }
        const x = this.ref(xt!, op);
        const mean = this.ref(rm, op);
        const vr = this.ref(rv, op);
        const prefix = stripSuffix(this.paramNames.get(rm) ?? this.autoName('BatchNormalization'), ['.running_mean']);
        const c = rm.size;
        const scale = w ? this.ref(w, op) : this.extraInitializer(`${prefix}.onnx_unit_scale`, new Float32Array(c).fill(1));
        const bias = b ? this.ref(b, op) : this.extraInitializer(`${prefix}.onnx_zero_bias`, new Float32Array(c));
        this.addNode('BatchNormalization', this.unique(prefix), [x, scale, bias, mean, vr], [attrFloat('epsilon', attrs.eps as number)], out);
        return;
      }
      case 'relu':
        this.addNode('Relu', this.autoName('Relu'), [this.ref(need(0), op)], [], out);
        return;
      case 'relu6': {
        const x = this.ref(need(0), op);
        this.addNode('Clip', this.autoName('Clip'), [x, this.constantScalar(0), this.constantScalar(6)], [], out);
        return;
      }
      case 'add':
        this.addNode('Add', this.autoName('Add'), [this.ref(need(0), op), this.ref(need(1), op)], [], out);
        return;
      case 'mul': {
        const a = this.ref(need(0), op);
        const b = inputs.length > 1 ? this.ref(need(1), op) : this.constantScalar(attrs.scalar as number);
        this.addNode('Mul', this.autoName('Mul'), [a, b], [], out);
        return;
      }
      case 'max_pool2d': {
        const [kh, kw] = asPair(attrs.kernelSize, 'kernel_size');
        const [sh, sw] = asPair(attrs.stride, 'stride');
        const [ph, pw] = asPair(attrs.padding, 'padding');
        this.addNode('MaxPool', this.autoName('MaxPool'), [this.ref(need(0), op)], [
          attrInts('kernel_shape', [kh, kw]),
          attrInts('pads', [ph, pw, ph, pw]),
          attrInts('strides', [sh, sw]),
        ], out);
        return;
      }
      case 'adaptive_avg_pool2d': {
        const xt = need(0);
        const x = this.ref(xt, op);
        const [oh, ow] = asPair(attrs.outputSize, 'output_size');
        const [h, w] = [xt.shape[2], xt.shape[3]];
        if (oh === 1 && ow === 1) {
          this.addNode('GlobalAveragePool', this.autoName('GlobalAveragePool'), [x], [], out);
        } else if (h % oh === 0 && w % ow === 0) {
          const k = [h / oh, w / ow];
          this.addNode('AveragePool', this.autoName('AveragePool'), [x], [attrInts('kernel_shape', k), attrInts('strides', k)], out);
        } else {
          throw new Error(`exportOnnx: adaptive_avg_pool2d from ${h}x${w} to ${oh}x${ow} has windows of unequal size; ONNX AveragePool can express it only when the output size divides the input size`);
        }
        return;
      }
      case 'linear': {
        const x = this.ref(need(0), op);
        const w = need(1);
        const wn = this.ref(w, op);
        const b = inputs[2] ? this.ref(inputs[2], op) : null;
        const name = this.nameFrom(this.paramNames.get(w), 'Gemm', ['.weight']);
        this.addNode('Gemm', name, b ? [x, wn, b] : [x, wn], [attrInt('transB', 1)], out);
        return;
      }
      case 'log_softmax':
        this.addNode('LogSoftmax', this.autoName('LogSoftmax'), [this.ref(need(0), op)], [attrInt('axis', 1)], out);
        return;
      case 'dropout':
        throw new Error('exportOnnx: dropout ran in training mode; export needs the model in evaluation mode (dropout is then the identity)');
      default:
        throw new Error(`exportOnnx: op ${op} cannot be exported to ONNX (losses and reductions are not part of an inference graph)`);
    }
  }

  private extraInitializer(base: string, v: Float32Array): string {
    const name = this.unique(base);
    this.extraInitializers.push({ name, dims: [v.length], dataType: DataType.FLOAT, rawData: floatBytes(v) });
    return name;
  }

  /** Rename a value everywhere (the final op's output becomes the graph output). */
  rename(from: string, to: string): void {
    for (const n of this.nodes) {
      n.input = n.input.map((s) => (s === from ? to : s));
      n.output = n.output.map((s) => (s === from ? to : s));
    }
    const shape = this.shapes.get(from);
    this.shapes.delete(from);
    if (shape) this.shapes.set(to, shape);
  }

  producedByNode(name: string): boolean {
    return this.nodes.some((n) => n.output.includes(name));
  }

  valueInfo(name: string, shape: readonly number[]): ValueInfoProtoObj {
    const dim: DimensionObj[] = shape.map((d, i) => (i === 0 && this.dynamicBatch ? { dimParam: 'N' } : { dimValue: d }));
    return { name, type: { tensorType: { elemType: DataType.FLOAT, shape: { dim } } } };
  }
}

function checkInputShape(inputShape: readonly number[]): void {
  if (inputShape.length < 1 || inputShape.some((d) => !Number.isInteger(d) || d < 1)) {
    throw new Error(`exportOnnx: inputShape must be positive integers, e.g. [1, 3, 32, 32]; got ${formatShape(inputShape)}`);
  }
}

/**
 * Trace `net` in evaluation mode on zeros of `inputShape` and build the ONNX ModelProto.
 * The model's training flags are restored afterwards. With a symbolic batch size (the
 * default), a reshape is exported as keeping the first dimension when the traced shapes keep
 * it, so trace with a batch size above 1 if forward() reshapes across the batch dimension.
 */
export function buildOnnxModel(net: Module, inputShape: readonly number[], opts: ExportOnnxOptions = {}): { model: ModelProtoObj; info: OnnxExportInfo } {
  checkInputShape(inputShape);
  const opset = opts.opset ?? 17;
  const irVersion = IR_FOR_OPSET[opset];
  if (irVersion === undefined) throw new Error(`exportOnnx: opset ${opset} is not supported (use 13 or 17)`);
  const dynamicBatch = opts.dynamicBatch ?? true;
  const inputName = opts.inputName ?? 'input';
  const outputName = opts.outputName ?? 'output';
  if (inputName === outputName) throw new Error('exportOnnx: inputName and outputName must differ');

  const state = [...net.stateDict()];
  const b = new GraphBuilder(state, dynamicBatch);
  if (state.some(([k]) => k === inputName || k === outputName)) throw new Error(`exportOnnx: the model has a parameter named "${inputName}" or "${outputName}"; choose other inputName/outputName`);
  const x = zeros(inputShape);
  b.defineInput(x, inputName);

  const modes = net.modules().map((m) => [m, m.training] as const);
  const onOp: Tracer = (op, inputs, output, attrs) => b.record(op, inputs, output, attrs);
  let y: Tensor;
  net.eval();
  const prev = setTracer(onOp);
  try {
    y = noGrad(() => net.forward(x));
  } finally {
    setTracer(prev);
    for (const [m, t] of modes) m.training = t;
  }
  if (!(y instanceof Tensor)) throw new Error('exportOnnx: forward() must return a single Tensor');

  const yName = b.ref(y, 'the output');
  if (b.producedByNode(yName) && yName !== inputName) {
    b.rename(yName, outputName);
  } else {
    b.nodes.push({ name: b.unique('Identity_output'), opType: 'Identity', input: [yName], output: [outputName], attribute: [] });
    b.shapes.set(outputName, y.shape);
  }

  const initializers: TensorProtoObj[] = [];
  const initNames: string[] = [];
  for (const [k, t] of state) {
    if (b.usedParams.get(k) !== t) continue;
    initializers.push({ name: k, dims: [...t.shape], dataType: DataType.FLOAT, rawData: floatBytes(t.values) });
    initNames.push(k);
  }
  for (const t of b.extraInitializers) {
    initializers.push(t);
    initNames.push(t.name!);
  }

  const valueInfo: ValueInfoProtoObj[] = [];
  for (const n of b.nodes) {
    for (const o of n.output) {
      const s = b.shapes.get(o);
      if (o !== outputName && n.opType !== 'Constant' && s) valueInfo.push(b.valueInfo(o, s));
    }
  }

  const opCounts: Record<string, number> = {};
  for (const n of b.nodes) opCounts[n.opType] = (opCounts[n.opType] ?? 0) + 1;

  const model: ModelProtoObj = {
    irVersion,
    opsetImport: [{ domain: '', version: opset }],
    producerName: 'convnets',
    producerVersion: opts.producerVersion ?? '',
    docString: opts.docString ?? '',
    graph: {
      name: opts.graphName ?? net.name(),
      node: b.nodes,
      initializer: initializers,
      input: [b.valueInfo(inputName, inputShape)],
      output: [b.valueInfo(outputName, y.shape)],
      valueInfo,
    },
  };
  return { model, info: { opCounts, initializers: initNames, outputShape: [...y.shape], opset, irVersion } };
}

/** The bytes of an .onnx file for `net` (see buildOnnxModel). */
export function exportOnnxBytes(net: Module, inputShape: readonly number[], opts: ExportOnnxOptions = {}): { bytes: Uint8Array; info: OnnxExportInfo } {
  const { model, info } = buildOnnxModel(net, inputShape, opts);
  return { bytes: encodeModel(model), info };
}

/**
 * Export `net` (traced in evaluation mode on zeros of `inputShape`, e.g. [1, 3, 32, 32]) to an
 * ONNX file at `path`, written atomically. The batch dimension is symbolic unless
 * `dynamicBatch: false`.
 */
export async function exportOnnx(net: Module, inputShape: readonly number[], path: string, opts: ExportOnnxOptions = {}): Promise<OnnxExportResult> {
  const { bytes, info } = exportOnnxBytes(net, inputShape, opts);
  await writeFileAtomic(path, bytes);
  return { ...info, path, bytes: bytes.length };
}
