/**
 * Learning-rate schedules, stepped once per optimiser step (per batch).
 *
 * Every schedule is a pure function of the global step (the number of optimiser steps taken
 * before the current one), so a resumed run only needs the step count to continue exactly.
 *
 * - `none`: the constant base learning rate.
 * - `cosine`: torch.optim.lr_scheduler.CosineAnnealingLR(T_max = total steps, eta_min = 0) in
 *   its closed form, lr(t) = eta_min + (base - eta_min) * (1 + cos(pi * t / T)) / 2.
 *   (PyTorch's get_lr() uses a recursive form that agrees up to rounding.)
 * - `onecycle`: torch.optim.lr_scheduler.OneCycleLR with its defaults (pct_start 0.3,
 *   div_factor 25, final_div_factor 1e4, anneal_strategy 'cos', three_phase False), max_lr =
 *   the base learning rate, total_steps = epochs * batches per epoch. Momentum / Adam's beta1
 *   are NOT cycled (cycle_momentum = False): the optimiser's momentum and betas stay fixed.
 */

export type ScheduleName = 'none' | 'cosine' | 'onecycle';

export const SCHEDULE_NAMES: readonly ScheduleName[] = ['none', 'cosine', 'onecycle'];

export interface LrSchedule {
  readonly name: ScheduleName;
  /** Total number of optimiser steps of the run. */
  readonly totalSteps: number;
  /** The learning rate for the optimiser step with 0-based index `step`. */
  lrAt(step: number): number;
}

function checkSteps(totalSteps: number, what: string): void {
  if (!Number.isSafeInteger(totalSteps) || totalSteps < 1) {
    throw new Error(`${what}: total steps must be a positive integer, got ${totalSteps}`);
  }
}

function checkStep(step: number, totalSteps: number, what: string): void {
  // Like PyTorch, stepping up to total_steps is accepted; beyond that is an error.
  if (!Number.isSafeInteger(step) || step < 0 || step > totalSteps) {
    throw new Error(`${what}: step ${step} is outside 0..${totalSteps}`);
  }
}

/** CosineAnnealingLR's closed form: base * (1 + cos(pi * step / totalSteps)) / 2 (+ etaMin). */
export function cosineAnnealingLr(baseLr: number, step: number, totalSteps: number, etaMin = 0): number {
  checkSteps(totalSteps, 'cosine schedule');
  checkStep(step, totalSteps, 'cosine schedule');
  return etaMin + ((baseLr - etaMin) * (1 + Math.cos((Math.PI * step) / totalSteps))) / 2;
}

export interface OneCycleOptions {
  pctStart?: number;
  divFactor?: number;
  finalDivFactor?: number;
  annealStrategy?: 'cos' | 'linear';
}

function annealCos(start: number, end: number, pct: number): number {
  const cosOut = Math.cos(Math.PI * pct) + 1;
  return end + ((start - end) / 2) * cosOut;
}

function annealLinear(start: number, end: number, pct: number): number {
  return (end - start) * pct + start;
}

/**
 * OneCycleLR's learning rate at `step` (PyTorch's get_lr() with last_epoch = step):
 * phase 1 from max_lr / div_factor up to max_lr over float(pct_start * total) - 1 steps,
 * phase 2 down to initial_lr / final_div_factor at step total - 1.
 */
export function oneCycleLr(maxLr: number, step: number, totalSteps: number, opts: OneCycleOptions = {}): number {
  checkSteps(totalSteps, 'one-cycle schedule');
  checkStep(step, totalSteps, 'one-cycle schedule');
  const pctStart = opts.pctStart ?? 0.3;
  const divFactor = opts.divFactor ?? 25;
  const finalDivFactor = opts.finalDivFactor ?? 1e4;
  if (!(pctStart >= 0 && pctStart <= 1)) throw new Error(`one-cycle schedule: pct_start must be in [0, 1], got ${pctStart}`);
  const anneal = (opts.annealStrategy ?? 'cos') === 'cos' ? annealCos : annealLinear;
  const initialLr = maxLr / divFactor;
  const minLr = initialLr / finalDivFactor;
  const phases = [
    { endStep: pctStart * totalSteps - 1, startLr: initialLr, endLr: maxLr },
    { endStep: totalSteps - 1, startLr: maxLr, endLr: minLr },
  ];
  let startStep = 0;
  for (let i = 0; i < phases.length; i++) {
    const p = phases[i];
    if (step <= p.endStep || i === phases.length - 1) {
      const pct = (step - startStep) / (p.endStep - startStep);
      return anneal(p.startLr, p.endLr, pct);
    }
    startStep = p.endStep;
  }
  /* c8 ignore next */
  throw new Error('unreachable');
}

/** Build the schedule `name` for a run of `totalSteps` optimiser steps at base rate `baseLr`. */
export function makeSchedule(name: ScheduleName, baseLr: number, totalSteps: number): LrSchedule {
  checkSteps(totalSteps, `${name} schedule`);
  switch (name) {
    case 'none':
      return { name, totalSteps, lrAt: () => baseLr };
    case 'cosine':
      return { name, totalSteps, lrAt: (step) => cosineAnnealingLr(baseLr, step, totalSteps) };
    case 'onecycle':
      return { name, totalSteps, lrAt: (step) => oneCycleLr(baseLr, step, totalSteps) };
    default:
      throw new Error(`unknown schedule "${String(name)}"; available: ${SCHEDULE_NAMES.join(', ')}`);
  }
}
