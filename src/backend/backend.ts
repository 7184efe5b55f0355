// The backend interface: every numeric kernel the library uses, on raw float32 buffers.
//
// Autograd (src/tensor) decides *what* to compute and in which order; a backend only
// computes. All activations are contiguous NCHW float32 (PyTorch's default layout).
// Kernels return fresh output buffers unless the name ends in `InPlace` (allocated through
// arena.ts allocOutput, which recycles them inside a step arena).
// Every kernel of the interface must be implemented by every backend; the conformance
// suite (test/conformance.test.ts) runs the same PyTorch fixtures on each of them.

export type F32 = Float32Array;

/** Geometry of a 2-d convolution (dilation 1). */
export interface ConvGeom {
  n: number; // batch
  c: number; // input channels
  h: number; // input height
  w: number; // input width
  o: number; // output channels
  kh: number; // kernel height
  kw: number; // kernel width
  sh: number; // stride
  sw: number;
  ph: number; // zero padding
  pw: number;
  groups: number; // c % groups == 0 and o % groups == 0; depthwise: groups == c
  oh: number; // output height = floor((h + 2ph - kh) / sh) + 1
  ow: number;
}

/** Geometry of a 2-d pooling window (max pool). */
export interface PoolGeom {
  n: number;
  c: number;
  h: number;
  w: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  ph: number;
  pw: number;
  oh: number;
  ow: number;
}

export interface BatchNormTrainResult {
  y: F32; // (N, C, H, W) normalised, scaled and shifted
  mean: F32; // (C) batch mean
  varBiased: F32; // (C) batch variance, divided by N*H*W (used for normalising)
  invstd: F32; // (C) 1 / sqrt(varBiased + eps)
}

/** Statistics of a training-mode batch norm (per channel). */
export interface BatchNormStats {
  mean: F32; // (C) batch mean
  varBiased: F32; // (C) batch variance, divided by N*H*W
  invstd: F32; // (C) 1 / sqrt(varBiased + eps)
}

/** Activation fused into a batch-norm apply: 0 none, 1 ReLU, 2 ReLU6. */
export type Act = 0 | 1 | 2;
export const ACT_NONE: Act = 0;
export const ACT_RELU: Act = 1;
export const ACT_RELU6: Act = 2;

/** What conv2dFused applies to the convolution's output: batchNormApply's formula per output channel. */
export interface ConvEpilogue {
  mean: F32; // (O)
  scale: F32; // (O)
  shift: F32; // (O)
  res: F32 | null; // residual of the output's shape, added before the activation
  act: Act;
}

/**
 * What a convolution reads instead of its input x (training fusion): act((x - mean) * scale +
 * shift) per input channel, batchNormApply's formula — the batch norm and activation before the
 * convolution, never stored. (C) each.
 */
export interface InputTransform {
  mean: F32;
  scale: F32;
  shift: F32;
  act: Act;
}

/**
 * The apply pass of a batch norm + activation's backward (batchNormActBackward) as a transform of
 * the activation output's gradient g: dx = coef_kb * (g * mask - coef_mdy - (x - mean) * coef_q)
 * per channel, the mask recomputed from x with scale and shift as in batchNormApply. coef (3C):
 * from batchNormActBackwardCoefs.
 */
export interface BnBackwardTransform {
  x: F32;
  mean: F32;
  scale: F32;
  shift: F32;
  coef: F32;
  act: Act;
}

/** A 1x1 convolution with stride 1, no padding, one group (a GEMM over the channels). */
export function isPointwise(g: ConvGeom): boolean {
  return g.groups === 1 && g.kh === 1 && g.kw === 1 && g.sh === 1 && g.sw === 1 && g.ph === 0 && g.pw === 0;
}

/** Geometries whose conv2d / conv2dBackwardWeight take an InputTransform: pointwise or depthwise. */
export function inputTransformApplies(g: ConvGeom): boolean {
  return isPointwise(g) || (g.groups === g.c && g.o % g.c === 0);
}

/** A pointwise convolution with its eval batch norm and activation (conv2dBlock's expansion). */
export interface PointwiseStage {
  x: F32;
  w: F32;
  b: F32 | null;
  g: ConvGeom;
  epi: ConvEpilogue; // res must be null
}

/** A depthwise convolution with its eval batch norm and activation (conv2dAfterDepthwise). */
export interface DepthwiseStage {
  x: F32;
  w: F32;
  b: F32 | null;
  g: ConvGeom;
  epi: ConvEpilogue; // res must be null
}

export interface BatchNormGrads {
  dx: F32; // (N, C, H, W)
  dweight: F32; // (C)
  dbias: F32; // (C)
}

export interface AdamHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number; // 1-based step count after increment (for bias correction)
}

export interface SgdHyper {
  lr: number;
  momentum: number;
  dampening: number;
  nesterov: boolean;
  weightDecay: number;
  firstStep: boolean; // momentum buffer is initialised to the gradient on the first step
}

export interface Backend {
  readonly name: string;

  // ---- convolution ------------------------------------------------------------------
  // x: (N, C, H, W), w: (O, C/groups, KH, KW), b: (O) or null -> y: (N, O, OH, OW)
  // tf: convolve the transformed input instead (only where inputTransformApplies(g)); the same
  // floats as conv2d(batchNormApply(x, tf...), ...)
  conv2d(x: F32, w: F32, b: F32 | null, g: ConvGeom, tf?: InputTransform | null): F32;
  // conv2d followed by batchNormApply(y, epi.mean, epi.scale, epi.shift, epi.res, ..., epi.act) in
  // one pass (inference fusion; same arithmetic as the two calls)
  conv2dFused(x: F32, w: F32, b: F32 | null, g: ConvGeom, epi: ConvEpilogue): F32;
  // Optional (inference fusion): a pointwise convolution (1x1, stride 1) of act(bn(depthwise
  // convolution of dw.x)), optionally followed by epi — MobileNet's separable block with the
  // depthwise output computed on the fly and never stored. Same result as conv2dFused of the
  // depthwise layer followed by conv2d/conv2dFused of the pointwise one, to float32 rounding.
  // null where the backend or the geometry does not allow it (nothing computed).
  conv2dAfterDepthwise?(dw: DepthwiseStage, w: F32, b: F32 | null, g: ConvGeom, epi: ConvEpilogue | null): F32 | null;
  // Optional (inference fusion): MobileNetV2's inverted residual block — the pointwise
  // convolution (w, b, g) [+ epi] of act(bn(depthwise dw of act(bn(pointwise expand of
  // expand.x)))), both expanded intermediates computed image by image and never stored (dw.x is
  // ignored). Same floats as the three conv2dFused calls. null where the backend or the
  // geometry does not allow it (nothing computed).
  conv2dBlock?(expand: PointwiseStage, dw: DepthwiseStage, w: F32, b: F32 | null, g: ConvGeom, epi: ConvEpilogue | null): F32 | null;
  // dy: (N, O, OH, OW), w -> dx: (N, C, H, W)
  conv2dBackwardInput(dy: F32, w: F32, g: ConvGeom): F32;
  // Optional (training fusion): the same for a convolution whose input is act(batch norm(bx))
  // with t that batch norm's transform (act 1 or 2), also returning the partials of that batch
  // norm + activation's backward for dx (as conv2dBackwardBoth's bnParts), or null partials where
  // the backend's path does not compute them.
  conv2dBackwardInputBnParts?(dy: F32, w: F32, g: ConvGeom, bx: F32, t: InputTransform): { dx: F32; bnParts: F32 | null };
  // dy: (N, O, OH, OW), x: (N, C, H, W) -> dw: (O, C/groups, KH, KW); tf as in conv2d
  conv2dBackwardWeight(dy: F32, x: F32, g: ConvGeom, tf?: InputTransform | null): F32;
  // Optional: both gradients in one pass over dy (the same values as the two calls above), or
  // null where the backend has no such path for this geometry (nothing computed).
  // With bnParts and a transform with an activation, the backend may also return the partials of
  // that batch norm + activation's backward for dx (batchNormActBackwardCoefs), computed while
  // each dx plane is in cache; bnParts null where it does not. With dyT, the dy to use is
  // batchNormActBackwardApply(dy, dyT) (computed while reading; null where not supported).
  conv2dBackwardBoth?(dy: F32, x: F32, w: F32, g: ConvGeom, tf?: InputTransform | null, bnParts?: boolean, dyT?: BnBackwardTransform | null): { dx: F32; dw: F32; bnParts?: F32 | null } | null;

  // ---- batch norm (per channel over N, H, W) ---------------------------------------
  // x: (N, C, HW) -> y, batch statistics
  batchNormTrain(x: F32, weight: F32 | null, bias: F32 | null, n: number, c: number, hw: number, eps: number): BatchNormTrainResult;
  // x: (N, C, HW) with running statistics -> y
  batchNormEval(x: F32, mean: F32, varRunning: F32, weight: F32 | null, bias: F32 | null, n: number, c: number, hw: number, eps: number): F32;
  // training-mode backward: dy, x, saved mean/invstd -> dx, dweight, dbias
  batchNormBackward(dy: F32, x: F32, mean: F32, invstd: F32, weight: F32 | null, n: number, c: number, hw: number): BatchNormGrads;
  // The two halves of batchNormTrain, so that the normalisation can be fused with what follows:
  // statistics only (same values as batchNormTrain's) ...
  batchNormStats(x: F32, n: number, c: number, hw: number, eps: number): BatchNormStats;
  // Optional (training fusion): conv2d without a bias that also returns partials of its output's
  // batch statistics, computed while the output is still in cache, or null partials where the
  // backend's path for this geometry does not compute them. batchNormStatsFromPartials turns
  // them into exactly the values batchNormStats(y) gives.
  conv2dWithStats?(x: F32, w: F32, g: ConvGeom, tf?: InputTransform | null): { y: F32; partials: F32 | null };
  batchNormStatsFromPartials?(partials: F32, n: number, c: number, hw: number, eps: number): BatchNormStats;
  // ... and y = act((x - mean[c]) * scale[c] + shift[c] (+ res)), with scale = invstd * weight and
  // shift = bias (float32 per channel; batchNormTrain/Eval compute exactly these). res: an
  // optional residual of x's shape added before the activation (a following add(), fused).
  batchNormApply(x: F32, mean: F32, scale: F32, shift: F32, res: F32 | null, n: number, c: number, hw: number, act: Act): F32;
  // Backward of act(batchNormTrain(x)) given the gradient of the activation's output: the
  // activation's mask is recomputed from x with the same arithmetic as batchNormApply (so it
  // equals the forward's), then the batch-norm backward as batchNormBackward.
  batchNormActBackward(dy: F32, x: F32, mean: F32, invstd: F32, weight: F32 | null, scale: F32, shift: F32, n: number, c: number, hw: number, act: Act): BatchNormGrads;
  // Optional (training fusion): batchNormActBackward (act 1 or 2) in two halves, with its
  // reductions' partials from conv2dBackwardBoth (computed for this dy, this x and this
  // transform): the parameter gradients and the apply coefficients, then the apply pass (or a
  // convolution's backward applies it while reading: conv2dBackwardBoth's dyT). The same values.
  batchNormActBackwardCoefs?(parts: F32, invstd: F32, weight: F32 | null, n: number, c: number, hw: number): { dweight: F32; dbias: F32; coef: F32 };
  batchNormActBackwardApply?(dy: F32, t: BnBackwardTransform, n: number, c: number, hw: number): F32;

  // ---- elementwise -------------------------------------------------------------------
  relu(x: F32): F32;
  // dx = dy * (y > 0)
  reluBackward(dy: F32, y: F32): F32;
  relu6(x: F32): F32;
  // dx = dy * (0 < y < 6)
  relu6Backward(dy: F32, y: F32): F32;
  add(a: F32, b: F32): F32;
  mul(a: F32, b: F32): F32;
  scale(a: F32, s: number): F32;
  // acc += a
  addInPlace(acc: F32, a: F32): void;

  // ---- pooling -----------------------------------------------------------------------
  // x: (N, C, H, W) -> y: (N, C, OH, OW) and the flat index within each (H*W) plane of each max
  maxPool2d(x: F32, g: PoolGeom): { y: F32; argmax: Int32Array };
  maxPool2dBackward(dy: F32, argmax: Int32Array, g: PoolGeom): F32;
  // PyTorch's adaptive windows: start = floor(i*H/OH), end = ceil((i+1)*H/OH)
  adaptiveAvgPool2d(x: F32, n: number, c: number, h: number, w: number, oh: number, ow: number): F32;
  adaptiveAvgPool2dBackward(dy: F32, n: number, c: number, h: number, w: number, oh: number, ow: number): F32;

  // ---- dense -------------------------------------------------------------------------
  // C(M, N) = A(M, K) * B(K, N) with optional transposes of the stored operands:
  // transA: A is stored (K, M); transB: B is stored (N, K). Returns a fresh C.
  matmul(a: F32, b: F32, m: number, n: number, k: number, transA: boolean, transB: boolean): F32;
  // y (rows, cols) += bias (cols), in place
  addRowVectorInPlace(y: F32, bias: F32, rows: number, cols: number): void;
  // sum over rows of x (rows, cols) -> (cols)
  sumRows(x: F32, rows: number, cols: number): F32;
  // sum over N and spatial of x (N, C, HW) -> (C)   (conv bias gradient)
  sumChannels(x: F32, n: number, c: number, hw: number): F32;

  // ---- softmax -----------------------------------------------------------------------
  // x: (rows, cols) -> log_softmax over cols
  logSoftmax(x: F32, rows: number, cols: number): F32;
  // dx = dy - exp(y) * sum(dy) per row, y = log_softmax output
  logSoftmaxBackward(dy: F32, y: F32, rows: number, cols: number): F32;

  // ---- optimiser updates (in place, one fused pass per parameter) ---------------------
  adamStepInPlace(param: F32, grad: F32, expAvg: F32, expAvgSq: F32, h: AdamHyper): void;
  sgdStepInPlace(param: F32, grad: F32, momentumBuf: F32 | null, h: SgdHyper): void;
}

export function convOutSize(size: number, k: number, stride: number, pad: number): number {
  return Math.floor((size + 2 * pad - k) / stride) + 1;
}
