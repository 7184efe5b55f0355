// Model weights on disk: state dicts as safetensors files (PyTorch key names).
import { Tensor } from '../tensor/tensor.js';
import type { StateDictLike } from '../nn/module.js';
import { readSafetensorsFile, writeSafetensorsFile, type WritableTensor } from './safetensors.js';

/** Read a safetensors file into a map of tensors (every dtype converted to float32). */
export async function loadSafetensors(path: string): Promise<Map<string, Tensor>> {
  const f = await readSafetensorsFile(path);
  const out = new Map<string, Tensor>();
  for (const [k, t] of f.tensors) {
    const tt = new Tensor(t.data, t.shape);
    if (t.sourceDtype === 'I64' || t.sourceDtype === 'I32') tt.dtype = 'int64';
    out.set(k, tt);
  }
  return out;
}

/** Convert tensors for writing: float32 as F32, counters (dtype 'int64') as I64 like PyTorch. */
export function toWritable(state: StateDictLike): Map<string, WritableTensor> {
  const entries = state instanceof Map ? [...state] : Object.entries(state);
  const out = new Map<string, WritableTensor>();
  for (const [k, t] of entries) {
    if (t.dtype === 'int64') out.set(k, { shape: t.shape, data: BigInt64Array.from(t.values, (v) => BigInt(Math.round(v))) });
    else out.set(k, { shape: t.shape, data: t.values });
  }
  return out;
}

/** Write a state dict (e.g. net.stateDict()) atomically as a safetensors file. */
export async function saveSafetensors(path: string, state: StateDictLike, metadata?: Record<string, string>): Promise<void> {
  await writeSafetensorsFile(path, toWritable(state), metadata);
}
