// Loader for the native CPU backend (C kernels via Node-API, built by node-gyp at install).
// Placeholder until the native addon lands: reports why it is unavailable.
import type { Backend } from './backend.js';

export function loadNativeBackend(): { backend: Backend | null; reason: string } {
  return { backend: null, reason: 'the native addon is not part of this build yet' };
}
