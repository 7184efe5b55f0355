export { Module, describeLoadProblems, type StateDict, type StateDictLike, type LoadResult } from './module.js';
export { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Identity, Linear, MaxPool2d, ReLU, ReLU6, Sequential, uniformParameter } from './layers.js';
export { Parameter } from '../tensor/tensor.js';
export * as functional from '../tensor/functional.js';
