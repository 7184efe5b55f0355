// convnets: MobileNet V1/V2 and ResNet in TypeScript, equal to PyTorch.
export { Tensor, Parameter, tensor, zeros, ones, full, noGrad, isGradEnabled } from './tensor/tensor.js';
export * as F from './tensor/functional.js';
export { Generator, manualSeed, defaultGenerator } from './tensor/random.js';
export * as nn from './nn/index.js';
export * as optim from './optim/index.js';
export * as models from './models/index.js';
export { loadSafetensors, saveSafetensors } from './io/weights.js';
export { getBackend, setBackend, listBackends, withBackend } from './backend/registry.js';
export type { Backend } from './backend/backend.js';
export { loadWeights } from './io/weights.js';
export { loadPth } from './io/pth.js';
export { exportOnnx } from './io/onnx.js';
export { summary, formatSummary } from './models/summary.js';
export { prepareFineTune, replaceClassifier, freeze } from './models/finetune.js';
export { cifar10, CIFAR10_CLASSES } from './data/cifar10.js';
export { DataLoader } from './data/dataloader.js';
export { train } from './train/trainer.js';
