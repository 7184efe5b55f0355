/**
 * Training checkpoints and weight files, as safetensors.
 *
 * checkpoint.safetensors (everything needed to continue a run exactly):
 *   - tensors `model.<key>`: the model's state dict (PyTorch key names, counters as I64);
 *   - tensors `optimizer.<i>.<buffer>`: optimiser buffers of parameter i (PyTorch's
 *     optimizer.state_dict() numbering), e.g. `optimizer.0.exp_avg`;
 *   - metadata (strings; JSON where structured): format, version, epoch (completed epochs),
 *     global_step, optimizer ({type, param_groups, steps}), rng (default generator state),
 *     config (the full run configuration), history (per-epoch metrics), extra.
 *
 * model.safetensors: the state dict alone under PyTorch's key names
 * (`torch.nn.Module.load_state_dict(safetensors.torch.load_file(...))` works as is).
 *
 * Every problem with a file the user gave us is a one-line DataError naming the file.
 */
import { DataError } from '../data/errors.js';
import { open } from 'node:fs/promises';
import { loadPth } from '../io/pth.js';
import { readSafetensorsFile, writeSafetensorsFile, type RawTensor, type SafetensorsFile, type WritableTensor } from '../io/safetensors.js';
import { detectWeightsFormat, tensorsOf, toWritable } from '../io/weights.js';
import type { Module } from '../nn/module.js';
import type { HyperParams, Optimizer, OptimizerStateDict, ParamState } from '../optim/optimizer.js';
import { Tensor } from '../tensor/tensor.js';

export const CHECKPOINT_FORMAT = 'convnets-checkpoint';
export const CHECKPOINT_VERSION = '1';

/** What the trainer stores besides the tensors. */
export interface CheckpointMeta<C = unknown, H = unknown> {
  /** Completed epochs. */
  epoch: number;
  /** Optimiser steps taken so far (the schedule position). */
  globalStep: number;
  config: C;
  history: H[];
  /** State of the default generator after the epoch. */
  rng: number[];
  /** Anything else worth checking on resume (e.g. the training-set size). */
  extra?: Record<string, unknown>;
}

export interface LoadedCheckpoint<C = unknown, H = unknown> extends CheckpointMeta<C, H> {
  path: string;
  model: Map<string, Tensor>;
  optimizerType: string;
  optimizer: OptimizerStateDict;
}

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

/** Read a safetensors file, turning every failure into a one-line DataError naming `path`. */
/**
 * Read a weights file: safetensors (ours, with metadata), or a PyTorch `torch.save` state dict
 * (.pth/.pt; no metadata), told apart by magic bytes. Errors are one-line DataErrors.
 */
export async function readWeightsFile(path: string): Promise<SafetensorsFile> {
  try {
    const fd = await open(path, 'r');
    let head: Uint8Array;
    try {
      const buf = new Uint8Array(16);
      const { bytesRead } = await fd.read(buf, 0, 16, 0);
      head = buf.subarray(0, bytesRead);
    } finally {
      await fd.close();
    }
    const kind = detectWeightsFormat(head);
    if (kind === 'pth' || kind === 'pickle') {
      const tensors = new Map<string, RawTensor>();
      for (const [k, t] of await loadPth(path)) tensors.set(k, { dtype: 'F32', shape: [...t.shape], data: t.values, sourceDtype: t.dtype === 'int64' ? 'I64' : 'F32' });
      return { tensors, metadata: {} };
    }
    return await readSafetensorsFile(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e?.code === 'ENOENT') throw new DataError(`${path}: no such file`, { cause: err });
    if (e?.code === 'EISDIR') throw new DataError(`${path}: is a directory, expected a .safetensors or .pth file`, { cause: err });
    if (e?.code === 'EACCES') throw new DataError(`${path}: permission denied`, { cause: err });
    const msg = oneLine(e?.message ?? String(err));
    throw new DataError(msg.startsWith(path) ? msg : `${path}: ${msg}`, { cause: err });
  }
}


/** Save the model's weights alone (PyTorch key names). Deterministic bytes for equal weights. */
export async function saveModelWeights(path: string, net: Module, metadata: Record<string, string> = {}): Promise<void> {
  await writeSafetensorsFile(path, toWritable(net.stateDict()), { format: 'pt', ...metadata });
}

/**
 * Load weights into `net` from a model file (PyTorch keys) or from a training checkpoint
 * (keys `model.*`, detected by its metadata). Strict: every key and shape must match.
 */
export async function loadModelWeights(path: string, net: Module): Promise<{ fromCheckpoint: boolean; metadata: Record<string, string> }> {
  const f = await readWeightsFile(path);
  const fromCheckpoint = f.metadata.format === CHECKPOINT_FORMAT;
  const sd = tensorsOf(f, fromCheckpoint ? 'model.' : '');
  if (sd.size === 0) throw new DataError(`${path}: contains no tensors; expected model weights`);
  try {
    net.loadStateDict(sd, { strict: true, source: path });
  } catch (err) {
    const msg = oneLine((err as Error).message);
    throw new DataError(`${msg}${msg.includes('missing key') || msg.includes('shape mismatch') ? ' (wrong --model or --num-classes for these weights?)' : ''}`, { cause: err });
  }
  return { fromCheckpoint, metadata: f.metadata };
}

/** Write checkpoint.safetensors atomically. */
export async function saveCheckpoint<C, H>(path: string, net: Module, optimizer: Optimizer<HyperParams>, meta: CheckpointMeta<C, H>): Promise<void> {
  const tensors = new Map<string, WritableTensor>();
  for (const [k, t] of toWritable(net.stateDict())) tensors.set(`model.${k}`, t);
  const osd = optimizer.stateDict();
  const steps: [number, number][] = [];
  for (const [i, s] of osd.state) {
    steps.push([i, s.step]);
    for (const [name, b] of s.buffers) tensors.set(`optimizer.${i}.${name}`, { shape: b.shape, data: b.values });
  }
  const metadata: Record<string, string> = {
    format: CHECKPOINT_FORMAT,
    version: CHECKPOINT_VERSION,
    epoch: String(meta.epoch),
    global_step: String(meta.globalStep),
    optimizer: JSON.stringify({ type: optimizer.constructor.name.toLowerCase(), param_groups: osd.paramGroups, steps }),
    rng: JSON.stringify(meta.rng),
    config: JSON.stringify(meta.config),
    history: JSON.stringify(meta.history),
    extra: JSON.stringify(meta.extra ?? {}),
  };
  await writeSafetensorsFile(path, tensors, metadata);
}

/** Read and validate checkpoint.safetensors (does not touch any model). */
export async function readCheckpoint<C = unknown, H = unknown>(path: string): Promise<LoadedCheckpoint<C, H>> {
  const f = await readWeightsFile(path);
  const m = f.metadata;
  const bad = (what: string): never => {
    throw new DataError(`${path}: not a valid convnets training checkpoint (${what}); delete it or choose another --out`);
  };
  if (m.format !== CHECKPOINT_FORMAT) bad(`metadata "format" is ${JSON.stringify(m.format ?? null)}, expected "${CHECKPOINT_FORMAT}"`);
  if (m.version !== CHECKPOINT_VERSION) bad(`unsupported version ${JSON.stringify(m.version ?? null)}`);
  const json = (key: string): unknown => {
    if (m[key] === undefined) bad(`metadata "${key}" is missing`);
    try {
      return JSON.parse(m[key]);
    } catch {
      return bad(`metadata "${key}" is not valid JSON`);
    }
  };
  const epoch = Number(m.epoch);
  const globalStep = Number(m.global_step);
  if (!Number.isSafeInteger(epoch) || epoch < 0) bad(`bad epoch ${JSON.stringify(m.epoch ?? null)}`);
  if (!Number.isSafeInteger(globalStep) || globalStep < 0) bad(`bad global_step ${JSON.stringify(m.global_step ?? null)}`);
  const opt = json('optimizer') as { type?: unknown; param_groups?: unknown; steps?: unknown };
  if (!opt || typeof opt.type !== 'string' || !Array.isArray(opt.param_groups) || !Array.isArray(opt.steps)) bad('malformed optimizer state');
  const rng = json('rng');
  if (!Array.isArray(rng) || rng.length !== 4) bad('malformed rng state');
  const history = json('history');
  if (!Array.isArray(history)) bad('malformed history');
  const config = json('config') as C;
  if (!config || typeof config !== 'object') bad('malformed config');
  const extra = json('extra') as Record<string, unknown>;

  const state = new Map<number, ParamState>();
  for (const entry of opt.steps as unknown[]) {
    if (!Array.isArray(entry) || entry.length !== 2 || !Number.isSafeInteger(entry[0]) || !Number.isSafeInteger(entry[1])) bad('malformed optimizer steps');
    const [i, step] = entry as [number, number];
    state.set(i, { step, buffers: new Map() });
  }
  for (const [k, t] of tensorsOf(f, 'optimizer.')) {
    const dot = k.indexOf('.');
    const i = Number(k.slice(0, dot));
    const s = state.get(i);
    if (dot < 0 || !s) return bad(`unexpected tensor optimizer.${k}`);
    s.buffers.set(k.slice(dot + 1), t);
  }
  return {
    path,
    epoch,
    globalStep,
    config,
    history: history as H[],
    rng: rng as number[],
    extra: extra ?? {},
    model: tensorsOf(f, 'model.'),
    optimizerType: opt.type as string,
    optimizer: { state, paramGroups: opt.param_groups as OptimizerStateDict['paramGroups'] },
  };
}

/** Load a checkpoint's model and optimiser state (errors are DataErrors naming the file). */
export function restoreCheckpoint(ck: LoadedCheckpoint, net: Module, optimizer: Optimizer<HyperParams>): void {
  const type = optimizer.constructor.name.toLowerCase();
  if (ck.optimizerType !== type) {
    throw new DataError(`${ck.path}: the checkpoint holds ${ck.optimizerType} state, this run uses ${type}`);
  }
  try {
    net.loadStateDict(ck.model, { strict: true, source: ck.path });
    optimizer.loadStateDict(ck.optimizer, ck.path);
  } catch (err) {
    throw new DataError(oneLine((err as Error).message), { cause: err });
  }
}
