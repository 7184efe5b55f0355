// Helpers shared by the model definitions.
import { Tensor, formatShape } from '../tensor/tensor.js';

/** Check a model input is (N, channels, H, W) with H, W ≥ minSize; one-line error otherwise. */
export function checkImageInput(model: string, x: Tensor, channels = 3, minSize = 1): void {
  if (x.ndim !== 4 || x.shape[1] !== channels || x.shape[0] < 1) {
    throw new Error(`${model}.forward: expected input of shape [N, ${channels}, H, W], got ${formatShape(x.shape)}`);
  }
  if (x.shape[2] < minSize || x.shape[3] < minSize) {
    throw new Error(`${model}.forward: input ${formatShape(x.shape)} is too small; this model needs H and W of at least ${minSize}`);
  }
}
