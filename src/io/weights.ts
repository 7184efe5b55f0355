// Model weights on disk: state dicts as safetensors files (PyTorch key names); loadWeights also
// reads PyTorch .pth/.pt files (src/io/pth.ts).
import { Tensor } from '../tensor/tensor.js';
import type { StateDictLike } from '../nn/module.js';
import { readFile } from 'node:fs/promises';
import { parseSafetensors, readSafetensorsFile, writeSafetensorsFile, type SafetensorsFile, type WritableTensor } from './safetensors.js';
import { parsePth } from './pth.js';

/**
 * The tensors of a parsed safetensors file whose names start with `prefix` (the prefix removed),
 * as float32 tensors; integer entries (e.g. num_batches_tracked) are marked dtype 'int64'.
 */
export function tensorsOf(f: SafetensorsFile, prefix = ''): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [k, t] of f.tensors) {
    if (!k.startsWith(prefix)) continue;
    const tt = new Tensor(t.data, t.shape);
    if (t.sourceDtype === 'I64' || t.sourceDtype === 'I32') tt.dtype = 'int64';
    out.set(k.slice(prefix.length), tt);
  }
  return out;
}

/** Read a safetensors file into a map of tensors (every dtype converted to float32). */
export async function loadSafetensors(path: string): Promise<Map<string, Tensor>> {
  return tensorsOf(await readSafetensorsFile(path));
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

/** What a weights file holds, judged by its first bytes. */
export function detectWeightsFormat(head: Uint8Array): 'safetensors' | 'pth' | 'pickle' | 'unknown' {
  if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && (head[2] === 0x03 || head[2] === 0x05)) return 'pth';
  if (head.length >= 1 && head[0] === 0x80) return 'pickle';
  if (head.length >= 9) {
    // safetensors: u64 little-endian header length, then a JSON object.
    const n = new DataView(head.buffer, head.byteOffset, head.byteLength).getBigUint64(0, true);
    if (n > 0n && n < 100_000_000n && head[8] === 0x7b) return 'safetensors';
  }
  return 'unknown';
}

/**
 * Load a state dict from a weights file of either format, chosen by its magic bytes (not its
 * extension): safetensors, or a PyTorch `.pth`/`.pt` written by torch.save (read without
 * executing anything, see src/io/pth.ts). Legacy/bare pickles are refused with a clear message.
 */
export async function loadWeights(path: string): Promise<Map<string, Tensor>> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new Error(`${path}: cannot read weights file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  switch (detectWeightsFormat(bytes.subarray(0, 16))) {
    case 'safetensors':
      return loadSafetensorsBytes(bytes, path);
    case 'pth':
    case 'pickle':
      return parsePth(bytes, path).tensors;
    default:
      throw new Error(`${path}: unrecognised weights format (expected a safetensors file or a PyTorch .pth/.pt state dict saved with torch.save)`);
  }
}

function loadSafetensorsBytes(bytes: Uint8Array, source: string): Map<string, Tensor> {
  return tensorsOf(parseSafetensors(bytes, source));
}
