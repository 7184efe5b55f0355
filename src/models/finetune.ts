// Fine-tuning helpers: find / replace the classifier head, freeze the backbone, and load a
// pretrained checkpoint (e.g. ImageNet weights with 1000 classes) into a net with another
// class count: load non-strict, then replace the head.
import { Module, describeLoadProblems, type LoadResult, type StateDictLike } from '../nn/module.js';
import { Linear, Sequential } from '../nn/layers.js';
import type { Tensor } from '../tensor/tensor.js';
import { loadWeights } from '../io/weights.js';

export type FreezeMode = 'backbone' | 'none' | 'all';
export const FREEZE_MODES: readonly FreezeMode[] = ['backbone', 'none', 'all'];

export interface ClassifierHead {
  /** Dotted name of the head, 'fc' or 'classifier.1'. */
  name: string;
  layer: Linear;
  /** Put another Linear in its place (same position in the module tree). */
  replace(layer: Linear): void;
}

/** The classifier: a Linear `fc` (ResNet, MobileNetV1, CIFAR MobileNetV2) or the last Linear of `classifier` (torchvision MobileNetV2). */
export function findClassifier(net: Module): ClassifierHead {
  const own = net as unknown as Record<string, unknown>;
  if (own.fc instanceof Linear) {
    return { name: 'fc', layer: own.fc, replace: (l) => void (own.fc = l) };
  }
  const cls = own.classifier;
  if (cls instanceof Sequential && cls.length > 0) {
    const i = cls.length - 1;
    const last = cls.at(i);
    if (last instanceof Linear) return { name: `classifier.${i}`, layer: last, replace: (l) => cls.set(i, l) };
  }
  if (cls instanceof Linear) return { name: 'classifier', layer: cls, replace: (l) => void (own.classifier = l) };
  throw new Error(`${net.name()}: no classifier head found (expected a Linear "fc" or a "classifier" Sequential ending in a Linear)`);
}

/** Replace the classifier with a fresh Linear(in_features, numClasses) (PyTorch's default init). */
export function replaceClassifier(net: Module, numClasses: number): Linear {
  if (!Number.isInteger(numClasses) || numClasses < 1) throw new Error(`replaceClassifier: numClasses must be a positive integer, got ${numClasses}`);
  const head = findClassifier(net);
  const layer = new Linear(head.layer.inFeatures, numClasses, { bias: head.layer.bias !== null });
  head.replace(layer);
  return layer;
}

/**
 * Set which parameters train: 'backbone' freezes everything except the classifier head,
 * 'all' freezes everything, 'none' unfreezes everything. (BatchNorm running statistics still
 * update in train mode; call eval() on frozen parts to keep them fixed.)
 */
export function freeze(net: Module, mode: FreezeMode): { trainable: number; total: number } {
  if (!FREEZE_MODES.includes(mode)) throw new Error(`freeze: mode must be one of ${FREEZE_MODES.join(', ')}, got "${String(mode)}"`);
  net.requiresGrad(mode === 'none');
  if (mode === 'backbone') findClassifier(net).layer.requiresGrad(true);
  return { trainable: net.numParameters(true), total: net.numParameters() };
}

export interface FineTuneOptions {
  /** A weights file (safetensors or .pth/.pt, see loadWeights) or an in-memory state dict. */
  weights?: string | StateDictLike;
  /** New class count: the head is replaced when it differs. */
  numClasses?: number;
  freeze?: FreezeMode;
}

export interface FineTuneReport {
  /** Tensors copied from the checkpoint. */
  loaded: number;
  /** Checkpoint tensors of the head that were not used (its shape differs). */
  skippedHead: string[];
  /** Missing `num_batches_tracked` buffers (checkpoints from old PyTorch versions). */
  missingCounters: string[];
  head: string;
  replacedHead: boolean;
  load: LoadResult | null;
  trainableParams: number;
  totalParams: number;
  /** One line per step, for the CLI. */
  lines: string[];
}

/**
 * Prepare `net` for fine-tuning: load `weights` non-strictly (keys outside the classifier must
 * match exactly; a head of another class count is skipped), replace the head when `numClasses`
 * differs, then freeze as asked.
 */
export async function prepareFineTune(net: Module, opts: FineTuneOptions): Promise<FineTuneReport> {
  const lines: string[] = [];
  let head = findClassifier(net);
  const headKeys = new Set([`${head.name}.weight`, `${head.name}.bias`]);
  let load: LoadResult | null = null;
  let loaded = 0;
  let skippedHead: string[] = [];
  let missingCounters: string[] = [];
  if (opts.weights !== undefined) {
    const source = typeof opts.weights === 'string' ? opts.weights : 'state dict';
    const state: Map<string, Tensor> | Record<string, Tensor> = typeof opts.weights === 'string' ? await loadWeights(opts.weights) : opts.weights;
    load = net.loadStateDict(state, { strict: false, source });
    missingCounters = load.missingKeys.filter((k) => k.endsWith('num_batches_tracked'));
    const problems: LoadResult = {
      missingKeys: load.missingKeys.filter((k) => !headKeys.has(k) && !k.endsWith('num_batches_tracked')),
      unexpectedKeys: load.unexpectedKeys.filter((k) => !headKeys.has(k)),
      mismatchedKeys: load.mismatchedKeys.filter((m) => !headKeys.has(m.key)),
    };
    if (problems.missingKeys.length || problems.unexpectedKeys.length || problems.mismatchedKeys.length) {
      throw new Error(`${source}: the checkpoint does not fit ${net.name()} outside its classifier: ${describeLoadProblems(problems)} (CIFAR vs ImageNet form of the model?)`);
    }
    skippedHead = [...load.mismatchedKeys.map((m) => m.key), ...load.missingKeys.filter((k) => headKeys.has(k))];
    const total = net.stateDict().size;
    loaded = total - load.missingKeys.length - load.mismatchedKeys.length;
    lines.push(`loaded ${loaded} of ${total} tensors from ${source}` + (skippedHead.length ? ` (classifier ${head.name} not loaded: ${load.mismatchedKeys.length ? 'its shape differs' : 'not in the checkpoint'})` : ''));
  }
  let replacedHead = false;
  if (opts.numClasses !== undefined && opts.numClasses !== head.layer.outFeatures) {
    const old = head.layer.outFeatures;
    replaceClassifier(net, opts.numClasses);
    head = findClassifier(net);
    replacedHead = true;
    lines.push(`classifier ${head.name}: new Linear(${head.layer.inFeatures}, ${opts.numClasses}) replaces the ${old}-class head`);
  }
  if (opts.freeze) {
    const r = freeze(net, opts.freeze);
    lines.push(`freeze ${opts.freeze}: ${r.trainable.toLocaleString('en-US')} of ${r.total.toLocaleString('en-US')} parameters trainable`);
  }
  return {
    loaded,
    skippedHead,
    missingCounters,
    head: head.name,
    replacedHead,
    load,
    trainableParams: net.numParameters(true),
    totalParams: net.numParameters(),
    lines,
  };
}
