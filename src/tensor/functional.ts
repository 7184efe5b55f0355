// Differentiable operations: each computes its forward pass with the current backend and
// records how to compute its backward pass. This is the only place autograd rules live.
import { getBackend } from '../backend/registry.js';
import { allocOutput, currentArena, releaseOutput, type ArenaScope } from '../backend/arena.js';
import { ACT_RELU, ACT_RELU6, convOutSize, inputTransformApplies, isPointwise, type Act, type Backend, type BnBackwardTransform, type ConvEpilogue, type ConvGeom, type DepthwiseStage, type F32, type InputTransform, type PoolGeom } from '../backend/backend.js';
import { Generator, defaultGenerator } from './random.js';
import { Tensor, formatShape, isGradEnabled, noGrad, pendingTensor, type GradFn, type PendingValues } from './tensor.js';

/** Make the output of an op, recording its backward when any input requires grad. */
function result(values: F32, shape: readonly number[], name: string, inputs: (Tensor | null)[], backward: (gy: F32) => (F32 | null)[]): Tensor {
  const needs = isGradEnabled() && inputs.some((t) => t !== null && t.requiresGrad);
  const out = new Tensor(values, shape, needs);
  if (needs) out.gradFn = { name, inputs, backward };
  return out;
}

/** Like result() for an output whose values are still pending (see PendingValues). */
function pendingResult(pending: PendingValues, shape: readonly number[], fn: Omit<GradFn, 'inputs'> & { inputs: (Tensor | null)[] }): Tensor {
  const needs = isGradEnabled() && fn.inputs.some((t) => t !== null && t.requiresGrad);
  const out = pendingTensor(shape, pending, needs);
  if (needs) out.gradFn = fn;
  return out;
}

/**
 * A batch norm's output not yet computed: act((x - mean) * scale + shift (+ res)) per channel.
 * ReLU/ReLU6 and add() of such a tensor compute it fused with themselves (one memory pass
 * instead of two or three); anything else that reads it materialises it.
 */
class BatchNormPending implements PendingValues {
  readonly kind = 'batch_norm';
  constructor(
    readonly x: F32,
    readonly mean: F32,
    readonly scale: F32,
    readonly shift: F32,
    readonly res: F32 | null,
    readonly n: number,
    readonly c: number,
    readonly hw: number,
  ) {}
  compute(): F32 {
    return getBackend().batchNormApply(this.x, this.mean, this.scale, this.shift, this.res, this.n, this.c, this.hw, 0);
  }
}

/**
 * A training batch norm's output with its ReLU/ReLU6, not yet computed:
 * act((x - mean) * scale + shift). A pointwise or depthwise convolution that reads it takes the
 * formula instead (InputTransform) and applies it while loading its input, in the forward pass
 * and again in its weight gradient, so the activation is never stored (one write and one read
 * of the tensor saved, and its memory). Anything else that reads it materialises it.
 */
class BatchNormActPending implements PendingValues {
  readonly kind = 'batch_norm_act';
  constructor(
    readonly bn: BatchNormPending,
    readonly act: Act,
  ) {}
  get transform(): InputTransform {
    return { mean: this.bn.mean, scale: this.bn.scale, shift: this.bn.shift, act: this.act };
  }
  compute(): F32 {
    const p = this.bn;
    return getBackend().batchNormApply(p.x, p.mean, p.scale, p.shift, null, p.n, p.c, p.hw, this.act);
  }
}

/** CONVNETS_FUSE_TRAIN=0 stores every batch norm + activation output in training (for comparisons). */
const fuseTraining = typeof process === 'undefined' || process.env.CONVNETS_FUSE_TRAIN !== '0';

function bnActPendingOf(t: Tensor): BatchNormActPending | null {
  const p = t._pending;
  return p instanceof BatchNormActPending ? p : null;
}

/**
 * A convolution not yet computed (inference only: no graph is recorded), optionally with the
 * eval-mode batch norm, residual add and activation that follow it fused in (conv2dFused): the
 * batch norm's pass over memory disappears. Only inside a step arena, whose tensors cannot
 * outlive it, so that nothing can change the weights before the values are read.
 */
class ConvPending implements PendingValues {
  readonly kind = 'conv2d';
  constructor(
    readonly x: F32,
    readonly w: F32,
    readonly b: F32 | null,
    readonly g: ConvGeom,
    readonly epi: ConvEpilogue | null,
    /** A pointwise convolution whose input is this depthwise stage (x is then pre.x, unused):
     *  MobileNet's separable block, computed without storing the depthwise output. */
    readonly pre: DepthwiseStage | null = null,
    /** The input (of pre when there is one) is this deferred pointwise convolution's output, not
     *  computed (x / pre.x are then empty): MobileNetV2's expansion, so that the whole inverted
     *  residual block can run fused (conv2dBlock). */
    readonly src: ConvPending | null = null,
  ) {}
  /** The same convolution followed by another epilogue. */
  withEpi(epi: ConvEpilogue): ConvPending {
    return new ConvPending(this.x, this.w, this.b, this.g, epi, this.pre, this.src);
  }
  compute(): F32 {
    const be = getBackend();
    const s = this.src;
    if (s !== null) {
      if (this.pre !== null && be.conv2dBlock) {
        const y = be.conv2dBlock({ x: s.x, w: s.w, b: s.b, g: s.g, epi: s.epi! }, this.pre, this.w, this.b, this.g, this.epi);
        if (y !== null) return y;
      }
      // not fused: the expansion first, then as without it
      const xs = s.compute();
      const pre = this.pre !== null ? { ...this.pre, x: xs } : null;
      return new ConvPending(pre !== null ? EMPTY : xs, this.w, this.b, this.g, this.epi, pre).compute();
    }
    let x = this.x;
    if (this.pre !== null) {
      const y = be.conv2dAfterDepthwise ? be.conv2dAfterDepthwise(this.pre, this.w, this.b, this.g, this.epi) : null;
      if (y !== null) return y;
      const p = this.pre;
      x = be.conv2dFused(p.x, p.w, p.b, p.g, p.epi);
    }
    return this.epi ? be.conv2dFused(x, this.w, this.b, this.g, this.epi) : be.conv2d(x, this.w, this.b, this.g);
  }
}

const EMPTY: F32 = new Float32Array(0);

/** CONVNETS_FUSE=0 turns the inference fusion off (for comparisons). */
const fuseInference = typeof process === 'undefined' || process.env.CONVNETS_FUSE !== '0';
/** CONVNETS_FUSE_SEPARABLE=0 keeps depthwise and pointwise convolutions apart in inference. */
const fuseSeparable = fuseInference && (typeof process === 'undefined' || process.env.CONVNETS_FUSE_SEPARABLE !== '0');
/** CONVNETS_FUSE_BLOCK=0 stores the expansion of MobileNetV2's blocks in inference. */
const fuseBlock = fuseSeparable && (typeof process === 'undefined' || process.env.CONVNETS_FUSE_BLOCK !== '0');

/**
 * CONVNETS_FUSE_STATS=0: batch statistics always read the tensor again. Otherwise a training
 * convolution without bias asks the backend for partials of its output's batch statistics,
 * computed while the output is still in cache (conv2dWithStats), and a batch norm reading that
 * output finishes them instead of reading it (the same values). Like the rest of the fusion,
 * this assumes a tensor's values are not modified in place after it was computed.
 */
const fuseStats = typeof process === 'undefined' || process.env.CONVNETS_FUSE_STATS !== '0';
/** The partials of a convolution's output, and the arena their buffer came from (null: none). */
const statsPartials = new WeakMap<Tensor, { partials: F32; scope: ArenaScope | null }>();

/**
 * CONVNETS_FUSE_BN_BACKWARD=0: a batch norm + activation's backward is one op of its own.
 * Otherwise a convolution that applied that batch norm + activation while reading (the training
 * input transform) asks the backend for the reductions' partials of the input gradient it
 * computes (conv2dBackwardBoth, conv2dBackwardInputBnParts); the batch norm's backward finishes
 * them instead of reading that gradient and its input twice, and hands its apply pass to the
 * convolution that produced its input (GradFn.backwardActDeferred / backwardDeferred), which
 * applies it while reading its dy where the backend can (conv2dBackwardBoth's dyT). The same
 * values throughout.
 */
const fuseBnBackward = typeof process === 'undefined' || process.env.CONVNETS_FUSE_BN_BACKWARD !== '0';
/**
 * The partials of an input gradient, keyed by its buffer (a gradient buffer is never modified in
 * place: the autograd engine sums into new ones), and the batch norm (its pending output) and
 * activation they were computed for, checked by identity before use.
 */
const bnBackwardPartials = new WeakMap<F32, { parts: F32; bn: BatchNormPending; act: Act }>();

function convPendingOf(t: Tensor): ConvPending | null {
  const p = t._pending;
  return p instanceof ConvPending ? p : null;
}

function bnPendingOf(t: Tensor): BatchNormPending | null {
  const p = t._pending;
  return p instanceof BatchNormPending ? p : null;
}

// ---- tracing (for export) ---------------------------------------------------------------------

/**
 * Receives every op as it runs while installed with setTracer (the ONNX exporter uses it):
 * the op's name, its tensor inputs (null for an absent optional one), its output and its
 * non-tensor arguments. Ops call it after computing, so it never changes a result.
 */
export type Tracer = (op: string, inputs: readonly (Tensor | null)[], output: Tensor, attrs: Readonly<Record<string, unknown>>) => void;

let tracer: Tracer | null = null;

/** Install an op tracer (null removes it); returns the one it replaces. Off by default. */
export function setTracer(t: Tracer | null): Tracer | null {
  const prev = tracer;
  tracer = t;
  return prev;
}

function pair(v: number | readonly [number, number], what: string): [number, number] {
  const p: [number, number] = typeof v === 'number' ? [v, v] : [v[0], v[1]];
  if (!Number.isInteger(p[0]) || !Number.isInteger(p[1]) || p[0] < 0 || p[1] < 0) throw new Error(`${what} must be a non-negative integer or a pair of them, got ${JSON.stringify(v)}`);
  return p;
}

function expectNdim(x: Tensor, nd: number, op: string, layout: string): void {
  if (x.ndim !== nd) throw new Error(`${op}: expected a ${nd}-d input ${layout}, got shape ${formatShape(x.shape)}`);
}

// ---- convolution -----------------------------------------------------------------------------

export interface Conv2dOptions {
  stride?: number | readonly [number, number];
  padding?: number | readonly [number, number];
  groups?: number;
}

// x: (N, C, H, W), weight: (O, C/groups, KH, KW), bias: (O) -> (N, O, OH, OW)
export function conv2d(x: Tensor, weight: Tensor, bias: Tensor | null = null, opts: Conv2dOptions = {}): Tensor {
  const [sh, sw] = pair(opts.stride ?? 1, 'conv2d: stride');
  const [ph, pw] = pair(opts.padding ?? 0, 'conv2d: padding');
  const groups = opts.groups ?? 1;
  expectNdim(x, 4, 'conv2d', '(N, C, H, W)');
  if (weight.ndim !== 4) throw new Error(`conv2d: weight must be 4-d (O, C/groups, KH, KW), got ${formatShape(weight.shape)}`);
  const [n, c, h, w] = x.shape;
  const [o, cpg, kh, kw] = weight.shape;
  if (sh < 1 || sw < 1) throw new Error(`conv2d: stride must be at least 1`);
  if (!Number.isInteger(groups) || groups < 1 || o % groups !== 0) throw new Error(`conv2d: groups=${groups} must divide the ${o} output channels`);
  if (cpg * groups !== c) {
    throw new Error(`conv2d: expected input with ${cpg * groups} channels (weight ${formatShape(weight.shape)}, groups=${groups}), got input of shape ${formatShape(x.shape)}`);
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== o)) throw new Error(`conv2d: bias must have shape [${o}], got ${formatShape(bias.shape)}`);
  const oh = convOutSize(h, kh, sh, ph);
  const ow = convOutSize(w, kw, sw, pw);
  if (oh < 1 || ow < 1) {
    throw new Error(`conv2d: input of spatial size ${h}x${w} (padded ${h + 2 * ph}x${w + 2 * pw}) is smaller than the ${kh}x${kw} kernel`);
  }
  const g: ConvGeom = { n, c, h, w, o, kh, kw, sh, sw, ph, pw, groups, oh, ow };
  const be = getBackend();
  const needs = isGradEnabled() && (x.requiresGrad || weight.requiresGrad || (bias !== null && bias.requiresGrad));
  if (!needs && tracer === null && fuseInference && currentArena() !== null) {
    // a pointwise convolution of a deferred depthwise convolution (+ batch norm + activation):
    // the separable block in one pass, the depthwise output never stored
    const xp = convPendingOf(x);
    if (fuseSeparable && xp !== null && xp.pre === null && xp.epi !== null && xp.epi.res === null && xp.g.groups === xp.g.c && xp.g.o === xp.g.c && isPointwise(g) && be.conv2dAfterDepthwise) {
      const pre: DepthwiseStage = { x: xp.x, w: xp.w, b: xp.b, g: xp.g, epi: xp.epi };
      return pendingTensor([n, o, oh, ow], new ConvPending(xp.x, weight.values, bias ? bias.values : null, g, null, pre, xp.src), false);
    }
    // a depthwise convolution of a deferred pointwise one + batch norm + activation (MobileNetV2's
    // expansion): both deferred, for the block's projection to take in (conv2dBlock)
    if (fuseBlock && xp !== null && xp.pre === null && xp.src === null && xp.epi !== null && xp.epi.res === null && xp.epi.act !== 0 && isPointwise(xp.g) && groups === c && o === c && be.conv2dBlock) {
      return pendingTensor([n, o, oh, ow], new ConvPending(EMPTY, weight.values, bias ? bias.values : null, g, null, null, xp), false);
    }
  }
  if (!needs && tracer === null && fuseInference && currentArena() !== null && (x._arena === currentArena() || x._arena === null)) {
    // inference inside an arena, on an activation of this arena or on a tensor of the caller's
    // (the network's input: the stem convolution): deferred, to fuse what follows
    return pendingTensor([n, o, oh, ow], new ConvPending(x.values, weight.values, bias ? bias.values : null, g, null), false);
  }
  // the pending batch norm + activation of training, applied while reading (see BatchNormActPending)
  const tp = bnActPendingOf(x);
  const tf = tp !== null && inputTransformApplies(g) ? tp.transform : null;
  const xv = tf !== null ? tp!.bn.x : x.values;
  let y: F32;
  let partials: F32 | null = null;
  if (needs && fuseStats && bias === null && be.conv2dWithStats && be.batchNormStatsFromPartials) {
    ({ y, partials } = be.conv2dWithStats(xv, weight.values, g, tf));
  } else y = be.conv2d(xv, weight.values, bias ? bias.values : null, g, tf);
  const wv = weight.values;
  // the batch norm + activation backward's partials of dx, for the batch norm of the input transform
  const wantParts = (b: Backend): boolean => fuseBnBackward && tf !== null && tf.act !== 0 && b.batchNormActBackwardCoefs !== undefined;
  const keepParts = (dx: F32, parts: F32 | null | undefined): void => {
    if (parts) bnBackwardPartials.set(dx, { parts, bn: tp!.bn, act: tf!.act });
  };
  const backward = (gy: F32): (F32 | null)[] => {
    const b = getBackend();
    const both = x.requiresGrad && weight.requiresGrad && b.conv2dBackwardBoth ? b.conv2dBackwardBoth(gy, xv, wv, g, tf, wantParts(b)) : null;
    let dx = both ? both.dx : null;
    if (both) keepParts(both.dx, both.bnParts);
    else if (x.requiresGrad) {
      if (wantParts(b) && b.conv2dBackwardInputBnParts) {
        const r = b.conv2dBackwardInputBnParts(gy, wv, g, xv, tf!);
        dx = r.dx;
        keepParts(dx, r.bnParts);
      } else dx = b.conv2dBackwardInput(gy, wv, g);
    }
    return [
      dx,
      both ? both.dw : weight.requiresGrad ? b.conv2dBackwardWeight(gy, xv, g, tf) : null,
      bias && bias.requiresGrad ? b.sumChannels(gy, n, o, oh * ow) : null,
    ];
  };
  const out = result(y, [n, o, oh, ow], 'Conv2dBackward', [x, weight, bias], backward);
  if (out.gradFn !== null && fuseBnBackward) {
    // gy is the batch norm + activation backward's gradient before its apply pass (t: that pass,
    // from the batch norm's backwardActDeferred): applied while reading where the backend can,
    // else first
    out.gradFn.backwardDeferred = (gy: F32, t: unknown): (F32 | null)[] => {
      const b = getBackend();
      const dt = t as BnBackwardTransform;
      if (x.requiresGrad && weight.requiresGrad && !(bias && bias.requiresGrad) && b.conv2dBackwardBoth) {
        const both = b.conv2dBackwardBoth(gy, xv, wv, g, tf, wantParts(b), dt);
        if (both) {
          keepParts(both.dx, both.bnParts);
          return [both.dx, both.dw, null];
        }
      }
      const dy = b.batchNormActBackwardApply!(gy, dt, n, o, oh * ow);
      const r = backward(dy);
      releaseOutput(dy);
      return r;
    };
  }
  if (partials !== null) statsPartials.set(out, { partials, scope: currentArena() });
  if (tracer !== null) tracer('conv2d', [x, weight, bias], out, { stride: [sh, sw], padding: [ph, pw], groups });
  return out;
}

// ---- batch norm ------------------------------------------------------------------------------

export interface BatchNormOptions {
  training: boolean;
  momentum: number; // weight of the batch statistic in the running average
  eps: number;
}

/**
 * Batch normalisation over (N, H, W) per channel. In training mode it normalises with the
 * batch statistics (biased variance) and, when running statistics are given, updates them in
 * place with the unbiased variance: r = (1 - momentum) * r + momentum * batch.
 */
export function batchNorm(x: Tensor, runningMean: Tensor | null, runningVar: Tensor | null, weight: Tensor | null, bias: Tensor | null, opts: BatchNormOptions): Tensor {
  if (x.ndim < 2) throw new Error(`batch_norm: expected input (N, C, ...), got shape ${formatShape(x.shape)}`);
  const n = x.shape[0];
  const c = x.shape[1];
  const hw = x.size / Math.max(1, n * c);
  for (const [t, name] of [[runningMean, 'running_mean'], [runningVar, 'running_var'], [weight, 'weight'], [bias, 'bias']] as const) {
    if (t && t.size !== c) throw new Error(`batch_norm: expected ${name} with ${c} elements (input ${formatShape(x.shape)}), got ${formatShape(t.shape)}`);
  }
  const be = getBackend();
  const wv = weight ? weight.values : null;
  const bv = bias ? bias.values : null;
  if (!opts.training) {
    if (!runningMean || !runningVar) throw new Error('batch_norm: evaluation mode needs running statistics');
    const rm = runningMean.values.slice();
    const rv = runningVar.values.slice();
    // scale and shift exactly as batchNormEval computes them (float32)
    const scale = allocOutput(c);
    const shift = allocOutput(c);
    for (let i = 0; i < c; i++) {
      const is = Math.fround(1 / Math.sqrt(rv[i] + opts.eps));
      scale[i] = wv ? Math.fround(is * wv[i]) : is;
      shift[i] = bv ? bv[i] : 0;
    }
    const cp = convPendingOf(x);
    const bnNeeds = isGradEnabled() && (x.requiresGrad || (weight !== null && weight.requiresGrad) || (bias !== null && bias.requiresGrad));
    if (cp !== null && cp.epi === null && !bnNeeds && tracer === null) {
      // eval batch norm of a deferred convolution: fused into it
      return pendingTensor(x.shape, cp.withEpi({ mean: rm, scale, shift, res: null, act: 0 }), false);
    }
    const pending = new BatchNormPending(x.values, rm, scale, shift, null, n, c, hw);
    const out = pendingResult(pending, x.shape, { name: 'BatchNormEvalBackward', inputs: [x, weight, bias], backward: (gy) => {
      // y = (x - m) * invstd * gamma + beta with constant statistics:
      // dx = dy * gamma * invstd, dgamma = Σ dy * xhat, dbeta = Σ dy
      const b = getBackend();
      let gx: F32 | null = null;
      if (x.requiresGrad) {
        gx = new Float32Array(gy.length);
        for (let ni = 0; ni < n; ni++) {
          for (let ci = 0; ci < c; ci++) {
            const k = (wv ? wv[ci] : 1) / Math.sqrt(rv[ci] + opts.eps);
            const p = (ni * c + ci) * hw;
            for (let i = 0; i < hw; i++) gx[p + i] = gy[p + i] * k;
          }
        }
      }
      let gw: F32 | null = null;
      if (weight && weight.requiresGrad) {
        const xhat = b.batchNormEval(x.values, rm, rv, null, null, n, c, hw, opts.eps);
        gw = b.sumChannels(b.mul(gy, xhat), n, c, hw);
      }
      return [gx, gw, bias && bias.requiresGrad ? b.sumChannels(gy, n, c, hw) : null];
    } });
    if (tracer !== null) tracer('batch_norm', [x, runningMean, runningVar, weight, bias], out, { training: false, eps: opts.eps });
    return out;
  }
  const count = n * hw;
  if (count <= 1) throw new Error(`batch_norm: expected more than 1 value per channel when training, got input of shape ${formatShape(x.shape)}`);
  const xv = x.values;
  // (partials from an arena that has ended were recycled: a tensor kept out of it reads again)
  const sp = statsPartials.get(x);
  const partials = sp !== undefined && (sp.scope === null || !sp.scope.closed) ? sp.partials : null;
  const { mean, varBiased, invstd } = partials !== null && be.batchNormStatsFromPartials ? be.batchNormStatsFromPartials(partials, n, c, hw, opts.eps) : be.batchNormStats(xv, n, c, hw, opts.eps);
  if (runningMean && runningVar) {
    const m = opts.momentum;
    const rm = runningMean.values;
    const rv = runningVar.values;
    for (let i = 0; i < c; i++) {
      rm[i] = (1 - m) * rm[i] + m * mean[i];
      rv[i] = (1 - m) * rv[i] + m * varBiased[i] * (count / (count - 1));
    }
  }
  // scale and shift exactly as batchNormTrain computes them (float32), fixed now so that the
  // pending output does not depend on later changes of the parameters
  const scale = allocOutput(c);
  const shift = allocOutput(c);
  for (let i = 0; i < c; i++) {
    scale[i] = wv ? Math.fround(invstd[i] * wv[i]) : invstd[i];
    shift[i] = bv ? bv[i] : 0;
  }
  const pend = new BatchNormPending(xv, mean, scale, shift, null, n, c, hw);
  // the backward's reductions done by the convolution that computed gy (for this batch norm and
  // activation): its parameter gradients and its apply pass (taken out of the map), or null
  const fromPartials = (b: Backend, gy: F32, act: Act): { dweight: F32; dbias: F32; t: BnBackwardTransform } | null => {
    const bp = bnBackwardPartials.get(gy);
    if (bp === undefined) return null;
    bnBackwardPartials.delete(gy);
    if (bp.bn !== pend || bp.act !== act || !b.batchNormActBackwardCoefs || !b.batchNormActBackwardApply) return null;
    const k = b.batchNormActBackwardCoefs(bp.parts, invstd, wv, n, c, hw);
    return { dweight: k.dweight, dbias: k.dbias, t: { x: xv, mean, scale, shift, coef: k.coef, act } };
  };
  const out = pendingResult(pend, x.shape, {
    name: 'BatchNormBackward',
    inputs: [x, weight, bias],
    backward: (gy) => {
      const g = getBackend().batchNormBackward(gy, xv, mean, invstd, wv, n, c, hw);
      return [g.dx, g.dweight, g.dbias];
    },
    backwardAct: (gy, act) => {
      const b = getBackend();
      const p = fromPartials(b, gy, act);
      if (p !== null) return [b.batchNormActBackwardApply!(gy, p.t, n, c, hw), p.dweight, p.dbias];
      const g = b.batchNormActBackward(gy, xv, mean, invstd, wv, scale, shift, n, c, hw, act);
      return [g.dx, g.dweight, g.dbias];
    },
    // with the partials, the apply pass is left to the convolution that produced x (its
    // backwardDeferred), which applies it while reading: dx is never stored
    backwardActDeferred: (gy, act) => {
      const p = fromPartials(getBackend(), gy, act);
      return p === null ? null : { grads: [null, p.dweight, p.dbias], t: p.t };
    },
  });
  if (tracer !== null) tracer('batch_norm', [x, runningMean, runningVar, weight, bias], out, { training: true, eps: opts.eps });
  return out;
}

// ---- activations and arithmetic -------------------------------------------------------------

function activation(x: Tensor, act: Act): Tensor {
  const be = getBackend();
  const cp = convPendingOf(x);
  if (cp !== null && cp.epi !== null && cp.epi.act === 0 && !x.requiresGrad) {
    // convolution + batch norm (+ add) + this activation in one pass (deferred: a pointwise
    // convolution after it may take it in too)
    return pendingTensor(x.shape, cp.withEpi({ ...cp.epi, act }), false);
  }
  const p = bnPendingOf(x);
  if (p !== null && p.res === null && fuseTraining && isGradEnabled() && x.requiresGrad) {
    // training: batch norm + activation stay pending, for a convolution to apply while reading
    // (the activation's backward is fused into the batch norm's, which recomputes the mask from
    // the batch norm's input; the stored output is only needed if that fusion does not happen)
    const pending = new BatchNormActPending(p, act);
    const name = act === ACT_RELU ? 'ReluBackward' : 'Relu6Backward';
    const out: Tensor = pendingResult(pending, x.shape, {
      name,
      inputs: [x],
      backward: (gy) => [act === ACT_RELU ? getBackend().reluBackward(gy, out.values) : getBackend().relu6Backward(gy, out.values)],
      act,
    });
    return out;
  }
  // fused with a pending batch norm (and add) before it: one pass, its output never materialised
  const y = p !== null ? be.batchNormApply(p.x, p.mean, p.scale, p.shift, p.res, p.n, p.c, p.hw, act) : act === ACT_RELU ? be.relu(x.values) : be.relu6(x.values);
  const needs = isGradEnabled() && x.requiresGrad;
  const out = new Tensor(y, x.shape, needs);
  if (needs) {
    const fn: GradFn =
      act === ACT_RELU
        ? { name: 'ReluBackward', inputs: [x], backward: (gy) => [getBackend().reluBackward(gy, y)], act: p !== null && p.res === null ? act : undefined }
        : { name: 'Relu6Backward', inputs: [x], backward: (gy) => [getBackend().relu6Backward(gy, y)], act: p !== null && p.res === null ? act : undefined };
    out.gradFn = fn;
  }
  return out;
}

export function relu(x: Tensor): Tensor {
  const out = activation(x, ACT_RELU);
  if (tracer !== null) tracer('relu', [x], out, {});
  return out;
}

export function relu6(x: Tensor): Tensor {
  const out = activation(x, ACT_RELU6);
  if (tracer !== null) tracer('relu6', [x], out, {});
  return out;
}

function sameShape(a: Tensor, b: Tensor, op: string): void {
  if (a.ndim !== b.ndim || a.shape.some((d, i) => d !== b.shape[i])) throw new Error(`${op}: shapes ${formatShape(a.shape)} and ${formatShape(b.shape)} differ`);
}

export function add(a: Tensor, b: Tensor): Tensor {
  sameShape(a, b, 'add');
  const pb = bnPendingOf(b);
  const pa = pb === null || pb.res !== null ? bnPendingOf(a) : null;
  const cb = convPendingOf(b);
  const ca = convPendingOf(a);
  const noGraph = !(isGradEnabled() && (a.requiresGrad || b.requiresGrad));
  let out: Tensor;
  if (noGraph && cb !== null && cb.epi !== null && cb.epi.res === null && cb.epi.act === 0) {
    out = pendingTensor(a.shape, cb.withEpi({ ...cb.epi, res: a.values }), false);
  } else if (noGraph && ca !== null && ca.epi !== null && ca.epi.res === null && ca.epi.act === 0) {
    out = pendingTensor(a.shape, ca.withEpi({ ...ca.epi, res: b.values }), false);
  } else if (pb !== null && pb.res === null) {
    // add(a, batch norm pending): fused (a following ReLU fuses too)
    const res = a.values;
    out = pendingResult(new BatchNormPending(pb.x, pb.mean, pb.scale, pb.shift, res, pb.n, pb.c, pb.hw), a.shape, { name: 'AddBackward', inputs: [a, b], backward: (gy) => [gy, gy] });
  } else if (pa !== null && pa.res === null) {
    const res = b.values;
    out = pendingResult(new BatchNormPending(pa.x, pa.mean, pa.scale, pa.shift, res, pa.n, pa.c, pa.hw), a.shape, { name: 'AddBackward', inputs: [a, b], backward: (gy) => [gy, gy] });
  } else {
    out = result(getBackend().add(a.values, b.values), a.shape, 'AddBackward', [a, b], (gy) => [gy, gy]);
  }
  if (tracer !== null) tracer('add', [a, b], out, {});
  return out;
}

/** Elementwise product of two same-shaped tensors, or a tensor times a number. */
export function mul(a: Tensor, b: Tensor | number): Tensor {
  if (typeof b === 'number') {
    const out = result(getBackend().scale(a.values, b), a.shape, 'MulBackward', [a], (gy) => [getBackend().scale(gy, b)]);
    if (tracer !== null) tracer('mul', [a], out, { scalar: b });
    return out;
  }
  sameShape(a, b, 'mul');
  const av = a.values;
  const bv = b.values;
  const out = result(getBackend().mul(av, bv), a.shape, 'MulBackward', [a, b], (gy) => [
    a.requiresGrad ? getBackend().mul(gy, bv) : null,
    b.requiresGrad ? getBackend().mul(gy, av) : null,
  ]);
  if (tracer !== null) tracer('mul', [a, b], out, {});
  return out;
}

/** Sum of all elements (a one-element tensor of shape []). */
export function sum(x: Tensor): Tensor {
  let s = 0;
  const v = x.values;
  for (let i = 0; i < v.length; i++) s += v[i];
  const out = result(new Float32Array([s]), [], 'SumBackward', [x], (gy) => [new Float32Array(x.size).fill(gy[0])]);
  if (tracer !== null) tracer('sum', [x], out, {});
  return out;
}

export function mean(x: Tensor): Tensor {
  return mul(sum(x), 1 / x.size);
}

// ---- pooling -----------------------------------------------------------------------------------

export interface MaxPool2dOptions {
  stride?: number | readonly [number, number];
  padding?: number | readonly [number, number];
}

export function maxPool2d(x: Tensor, kernelSize: number | readonly [number, number], opts: MaxPool2dOptions = {}): Tensor {
  expectNdim(x, 4, 'max_pool2d', '(N, C, H, W)');
  const [kh, kw] = pair(kernelSize, 'max_pool2d: kernel_size');
  const [sh, sw] = pair(opts.stride ?? kernelSize, 'max_pool2d: stride');
  const [ph, pw] = pair(opts.padding ?? 0, 'max_pool2d: padding');
  if (ph * 2 > kh || pw * 2 > kw) throw new Error(`max_pool2d: padding should be at most half of the kernel size`);
  const [n, c, h, w] = x.shape;
  const g: PoolGeom = { n, c, h, w, kh, kw, sh, sw, ph, pw, oh: convOutSize(h, kh, sh, ph), ow: convOutSize(w, kw, sw, pw) };
  if (g.oh < 1 || g.ow < 1) throw new Error(`max_pool2d: input ${formatShape(x.shape)} is too small for kernel ${kh}x${kw}`);
  const { y, argmax } = getBackend().maxPool2d(x.values, g);
  const out = result(y, [n, c, g.oh, g.ow], 'MaxPool2dBackward', [x], (gy) => [getBackend().maxPool2dBackward(gy, argmax, g)]);
  if (tracer !== null) tracer('max_pool2d', [x], out, { kernelSize: [kh, kw], stride: [sh, sw], padding: [ph, pw] });
  return out;
}

export function adaptiveAvgPool2d(x: Tensor, outputSize: number | readonly [number, number]): Tensor {
  expectNdim(x, 4, 'adaptive_avg_pool2d', '(N, C, H, W)');
  const [oh, ow] = pair(outputSize, 'adaptive_avg_pool2d: output_size');
  const [n, c, h, w] = x.shape;
  if (oh < 1 || ow < 1 || h < 1 || w < 1) throw new Error(`adaptive_avg_pool2d: cannot pool ${formatShape(x.shape)} to ${oh}x${ow}`);
  const y = getBackend().adaptiveAvgPool2d(x.values, n, c, h, w, oh, ow);
  const out = result(y, [n, c, oh, ow], 'AdaptiveAvgPool2dBackward', [x], (gy) => [getBackend().adaptiveAvgPool2dBackward(gy, n, c, h, w, oh, ow)]);
  if (tracer !== null) tracer('adaptive_avg_pool2d', [x], out, { outputSize: [oh, ow] });
  return out;
}

export function flatten(x: Tensor, startDim = 1, endDim = -1): Tensor {
  return x.flatten(startDim, endDim);
}

// ---- dense -------------------------------------------------------------------------------------

// x: (N, in), weight: (out, in), bias: (out) -> (N, out)
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null = null): Tensor {
  if (weight.ndim !== 2) throw new Error(`linear: weight must be 2-d (out, in), got ${formatShape(weight.shape)}`);
  const [out, inF] = weight.shape;
  if (x.ndim !== 2 || x.shape[1] !== inF) throw new Error(`linear: expected input of shape [N, ${inF}], got ${formatShape(x.shape)}`);
  if (bias && bias.size !== out) throw new Error(`linear: bias must have shape [${out}], got ${formatShape(bias.shape)}`);
  const n = x.shape[0];
  const be = getBackend();
  const y = be.matmul(x.values, weight.values, n, out, inF, false, true);
  if (bias) be.addRowVectorInPlace(y, bias.values, n, out);
  const xv = x.values;
  const wv = weight.values;
  const res = result(y, [n, out], 'LinearBackward', [x, weight, bias], (gy) => {
    const b = getBackend();
    return [
      x.requiresGrad ? b.matmul(gy, wv, n, inF, out, false, false) : null, // (N, out) x (out, in)
      weight.requiresGrad ? b.matmul(gy, xv, out, inF, n, true, false) : null, // (out, N) x (N, in)
      bias && bias.requiresGrad ? b.sumRows(gy, n, out) : null,
    ];
  });
  if (tracer !== null) tracer('linear', [x, weight, bias], res, {});
  return res;
}

// ---- losses ------------------------------------------------------------------------------------

/** log_softmax over the last dimension of a 2-d input (N, C). */
export function logSoftmax(x: Tensor, dim = 1): Tensor {
  if (x.ndim !== 2 || (dim !== 1 && dim !== -1)) throw new Error(`log_softmax: supported for 2-d input over dim 1, got shape ${formatShape(x.shape)} dim ${dim}`);
  const [rows, cols] = x.shape;
  const y = getBackend().logSoftmax(x.values, rows, cols);
  const out = result(y, x.shape, 'LogSoftmaxBackward', [x], (gy) => [getBackend().logSoftmaxBackward(gy, y, rows, cols)]);
  if (tracer !== null) tracer('log_softmax', [x], out, { dim: 1 });
  return out;
}

export type Targets = Int32Array | readonly number[] | Tensor;

function targetArray(t: Targets, n: number, classes: number, op: string): Int32Array {
  const src: ArrayLike<number> = t instanceof Tensor ? t.values : t;
  if (src.length !== n) throw new Error(`${op}: expected ${n} targets (one per row of the input), got ${src.length}`);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const v = src[i];
    if (!Number.isInteger(v) || v < 0 || v >= classes) throw new Error(`${op}: target ${v} at position ${i} is out of range for ${classes} classes`);
    out[i] = v;
  }
  return out;
}

export interface CrossEntropyOptions {
  labelSmoothing?: number;
  reduction?: 'mean' | 'sum';
}

/**
 * Negative log likelihood with optional label smoothing (PyTorch's formula):
 * loss_i = (1 - ε) * (-logp[i, y_i]) + (ε / C) * Σ_j (-logp[i, j]); reduced by mean or sum.
 */
export function nllLoss(logp: Tensor, targets: Targets, opts: CrossEntropyOptions = {}): Tensor {
  if (logp.ndim !== 2) throw new Error(`nll_loss: expected input (N, C), got shape ${formatShape(logp.shape)}`);
  const [n, c] = logp.shape;
  const eps = opts.labelSmoothing ?? 0;
  if (!(eps >= 0 && eps <= 1)) throw new Error(`cross_entropy: label_smoothing must be in [0, 1], got ${eps}`);
  const y = targetArray(targets, n, c, 'cross_entropy');
  const lp = logp.values;
  let total = 0;
  for (let i = 0; i < n; i++) {
    let rowSum = 0;
    if (eps > 0) for (let j = 0; j < c; j++) rowSum += lp[i * c + j];
    total += -(1 - eps) * lp[i * c + y[i]] - (eps / c) * rowSum;
  }
  const scaleBy = opts.reduction === 'sum' ? 1 : 1 / n;
  const out = result(new Float32Array([total * scaleBy]), [], 'NllLossBackward', [logp], (gy) => {
    const g = new Float32Array(n * c);
    const s = gy[0] * scaleBy;
    for (let i = 0; i < n; i++) {
      if (eps > 0) for (let j = 0; j < c; j++) g[i * c + j] = (-eps / c) * s;
      g[i * c + y[i]] += -(1 - eps) * s;
    }
    return [g];
  });
  if (tracer !== null) tracer('nll_loss', [logp], out, { labelSmoothing: eps, reduction: opts.reduction ?? 'mean' });
  return out;
}

/** Cross-entropy between logits (N, C) and class indices (N), mean over the batch by default. */
export function crossEntropy(logits: Tensor, targets: Targets, opts: CrossEntropyOptions = {}): Tensor {
  return nllLoss(logSoftmax(logits), targets, opts);
}

// ---- regularisation ----------------------------------------------------------------------------

/** Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p). */
export function dropout(x: Tensor, p: number, training: boolean, generator: Generator = defaultGenerator): Tensor {
  if (!(p >= 0 && p <= 1)) throw new Error(`dropout: probability must be in [0, 1], got ${p}`);
  if (!training || p === 0) return x;
  const mask = new Float32Array(x.size);
  const keep = p === 1 ? 0 : 1 / (1 - p);
  for (let i = 0; i < mask.length; i++) mask[i] = generator.random() < p ? 0 : keep;
  const y = getBackend().mul(x.values, mask);
  const out = result(y, x.shape, 'DropoutBackward', [x], (gy) => [getBackend().mul(gy, mask)]);
  if (tracer !== null) tracer('dropout', [x], out, { p, training });
  return out;
}

export { noGrad };
