// Which backend computes. The fastest one that loads is chosen by default;
// `setBackend(name)` or the CONVNETS_BACKEND environment variable override it.
import type { Backend } from './backend.js';
import { referenceBackend } from './reference.js';
import { loadNativeBackend } from './native.js';

const backends = new Map<string, Backend>([[referenceBackend.name, referenceBackend]]);
let current: Backend | null = null;
let warned = false;

function nativeOrNull(): Backend | null {
  if (backends.has('native')) return backends.get('native')!;
  const r = loadNativeBackend();
  if (r.backend) {
    backends.set('native', r.backend);
    return r.backend;
  }
  if (!warned && process.env.CONVNETS_BACKEND !== 'reference') {
    warned = true;
    process.stderr.write(`convnets: native CPU backend unavailable (${r.reason}); using the slow reference backend. Fix: install a C toolchain (g++, make, python3) and run \`npm rebuild convnets\`.\n`);
  }
  return null;
}

/** Names of the backends that are available on this machine. */
export function listBackends(): string[] {
  nativeOrNull();
  return [...backends.keys()];
}

export function getBackend(): Backend {
  if (current) return current;
  const want = process.env.CONVNETS_BACKEND;
  if (want) {
    setBackend(want);
    return current!;
  }
  current = nativeOrNull() ?? referenceBackend;
  return current;
}

export function setBackend(name: string): Backend {
  if (name === 'native') {
    const b = nativeOrNull();
    if (!b) throw new Error(`backend "native" is not available on this machine (see the message above)`);
    current = b;
    return b;
  }
  const b = backends.get(name);
  if (!b) throw new Error(`unknown backend "${name}"; available: ${listBackends().join(', ')}`);
  current = b;
  return b;
}

/** Run `fn` with backend `name`, restoring the previous one afterwards. */
export function withBackend<T>(name: string, fn: () => T): T {
  const prev = current;
  setBackend(name);
  try {
    return fn();
  } finally {
    current = prev;
  }
}
