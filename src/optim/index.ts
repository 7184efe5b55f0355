export { Optimizer, Adam, SGD, type AdamOptions, type SgdOptions, type OptimizerStateDict, type ParamState } from './optimizer.js';
