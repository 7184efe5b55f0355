// summary(net, inputShape): a per-layer table of output shapes, parameters and
// multiply-accumulates (MACs), like torchsummary / ptflops / thop, from one forward pass.
//
// MACs are counted the usual way (thop, ptflops' conv/linear part): a conv costs
// out_elements × (C_in / groups) × kh × kw, a linear layer in × out per sample; BatchNorm,
// activations, pooling, dropout and additions count 0. With these rules ResNet-50 is 4.09 G,
// MobileNetV2 0.30 G and MobileNetV1 0.569 G at 224×224.
//
// Layer outputs are recorded by temporarily wrapping `forward` of every leaf module (a module
// without children) with a recording function for the duration of the pass; how models
// compute is not changed, and the wrappers are removed afterwards even when the pass throws.
import { noGrad, zeros, formatShape, type Tensor } from '../tensor/tensor.js';
import type { Module } from '../nn/module.js';
import { Conv2d, Linear } from '../nn/layers.js';

export interface SummaryRow {
  /** Dotted module name (as in the state dict), e.g. 'layer1.0.conv2'. */
  name: string;
  /** Module type as printed, e.g. 'Conv2d'. */
  type: string;
  inputShape: number[];
  outputShape: number[];
  /** Parameters of this module itself (counted on its first call only). */
  params: number;
  macs: number;
}

/** A depthwise conv + the 1×1 pointwise conv after it, against one standard conv doing the same map. */
export interface SeparableComparison {
  /** Common prefix of the two convs' names (the block), e.g. 'layers.3'. */
  block: string;
  depthwise: string;
  pointwise: string;
  inputShape: number[];
  outputShape: number[];
  /** MACs of depthwise + pointwise. */
  macs: number;
  /** MACs of a standard kh×kw conv with the same input and output shapes. */
  standardMacs: number;
  /** standardMacs / macs (the paper's "8–9× less computation" for 3×3). */
  ratio: number;
}

export interface ModelSummary {
  model: string;
  inputShape: number[];
  outputShape: number[];
  rows: SummaryRow[];
  totalParams: number;
  trainableParams: number;
  totalMacs: number;
  /** Depthwise-separable pairs (MobileNets); empty for nets without depthwise convs. */
  separable: SeparableComparison[];
  /** The table, ready to print. */
  text: string;
}

export interface SummaryOptions {
  /** Batch size of the forward pass when inputShape is [C, H, W] (default 1). */
  batchSize?: number;
}

/** MACs of one call of a leaf module. */
export function layerMacs(m: Module, output: Tensor): number {
  if (m instanceof Conv2d) {
    const [kh, kw] = m.kernelSize;
    return output.size * (m.inChannels / m.groups) * kh * kw;
  }
  if (m instanceof Linear) return (output.size / m.outFeatures) * m.inFeatures * m.outFeatures;
  return 0;
}

/**
 * Run `net` once on zeros of `inputShape` ([C, H, W], or [N, C, H, W]) in eval mode without
 * gradients (restoring each module's train/eval mode afterwards) and tabulate every leaf
 * layer's output shape, parameters and MACs.
 */
export function summary(net: Module, inputShape: readonly number[], opts: SummaryOptions = {}): ModelSummary {
  const shape = inputShape.length === 3 ? [opts.batchSize ?? 1, ...inputShape] : [...inputShape];
  if (shape.length !== 4 || shape.some((d) => !Number.isInteger(d) || d < 1)) {
    throw new Error(`summary: input shape must be [C, H, W] or [N, C, H, W] of positive integers, got ${formatShape(inputShape)}`);
  }
  const rows: SummaryRow[] = [];
  const modules: Module[] = [];
  const seen = new Set<Module>();
  const names = net.namedModules();
  const leaves = names.filter(([, m]) => m.namedChildren().length === 0);
  const modes = names.map(([, m]) => m.training);
  const restore: (() => void)[] = [];
  try {
    for (const [name, m] of leaves) {
      const own = Object.getOwnPropertyDescriptor(m, 'forward');
      const orig = m.forward;
      const wrapped = (...xs: Tensor[]): Tensor => {
        const y = orig.apply(m, xs);
        rows.push({
          name: name || m.name(),
          type: m.name(),
          inputShape: xs[0] ? [...xs[0].shape] : [],
          outputShape: [...y.shape],
          params: seen.has(m) ? 0 : m.numParameters(), // a leaf: its own parameters
          macs: layerMacs(m, y),
        });
        modules.push(m);
        seen.add(m);
        return y;
      };
      Object.defineProperty(m, 'forward', { value: wrapped, configurable: true, writable: true, enumerable: false });
      restore.push(() => {
        if (own) Object.defineProperty(m, 'forward', own);
        else delete (m as { forward?: unknown }).forward;
      });
    }
    net.eval();
    const out = noGrad(() => net.forward(zeros(shape)));
    const totalMacs = rows.reduce((s, r) => s + r.macs, 0);
    const separable = findSeparable(rows, modules);
    const res: ModelSummary = {
      model: net.name(),
      inputShape: shape,
      outputShape: [...out.shape],
      rows,
      totalParams: net.numParameters(),
      trainableParams: net.numParameters(true),
      totalMacs,
      separable,
      text: '',
    };
    res.text = formatSummary(res);
    return res;
  } finally {
    for (const r of restore) r();
    names.forEach(([, m], i) => (m.training = modes[i]));
  }
}

function commonPrefix(a: string, b: string): string {
  const pa = a.split('.');
  const pb = b.split('.');
  const out: string[] = [];
  for (let i = 0; i < Math.min(pa.length, pb.length) && pa[i] === pb[i]; i++) out.push(pa[i]);
  return out.join('.');
}

function findSeparable(rows: SummaryRow[], modules: Module[]): SeparableComparison[] {
  const out: SeparableComparison[] = [];
  let dw: number | null = null;
  for (let i = 0; i < rows.length; i++) {
    const m = modules[i];
    if (!(m instanceof Conv2d)) continue;
    const isDepthwise = m.groups > 1 && m.groups === m.inChannels && m.outChannels === m.inChannels && (m.kernelSize[0] > 1 || m.kernelSize[1] > 1);
    if (isDepthwise) {
      dw = i;
      continue;
    }
    if (dw !== null) {
      const d = modules[dw] as Conv2d;
      if (m.kernelSize[0] === 1 && m.kernelSize[1] === 1 && m.groups === 1 && m.inChannels === d.outChannels) {
        const [kh, kw] = d.kernelSize;
        const outShape = rows[i].outputShape;
        const outElems = outShape.reduce((a, b) => a * b, 1);
        const standardMacs = outElems * d.inChannels * kh * kw;
        const macs = rows[dw].macs + rows[i].macs;
        out.push({
          block: commonPrefix(rows[dw].name, rows[i].name) || rows[dw].name,
          depthwise: rows[dw].name,
          pointwise: rows[i].name,
          inputShape: rows[dw].inputShape,
          outputShape: outShape,
          macs,
          standardMacs,
          ratio: standardMacs / macs,
        });
      }
    }
    dw = null;
  }
  return out;
}

// ---- formatting -------------------------------------------------------------------------------

function thousands(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** 4.09 G, 300.77 M, 13.6 K … */
export function formatMacs(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(2)} K`;
  return String(n);
}

function table(header: string[], body: string[][], align: ('l' | 'r')[]): string[] {
  const widths = header.map((h, c) => Math.max(h.length, ...body.map((r) => r[c].length)));
  const fmt = (r: string[]): string => r.map((s, c) => (align[c] === 'l' ? s.padEnd(widths[c]) : s.padStart(widths[c]))).join('  ').trimEnd();
  const total = widths.reduce((a, b) => a + b, 0) + 2 * (widths.length - 1);
  return ['-'.repeat(total), fmt(header), '='.repeat(total), ...body.map(fmt), '='.repeat(total)];
}

const dims = (s: readonly number[]): string => `[${s.join(', ')}]`;

/** The printable table of a summary (summary().text). */
export function formatSummary(s: ModelSummary): string {
  const lines: string[] = [`${s.model}: input ${dims(s.inputShape)} -> output ${dims(s.outputShape)}`];
  lines.push(
    ...table(
      ['Layer (type)', 'Output shape', 'Params', 'MACs'],
      s.rows.map((r) => [`${r.name} (${r.type})`, dims(r.outputShape), thousands(r.params), thousands(r.macs)]),
      ['l', 'l', 'r', 'r'],
    ),
  );
  const perSample = s.inputShape[0] > 1 ? ` (${formatMacs(s.totalMacs / s.inputShape[0])} per image)` : '';
  lines.push(
    `Total params: ${thousands(s.totalParams)}`,
    `Trainable params: ${thousands(s.trainableParams)}`,
    `Non-trainable params: ${thousands(s.totalParams - s.trainableParams)}`,
    `Total MACs: ${formatMacs(s.totalMacs)}${perSample} (${thousands(s.totalMacs)}; conv and linear layers)`,
    `Parameter size (float32): ${((s.totalParams * 4) / 2 ** 20).toFixed(2)} MB`,
  );
  if (s.separable.length) {
    lines.push('', 'Depthwise-separable convolutions vs a standard conv with the same input and output shapes:');
    lines.push(
      ...table(
        ['Block', 'Input -> output', 'Separable MACs', 'Standard MACs', 'Saving'],
        s.separable.map((c) => [c.block, `${dims(c.inputShape.slice(1))} -> ${dims(c.outputShape.slice(1))}`, thousands(c.macs), thousands(c.standardMacs), `${c.ratio.toFixed(1)}x`]),
        ['l', 'l', 'r', 'r', 'r'],
      ),
    );
    const sep = s.separable.reduce((a, c) => a + c.macs, 0);
    const std = s.separable.reduce((a, c) => a + c.standardMacs, 0);
    lines.push(`All ${s.separable.length} blocks: ${formatMacs(sep)} MACs instead of ${formatMacs(std)}: ${(std / sep).toFixed(1)}x less computation`);
  }
  return lines.join('\n');
}
