/**
 * The training loop as a library function: `train(config, hooks)`.
 *
 * One epoch = one pass over the (shuffled, optionally augmented) training set with the
 * optimiser stepping once per batch (learning rate from the schedule), then an evaluation
 * of the test set in eval mode under noGrad. After each epoch the run folder gets, each
 * written atomically:
 *   checkpoint.safetensors  model + optimiser + RNG + config + history (see checkpoint.ts)
 *   model.safetensors       the weights alone, PyTorch key names
 *   metrics.jsonl           one JSON object per epoch (rewritten whole from the history)
 *   curves.png, curves.html training curves
 *
 * Determinism: the model is initialised from `seed`; batch order and augmentation are a
 * function of (seed, epoch) (DataLoader.setEpoch); the learning rate is a function of the
 * global step; the checkpoint holds everything else (weights, BN statistics and counters,
 * optimiser buffers and step counts, the default generator). So a run resumed from the
 * checkpoint of epoch k ends with exactly the weights of an uninterrupted run.
 *
 * Memory: only plain numbers are kept across steps (loss and accuracy sums), never tensors.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { getBackend } from '../backend/registry.js';
import { beginArena, endArena, withArena } from '../backend/arena.js';
import { cifar10, type ImageDataset } from '../data/cifar10.js';
import { DataLoader } from '../data/dataloader.js';
import { writeFileAtomic } from '../io/atomic.js';
import * as models from '../models/index.js';
import { freeze, prepareFineTune, FREEZE_MODES, type FreezeMode } from '../models/finetune.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear } from '../nn/layers.js';
import { Module } from '../nn/module.js';
import { Adam, SGD, type HyperParams, type Optimizer } from '../optim/optimizer.js';
import * as F from '../tensor/functional.js';
import { defaultGenerator, manualSeed } from '../tensor/random.js';
import { Tensor } from '../tensor/tensor.js';
import { readCheckpoint, restoreCheckpoint, saveCheckpoint, saveModelWeights, type LoadedCheckpoint } from './checkpoint.js';
import { countCorrect, evaluate } from './evaluate.js';
import { renderCurvesHtml, renderCurvesPng, type HistoryEntry } from './plot.js';
import { makeSchedule, SCHEDULE_NAMES, type ScheduleName } from './schedule.js';

export const CHECKPOINT_FILE = 'checkpoint.safetensors';
export const MODEL_FILE = 'model.safetensors';
export const METRICS_FILE = 'metrics.jsonl';
export const CURVES_PNG = 'curves.png';
export const CURVES_HTML = 'curves.html';

export type OptimizerName = 'adam' | 'sgd';
export const OPTIMIZER_NAMES: readonly OptimizerName[] = ['adam', 'sgd'];

export interface TrainConfig {
  model: string;
  epochs: number;
  batchSize: number;
  lr: number;
  optimizer: OptimizerName;
  /** SGD momentum (ignored by Adam). */
  momentum: number;
  weightDecay: number;
  schedule: ScheduleName;
  /** RandomCrop(32, padding 4) + RandomHorizontalFlip. */
  augment: boolean;
  seed: number;
  numClasses: number;
  labelSmoothing: number;
  /** Use only the first N training / test images (null: all). */
  limitTrain: number | null;
  limitTest: number | null;
  /** Folder holding cifar-10-batches-bin/ (or that folder). */
  data: string;
  download: boolean;
  out: string;
  resume: boolean;
  /** Records per CIFAR .bin file (default 10000; for small test files). */
  recordsPerFile?: number | null;
  /** Start from these weights (.safetensors or torch.save .pth); a classifier of another class count is replaced. */
  weights?: string | null;
  /** Which parameters to freeze when fine-tuning: none (default), backbone (all but the classifier), all. */
  freeze?: FreezeMode;
}

/** One line of metrics.jsonl. Accuracies are fractions in [0, 1]. */
export interface EpochMetrics {
  epoch: number;
  time_s: number;
  train_loss: number;
  train_acc: number;
  test_loss: number | null;
  test_acc: number | null;
  /** Learning rate of the epoch's last optimiser step. */
  lr: number;
  images_per_s: number;
  eval_time_s: number;
}

export interface StepInfo {
  epoch: number;
  step: number;
  steps: number;
  images: number;
  totalImages: number;
  /** Running means over the epoch so far. */
  loss: number;
  acc: number;
  imagesPerSec: number;
  lr: number;
}

export interface TrainHooks {
  /** Stop between steps when aborted (an InterruptedError; files are never left half-written). */
  signal?: AbortSignal;
  /** Lines for the user (the CLI prints them on stdout). */
  log?: (line: string) => void;
  /** Silence the data layer's download messages. */
  quietData?: boolean;
  onEpochStart?: (info: { epoch: number; epochs: number; steps: number; images: number }) => void;
  onStep?: (info: StepInfo) => void;
  onTrainEnd?: (info: { epoch: number }) => void;
  onEvalStart?: (info: { epoch: number; images: number }) => void;
  onEvalStep?: (info: { epoch: number; images: number; totalImages: number; loss: number; acc: number; imagesPerSec: number }) => void;
  onEvalEnd?: (info: { epoch: number }) => void;
  onEpochEnd?: (metrics: EpochMetrics) => void;
}

export interface TrainResult {
  net: Module;
  history: EpochMetrics[];
  /** Epoch the run started at (> 1 when resumed). */
  startEpoch: number;
}

/** An expected failure of a training run (divergence, refused resume, ...): one line, exit 1. */
export class TrainingError extends Error {
  constructor(message: string) {
    super(message.replace(/\s*[\r\n]+\s*/g, ' ').trim());
    this.name = 'TrainingError';
  }
}

/** The run was stopped through TrainHooks.signal (e.g. Ctrl-C). */
export class InterruptedError extends TrainingError {
  constructor(message: string) {
    super(message);
    this.name = 'InterruptedError';
  }
}

// ---------------------------------------------------------------------------------------
// Models

/**
 * A very small CNN (about 1.6 k parameters) for tests of the training machinery on slow
 * backends. Available only when the environment has CONVNETS_TEST_MODELS=1.
 */
export class TinyCnn extends Module {
  conv1: Conv2d;
  bn1: BatchNorm2d;
  conv2: Conv2d;
  bn2: BatchNorm2d;
  pool: AdaptiveAvgPool2d;
  fc: Linear;

  constructor(opts: { numClasses?: number } = {}) {
    super();
    this.conv1 = new Conv2d(3, 8, 3, { stride: 2, padding: 1, bias: false });
    this.bn1 = new BatchNorm2d(8);
    this.conv2 = new Conv2d(8, 16, 3, { stride: 2, padding: 1, bias: false });
    this.bn2 = new BatchNorm2d(16);
    this.pool = new AdaptiveAvgPool2d(1);
    this.fc = new Linear(16, opts.numClasses ?? 10);
  }

  forward(x: Tensor): Tensor {
    x = F.relu(this.bn1.forward(this.conv1.forward(x)));
    x = F.relu(this.bn2.forward(this.conv2.forward(x)));
    return this.fc.forward(F.flatten(this.pool.forward(x), 1));
  }
}

function testModelsEnabled(): boolean {
  return process.env.CONVNETS_TEST_MODELS === '1';
}

/** Model names the trainer and CLI accept (width variants such as mobilenetv1_0.25 too). */
export function modelNames(): string[] {
  return [...models.list(), ...(testModelsEnabled() ? ['tinycnn'] : [])];
}

/** The canonical spelling of a model name (lower case, trimmed), or null when unknown. */
export function canonicalModelName(name: string): string | null {
  const n = name.trim().toLowerCase();
  if (n === 'tinycnn') return testModelsEnabled() ? n : null;
  return models.resolve(n) ? n : null;
}

/** Build a model by name (throws TrainingError for unknown names). */
export function createModel(name: string, numClasses: number): Module {
  const n = canonicalModelName(name);
  if (n === null) throw new TrainingError(`unknown model "${name}"; available: ${modelNames().join(', ')}`);
  if (n === 'tinycnn') return new TinyCnn({ numClasses });
  return models.create(n, { numClasses });
}

export function makeOptimizer(net: Module, config: Pick<TrainConfig, 'optimizer' | 'lr' | 'momentum' | 'weightDecay'>): Optimizer<HyperParams> {
  if (config.optimizer === 'adam') return new Adam(net.parameters(), { lr: config.lr, weightDecay: config.weightDecay }) as unknown as Optimizer<HyperParams>;
  if (config.optimizer === 'sgd') {
    return new SGD(net.parameters(), { lr: config.lr, momentum: config.momentum, weightDecay: config.weightDecay }) as unknown as Optimizer<HyperParams>;
  }
  throw new TrainingError(`unknown optimizer "${String(config.optimizer)}"; available: ${OPTIMIZER_NAMES.join(', ')}`);
}

function oneLineMessage(err: unknown): string {
  return String((err as Error)?.message ?? err).replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

// ---------------------------------------------------------------------------------------
// Config checks

function validateConfig(c: TrainConfig): void {
  const posInt = (v: number, flag: string) => {
    if (!Number.isSafeInteger(v) || v < 1) throw new TrainingError(`${flag} must be a positive integer, got ${v}`);
  };
  posInt(c.epochs, '--epochs');
  posInt(c.batchSize, '--batch-size');
  posInt(c.numClasses, '--num-classes');
  if (c.limitTrain !== null) posInt(c.limitTrain, '--limit-train');
  if (c.limitTest !== null) posInt(c.limitTest, '--limit-test');
  if (!(c.lr > 0 && Number.isFinite(c.lr))) throw new TrainingError(`--lr must be a positive number, got ${c.lr}`);
  if (!(c.weightDecay >= 0 && Number.isFinite(c.weightDecay))) throw new TrainingError(`--weight-decay must be >= 0, got ${c.weightDecay}`);
  if (!(c.momentum >= 0 && c.momentum < 1)) throw new TrainingError(`--momentum must be in [0, 1), got ${c.momentum}`);
  if (!(c.labelSmoothing >= 0 && c.labelSmoothing < 1)) throw new TrainingError(`--label-smoothing must be in [0, 1), got ${c.labelSmoothing}`);
  if (!Number.isSafeInteger(c.seed) || c.seed < 0) throw new TrainingError(`--seed must be a non-negative integer, got ${c.seed}`);
  if (!SCHEDULE_NAMES.includes(c.schedule)) throw new TrainingError(`unknown schedule "${c.schedule}"; available: ${SCHEDULE_NAMES.join(', ')}`);
  if (c.freeze !== undefined && !FREEZE_MODES.includes(c.freeze)) throw new TrainingError(`unknown --freeze mode "${c.freeze}"; available: ${FREEZE_MODES.join(', ')}`);
  if (!OPTIMIZER_NAMES.includes(c.optimizer)) throw new TrainingError(`unknown optimizer "${c.optimizer}"; available: ${OPTIMIZER_NAMES.join(', ')}`);
  if (canonicalModelName(c.model) === null) throw new TrainingError(`unknown model "${c.model}"; available: ${modelNames().join(', ')}`);
}

/** The settings that decide the weights, with their flags, as compared on --resume. */
function resumeKeys(c: TrainConfig): [keyof TrainConfig, string][] {
  const keys: [keyof TrainConfig, string][] = [
    ['model', '--model'],
    ['numClasses', '--num-classes'],
    ['batchSize', '--batch-size'],
    ['optimizer', '--optimizer'],
    ['lr', '--lr'],
    ['weightDecay', '--weight-decay'],
    ['schedule', '--schedule'],
    ['augment', '--augment'],
    ['seed', '--seed'],
    ['labelSmoothing', '--label-smoothing'],
    ['limitTrain', '--limit-train'],
    ['weights', '--weights'],
    ['freeze', '--freeze'],
  ];
  if (c.optimizer === 'sgd') keys.push(['momentum', '--momentum']);
  // The schedule's length depends on the number of epochs; a constant rate may be extended.
  if (c.schedule !== 'none') keys.push(['epochs', '--epochs']);
  return keys;
}

function showSetting(flag: string, v: unknown): string {
  if (typeof v === 'boolean') return v ? flag : `no ${flag}`;
  if (v === null || v === undefined) return `no ${flag}`;
  return `${flag} ${String(v)}`;
}

function checkResumable(saved: Partial<TrainConfig>, now: TrainConfig, path: string): void {
  const diffs = resumeKeys(now).filter(([k]) => (saved[k] ?? null) !== (now[k] ?? null));
  if (diffs.length === 0) return;
  const was = diffs.map(([k, f]) => showSetting(f, saved[k])).join(', ');
  const is = diffs.map(([k, f]) => showSetting(f, now[k])).join(', ');
  throw new TrainingError(
    `cannot resume from ${path}: it was made with ${was} but this run has ${is}; rerun with the checkpoint's settings, or choose another --out to start a new run`,
  );
}

// ---------------------------------------------------------------------------------------
// Helpers

function limitDataset(ds: ImageDataset, n: number | null): ImageDataset {
  if (n === null || n >= ds.length) return ds;
  const per = ds.channels * ds.height * ds.width;
  return { ...ds, images: ds.images.subarray(0, n * per), labels: ds.labels.subarray(0, n), length: n };
}

/** History in the form plot.ts draws. */
export function toPlotHistory(history: EpochMetrics[]): HistoryEntry[] {
  return history.map((h) => ({
    epoch: h.epoch,
    trainLoss: h.train_loss,
    trainAcc: h.train_acc,
    testLoss: h.test_loss ?? undefined,
    testAcc: h.test_acc ?? undefined,
  }));
}

/** Rewrite metrics.jsonl and the curves from the whole history (idempotent on resume). */
export async function writeRunFiles(out: string, history: EpochMetrics[]): Promise<void> {
  const lines = history.map((h) => JSON.stringify(h)).join('\n');
  await writeFileAtomic(join(out, METRICS_FILE), history.length ? lines + '\n' : '');
  const ph = toPlotHistory(history);
  await renderCurvesPng(ph, join(out, CURVES_PNG));
  await renderCurvesHtml(ph, join(out, CURVES_HTML));
}

function fmtPct(v: number | null): string {
  return v === null || !Number.isFinite(v) ? 'n/a' : `${(v * 100).toFixed(2)}%`;
}

function fmtLoss(v: number | null): string {
  return v === null ? 'n/a' : Number.isFinite(v) ? v.toFixed(4) : String(v);
}

/** The per-epoch summary line. */
export function epochLine(m: EpochMetrics, epochs: number): string {
  return (
    `Epoch ${m.epoch}/${epochs} done in ${m.time_s.toFixed(1)} s: ` +
    `train loss ${fmtLoss(m.train_loss)}, train acc ${fmtPct(m.train_acc)}, ` +
    `test loss ${fmtLoss(m.test_loss)}, test acc ${fmtPct(m.test_acc)}`
  );
}

const round = (v: number, d: number) => (Number.isFinite(v) ? Number(v.toFixed(d)) : v);

/**
 * The batches of `it`, each one's processing inside its own step arena: the arena begins when a
 * batch is handed out and ends when the consumer asks for the next one (evaluate() reads only
 * plain numbers out of a batch before that).
 */
async function* arenaPerBatch<T>(it: AsyncIterable<T>): AsyncGenerator<T> {
  for await (const b of it) {
    const s = beginArena();
    try {
      yield b;
    } finally {
      endArena(s);
    }
  }
}

// ---------------------------------------------------------------------------------------
// The loop

export async function train(config: TrainConfig, hooks: TrainHooks = {}): Promise<TrainResult> {
  const log = hooks.log ?? (() => undefined);
  validateConfig(config);
  const cfg: TrainConfig = { ...config, model: canonicalModelName(config.model)! };
  const out = resolve(cfg.out);
  const ckPath = join(out, CHECKPOINT_FILE);

  // Refuse early (before loading any data) when the output folder is in the wrong state.
  let ck: LoadedCheckpoint<Partial<TrainConfig>, EpochMetrics> | null = null;
  if (cfg.resume) {
    if (!existsSync(ckPath)) {
      throw new TrainingError(`--resume: there is no checkpoint at ${ckPath}; run without --resume to start a new run (or pass the run's --out)`);
    }
    ck = await readCheckpoint<Partial<TrainConfig>, EpochMetrics>(ckPath);
    checkResumable(ck.config, cfg, ckPath);
  } else if (existsSync(ckPath)) {
    throw new TrainingError(`${ckPath} exists from an earlier run; pass --resume to continue it, or choose another --out (nothing was overwritten)`);
  }

  const dataOpts = { root: cfg.data, download: cfg.download, quiet: hooks.quietData, recordsPerFile: cfg.recordsPerFile ?? undefined };
  const trainSet = limitDataset(await cifar10({ ...dataOpts, train: true }), cfg.limitTrain);
  const testSet = limitDataset(await cifar10({ ...dataOpts, train: false }), cfg.limitTest);
  const stepsPerEpoch = Math.ceil(trainSet.length / cfg.batchSize);
  if (ck) {
    const savedSize = ck.extra?.trainSize;
    if (savedSize !== undefined && savedSize !== trainSet.length) {
      throw new TrainingError(
        `cannot resume from ${ckPath}: it was trained on ${String(savedSize)} training images, this run has ${trainSet.length}; use the same data and --limit-train`,
      );
    }
  }

  manualSeed(cfg.seed);
  const net = createModel(cfg.model, cfg.numClasses);
  if (cfg.weights && !ck) {
    // Fine-tuning: weights from another run or from PyTorch; a head of another size is replaced.
    try {
      const r = await prepareFineTune(net, { weights: cfg.weights, numClasses: cfg.numClasses, freeze: cfg.freeze ?? 'none' });
      for (const line of r.lines) log(line);
    } catch (err) {
      throw new TrainingError(oneLineMessage(err));
    }
  } else if (cfg.freeze && cfg.freeze !== 'none') {
    const r = freeze(net, cfg.freeze);
    log(`freeze ${cfg.freeze}: ${r.trainable.toLocaleString('en-US')} of ${r.total.toLocaleString('en-US')} parameters trainable`);
  }
  const optimizer = makeOptimizer(net, cfg);
  const schedule = makeSchedule(cfg.schedule, cfg.lr, cfg.epochs * stepsPerEpoch);

  let history: EpochMetrics[] = [];
  let startEpoch = 1;
  let globalStep = 0;
  if (ck) {
    restoreCheckpoint(ck, net, optimizer);
    defaultGenerator.setState(ck.rng);
    history = ck.history.slice(0, ck.epoch);
    startEpoch = ck.epoch + 1;
    globalStep = ck.globalStep;
    if (globalStep !== ck.epoch * stepsPerEpoch) {
      throw new TrainingError(`cannot resume from ${ckPath}: it records ${globalStep} steps after ${ck.epoch} epochs, expected ${ck.epoch * stepsPerEpoch}`);
    }
  }

  const numParams = net.numParameters();
  log(String(net));
  log(`Model: ${cfg.model}, ${numParams.toLocaleString('en-US')} parameters`);
  log(`Backend: ${getBackend().name}`);
  log(`Data: ${trainSet.length} training and ${testSet.length} test images from ${resolve(cfg.data)}`);
  log(
    `Optimizer: ${cfg.optimizer} (lr ${cfg.lr}${cfg.optimizer === 'sgd' ? `, momentum ${cfg.momentum}` : ''}, weight decay ${cfg.weightDecay}), ` +
      `schedule ${cfg.schedule}, batch size ${cfg.batchSize}, ${stepsPerEpoch} steps per epoch${cfg.augment ? ', augmentation on' : ''}`,
  );
  log(`Output: ${out}`);
  if (ck) log(`Resuming from ${ckPath} after epoch ${ck.epoch}/${cfg.epochs}`);
  if (startEpoch > cfg.epochs) {
    log(`Nothing to do: the checkpoint already has ${ck?.epoch ?? 0} epochs (asked for ${cfg.epochs}).`);
    return { net, history, startEpoch };
  }

  await mkdir(out, { recursive: true });
  const trainLoader = new DataLoader(trainSet, {
    batchSize: cfg.batchSize,
    shuffle: true,
    seed: cfg.seed,
    randomCrop: cfg.augment ? { size: 32, padding: 4 } : undefined,
    horizontalFlip: cfg.augment,
  });
  const testLoader = new DataLoader(testSet, { batchSize: cfg.batchSize, shuffle: false });
  const savedConfig: TrainConfig = { ...cfg, out, data: resolve(cfg.data), resume: false };
  const useArena = process.env.CONVNETS_ARENA !== '0';

  try {
    for (let epoch = startEpoch; epoch <= cfg.epochs; epoch++) {
      trainLoader.setEpoch(epoch - 1);
      net.train();
      hooks.onEpochStart?.({ epoch, epochs: cfg.epochs, steps: stepsPerEpoch, images: trainSet.length });
      const t0 = performance.now();
      let lossSum = 0;
      let correct = 0;
      let seen = 0;
      let step = 0;
      let lr = optimizer.lr;
      const kept = () =>
        epoch > 1 ? `the last good checkpoint (epoch ${epoch - 1}) is kept in ${out}` : 'no checkpoint was written (it stopped in the first epoch)';
      const checkAbort = (where: string) => {
        if (hooks.signal?.aborted) throw new InterruptedError(`interrupted ${where}; ${kept()} (continue with --resume)`);
      };
      for await (const b of trainLoader) {
        step++;
        checkAbort(`at epoch ${epoch}, step ${step}`);
        lr = schedule.lrAt(globalStep);
        optimizer.lr = lr;
        // One step inside a step arena (backend/arena.ts): its kernel outputs are recycled for
        // the next step instead of being left to the garbage collector; only plain numbers
        // leave it. CONVNETS_ARENA=0 turns this off.
        const stepOnce = (): { lv: number; correct: number } => {
          optimizer.zeroGrad();
          const side = Math.round(Math.sqrt(b.x.length / (b.size * 3)));
          const logits = net.forward(new Tensor(b.x, [b.size, 3, side, side]));
          const loss = F.crossEntropy(logits, b.y, { labelSmoothing: cfg.labelSmoothing });
          const lv = loss.item();
          if (!Number.isFinite(lv)) {
            const what = Number.isNaN(lv) ? 'NaN' : lv > 0 ? '+Inf' : '-Inf';
            const keptMsg = epoch > 1 ? kept() : 'no checkpoint was written (it diverged in the first epoch); try a smaller --lr';
            throw new TrainingError(`loss became ${what} at epoch ${epoch}, step ${step}; ${keptMsg}`);
          }
          const stepCorrect = countCorrect(logits.values, b.y, logits.shape[1]);
          loss.backward();
          optimizer.step();
          return { lv, correct: stepCorrect };
        };
        const r = useArena ? withArena(stepOnce) : stepOnce();
        const lv = r.lv;
        globalStep++;
        lossSum += lv * b.size;
        correct += r.correct;
        seen += b.size;
        const secs = (performance.now() - t0) / 1000;
        hooks.onStep?.({
          epoch,
          step,
          steps: stepsPerEpoch,
          images: seen,
          totalImages: trainSet.length,
          loss: lossSum / seen,
          acc: correct / seen,
          imagesPerSec: secs > 0 ? seen / secs : NaN,
          lr,
        });
      }
      optimizer.zeroGrad(); // drop the last gradients before evaluating
      const trainSecs = (performance.now() - t0) / 1000;
      hooks.onTrainEnd?.({ epoch });

      checkAbort(`at the end of epoch ${epoch}, before its evaluation`);
      hooks.onEvalStart?.({ epoch, images: testSet.length });
      const e0 = performance.now();
      testLoader.setEpoch(0);
      const ev = await evaluate(net, useArena ? arenaPerBatch(testLoader) : testLoader, cfg.numClasses, {
        onBatch: (done, s) => hooks.onEvalStep?.({ epoch, images: done, totalImages: testSet.length, loss: s.loss, acc: s.accuracy, imagesPerSec: s.imagesPerSec }),
      });
      const evalSecs = (performance.now() - e0) / 1000;
      hooks.onEvalEnd?.({ epoch });

      const m: EpochMetrics = {
        epoch,
        time_s: round(trainSecs, 3),
        train_loss: lossSum / seen,
        train_acc: correct / seen,
        test_loss: Number.isFinite(ev.loss) ? ev.loss : null,
        test_acc: Number.isFinite(ev.accuracy) ? ev.accuracy : null,
        lr,
        images_per_s: round(seen / trainSecs, 2),
        eval_time_s: round(evalSecs, 3),
      };
      history.push(m);
      await saveCheckpoint(join(out, CHECKPOINT_FILE), net, optimizer, {
        epoch,
        globalStep,
        config: savedConfig,
        history,
        rng: defaultGenerator.getState(),
        extra: { trainSize: trainSet.length, testSize: testSet.length },
      });
      await saveModelWeights(join(out, MODEL_FILE), net, { model: cfg.model, num_classes: String(cfg.numClasses) });
      await writeRunFiles(out, history);
      hooks.onEpochEnd?.(m);
      log(epochLine(m, cfg.epochs));
    }
  } finally {
    await trainLoader.close();
    await testLoader.close();
  }
  return { net, history, startEpoch };
}
