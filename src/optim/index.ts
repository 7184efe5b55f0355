export { Optimizer, Adam, AdamW, SGD, type AdamOptions, type SgdOptions, type OptimizerStateDict, type ParamState } from './optimizer.js';
