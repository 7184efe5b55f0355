// Optimisers with PyTorch's semantics and state-dict layout. The per-parameter update is one
// fused backend kernel (adamStepInPlace / sgdStepInPlace).
import { getBackend } from '../backend/registry.js';
import { Parameter, Tensor, formatShape, zeros } from '../tensor/tensor.js';

export type HyperParams = Record<string, number | boolean | readonly number[]>;

export interface ParamGroup<H extends HyperParams> {
  params: Parameter[];
  options: H;
}

export type ParamsArg<H extends HyperParams> = Iterable<Parameter> | { params: Iterable<Parameter>; options?: Partial<H> }[];

/** Per-parameter state: a step count and named buffers shaped like the parameter. */
export interface ParamState {
  step: number;
  buffers: Map<string, Tensor>;
}

export interface OptimizerStateDict {
  state: Map<number, ParamState>;
  paramGroups: (HyperParams & { params: number[] })[];
}

export abstract class Optimizer<H extends HyperParams> {
  readonly paramGroups: ParamGroup<H>[];
  protected readonly state = new Map<Parameter, ParamState>();

  constructor(params: ParamsArg<H>, defaults: H) {
    const arr = Array.isArray(params) ? params : [...(params as Iterable<Parameter>)];
    const isGroups = arr.length > 0 && !(arr[0] instanceof Parameter);
    const groups = isGroups ? (arr as { params: Iterable<Parameter>; options?: Partial<H> }[]) : [{ params: arr as Parameter[] }];
    this.paramGroups = groups.map((g) => ({ params: [...g.params], options: { ...defaults, ...(('options' in g && g.options) || {}) } as H }));
    const seen = new Set<Parameter>();
    for (const g of this.paramGroups) {
      for (const p of g.params) {
        if (!(p instanceof Parameter)) throw new Error(`${this.constructor.name}: every parameter must be an nn Parameter`);
        if (seen.has(p)) throw new Error(`${this.constructor.name}: a parameter appears in more than one group`);
        seen.add(p);
      }
    }
    if (seen.size === 0) throw new Error(`${this.constructor.name}: got an empty parameter list`);
  }

  /** Drop all gradients (PyTorch's zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    for (const g of this.paramGroups) for (const p of g.params) p.grad = null;
  }

  /** The learning rate of the first group (what schedulers set). */
  get lr(): number {
    return this.paramGroups[0].options.lr as number;
  }

  set lr(v: number) {
    for (const g of this.paramGroups) (g.options as HyperParams).lr = v;
  }

  protected stateFor(p: Parameter, names: readonly string[]): ParamState {
    let s = this.state.get(p);
    if (!s) {
      s = { step: 0, buffers: new Map(names.map((n) => [n, zeros(p.shape)])) };
      this.state.set(p, s);
    }
    return s;
  }

  /** Update every parameter that has a gradient. */
  step(): void {
    const be = getBackend();
    for (const g of this.paramGroups) {
      for (const p of g.params) {
        if (!p.grad) continue;
        this.update(p, p.grad, g.options, be);
      }
    }
  }

  protected abstract update(p: Parameter, grad: Tensor, h: H, be: ReturnType<typeof getBackend>): void;

  /** State keyed by parameter index over all groups, like PyTorch's optimizer.state_dict(). */
  stateDict(): OptimizerStateDict {
    const state = new Map<number, ParamState>();
    const paramGroups: (HyperParams & { params: number[] })[] = [];
    let idx = 0;
    for (const g of this.paramGroups) {
      const ids: number[] = [];
      for (const p of g.params) {
        const s = this.state.get(p);
        if (s) state.set(idx, { step: s.step, buffers: new Map([...s.buffers].map(([k, t]) => [k, t.clone()])) });
        ids.push(idx++);
      }
      paramGroups.push({ ...g.options, params: ids });
    }
    return { state, paramGroups };
  }

  loadStateDict(sd: OptimizerStateDict, source = 'optimizer state'): void {
    if (sd.paramGroups.length !== this.paramGroups.length) {
      throw new Error(`${source}: has ${sd.paramGroups.length} parameter groups, the optimizer has ${this.paramGroups.length}`);
    }
    const all: Parameter[] = [];
    this.paramGroups.forEach((g, i) => {
      if (sd.paramGroups[i].params.length !== g.params.length) {
        throw new Error(`${source}: group ${i} has ${sd.paramGroups[i].params.length} parameters, the optimizer's has ${g.params.length}`);
      }
      all.push(...g.params);
    });
    for (const [i, s] of sd.state) {
      const p = all[i];
      if (!p) throw new Error(`${source}: state for parameter ${i}, but the optimizer has ${all.length}`);
      for (const [k, t] of s.buffers) {
        if (t.size !== p.size) throw new Error(`${source}: state ${i}.${k} has shape ${formatShape(t.shape)}, parameter has ${formatShape(p.shape)}`);
      }
    }
    this.state.clear();
    for (const [i, s] of sd.state) {
      this.state.set(all[i], { step: s.step, buffers: new Map([...s.buffers].map(([k, t]) => [k, new Tensor(t.values.slice(), all[i].shape)])) });
    }
    this.paramGroups.forEach((g, i) => {
      const { params: _ids, ...opts } = sd.paramGroups[i];
      void _ids;
      Object.assign(g.options, opts);
    });
  }
}

export interface AdamOptions extends HyperParams {
  lr: number;
  betas: readonly [number, number];
  eps: number;
  weightDecay: number;
}

/** Adam (Kingma & Ba) exactly as torch.optim.Adam with amsgrad=False. */
export class Adam extends Optimizer<AdamOptions> {
  constructor(params: ParamsArg<AdamOptions>, opts: Partial<AdamOptions> = {}) {
    super(params, { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0, ...opts });
    const o = this.paramGroups[0].options;
    if (!(o.lr >= 0)) throw new Error(`Adam: invalid learning rate ${o.lr}`);
    if (!(o.betas[0] >= 0 && o.betas[0] < 1 && o.betas[1] >= 0 && o.betas[1] < 1)) throw new Error(`Adam: invalid betas ${JSON.stringify(o.betas)}`);
    if (!(o.eps >= 0)) throw new Error(`Adam: invalid eps ${o.eps}`);
  }

  protected update(p: Parameter, grad: Tensor, h: AdamOptions, be: ReturnType<typeof getBackend>): void {
    const s = this.stateFor(p, ['exp_avg', 'exp_avg_sq']);
    s.step += 1;
    be.adamStepInPlace(p.values, grad.values, s.buffers.get('exp_avg')!.values, s.buffers.get('exp_avg_sq')!.values, {
      lr: h.lr,
      beta1: h.betas[0],
      beta2: h.betas[1],
      eps: h.eps,
      weightDecay: h.weightDecay,
      step: s.step,
    });
  }
}

export interface SgdOptions extends HyperParams {
  lr: number;
  momentum: number;
  dampening: number;
  nesterov: boolean;
  weightDecay: number;
}

/** Stochastic gradient descent exactly as torch.optim.SGD. */
export class SGD extends Optimizer<SgdOptions> {
  constructor(params: ParamsArg<SgdOptions>, opts: Partial<SgdOptions> & { lr: number }) {
    super(params, { momentum: 0, dampening: 0, nesterov: false, weightDecay: 0, ...opts });
    const o = this.paramGroups[0].options;
    if (!(o.lr >= 0)) throw new Error(`SGD: invalid learning rate ${o.lr}`);
    if (o.nesterov && (o.momentum <= 0 || o.dampening !== 0)) throw new Error('SGD: nesterov momentum requires a momentum and zero dampening');
  }

  protected update(p: Parameter, grad: Tensor, h: SgdOptions, be: ReturnType<typeof getBackend>): void {
    const useMomentum = h.momentum !== 0;
    const s = this.stateFor(p, useMomentum ? ['momentum_buffer'] : []);
    s.step += 1;
    be.sgdStepInPlace(p.values, grad.values, useMomentum ? s.buffers.get('momentum_buffer')!.values : null, {
      lr: h.lr,
      momentum: h.momentum,
      dampening: h.dampening,
      nesterov: h.nesterov,
      weightDecay: h.weightDecay,
      firstStep: s.step === 1,
    });
  }
}

/** AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, as torch.optim.AdamW. */
export class AdamW extends Adam {
  constructor(params: ParamsArg<AdamOptions>, opts: Partial<AdamOptions> = {}) {
    super(params, { weightDecay: 1e-2, ...opts });
  }

  protected override update(p: Parameter, grad: Tensor, h: AdamOptions, be: ReturnType<typeof getBackend>): void {
    // p ← p·(1 − lr·λ), then the Adam step without L2 decay in the gradient.
    const decay = 1 - h.lr * h.weightDecay;
    if (decay !== 1) {
      const v = p.values;
      for (let i = 0; i < v.length; i++) v[i] *= decay;
    }
    super.update(p, grad, { ...h, weightDecay: 0 }, be);
  }
}
