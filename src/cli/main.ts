#!/usr/bin/env node
/**
 * convnets command line: train / eval / predict.
 *
 * Exit codes: 0 success; 1 an expected failure (bad data or weights file, divergence,
 * refused resume, ...: one line `error: <message>`) or an unexpected bug (with a stack);
 * 2 a usage error (unknown option or command, bad value, missing argument: one line).
 */
import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { CIFAR10_CLASSES, cifar10 } from '../data/cifar10.js';
import { DataLoader } from '../data/dataloader.js';
import { DataError } from '../data/errors.js';
import { decodeImage, toCifarInput } from '../data/image.js';
import { getBackend } from '../backend/registry.js';
import { readWeightsFile, loadModelWeights } from '../train/checkpoint.js';
import { evaluate, predictProbabilities, topK } from '../train/evaluate.js';
import { ProgressBar } from '../train/progress.js';
import { SCHEDULE_NAMES, type ScheduleName } from '../train/schedule.js';
import { InterruptedError, OPTIMIZER_NAMES, TrainingError, canonicalModelName, createModel, modelNames, train, type OptimizerName, type TrainConfig } from '../train/trainer.js';
import { formatEvalReport } from './format.js';
import { FREEZE_MODES, type FreezeMode } from '../models/finetune.js';
import { formatSummary, summary } from '../models/summary.js';
import { nonNegativeInt, nonNegativeNumber, oneOf, positiveInt, positiveNumber, unitInterval } from './options.js';

/** A usage problem found after parsing (exit 2). */
class UsageError extends Error {}

const EXPECTED_FS_CODES = new Set(['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'ENOSPC', 'EROFS', 'EEXIST', 'EMFILE']);

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

function isExpected(err: unknown): boolean {
  if (err instanceof DataError || err instanceof TrainingError) return true;
  const code = (err as NodeJS.ErrnoException)?.code;
  return typeof code === 'string' && EXPECTED_FS_CODES.has(code);
}

/** A model name as models.resolve() understands it (incl. width variants like mobilenetv1_0.25). */
function modelChoice(s: string): string {
  const n = canonicalModelName(s);
  if (n === null) throw new InvalidArgumentError(`expected one of ${modelNames().join(', ')} (MobileNets also take a width suffix such as mobilenetv1_0.25).`);
  return n;
}
const optimizerChoice = oneOf(() => OPTIMIZER_NAMES);
const scheduleChoice = oneOf(() => SCHEDULE_NAMES);
const freezeChoice = oneOf(() => FREEZE_MODES);

/** "3x224x224" or "224" (square, 3 channels) → [C, H, W]. */
function inputShape(s: string): number[] {
  const parts = s.toLowerCase().split('x').map((p) => Number(p));
  const shape = parts.length === 1 ? [3, parts[0], parts[0]] : parts;
  if (shape.length !== 3 || shape.some((d) => !Number.isSafeInteger(d) || d < 1)) {
    throw new InvalidArgumentError(`expected CxHxW such as 3x224x224 (or one size such as 224), got "${s}"`);
  }
  return shape;
}

function hidden(flags: string, desc: string, parse?: (s: string) => number): Option {
  const o = new Option(flags, desc).hideHelp();
  return parse ? o.argParser(parse) : o;
}

function makeProgress(quiet: boolean): ProgressBar {
  return new ProgressBar({ quiet });
}

// ---------------------------------------------------------------------------------------
// train

interface TrainOpts {
  model: string;
  epochs: number;
  batchSize: number;
  lr: number;
  optimizer: string;
  momentum: number;
  weightDecay: number;
  schedule: string;
  augment?: boolean;
  data: string;
  download?: boolean;
  seed: number;
  out?: string;
  resume?: boolean;
  limitTrain?: number;
  limitTest?: number;
  numClasses: number;
  labelSmoothing: number;
  quiet?: boolean;
  recordsPerFile?: number;
  weights?: string;
  freeze?: string;
}

async function trainCommand(o: TrainOpts): Promise<void> {
  const config: TrainConfig = {
    model: o.model,
    epochs: o.epochs,
    batchSize: o.batchSize,
    lr: o.lr,
    optimizer: o.optimizer as OptimizerName,
    momentum: o.momentum,
    weightDecay: o.weightDecay,
    schedule: o.schedule as ScheduleName,
    augment: o.augment ?? false,
    seed: o.seed,
    numClasses: o.numClasses,
    labelSmoothing: o.labelSmoothing,
    limitTrain: o.limitTrain ?? null,
    limitTest: o.limitTest ?? null,
    data: o.data,
    download: o.download ?? true,
    out: o.out ?? `./runs/${o.model}`,
    resume: o.resume ?? false,
    recordsPerFile: o.recordsPerFile ?? null,
    weights: o.weights ?? null,
    freeze: o.freeze === undefined || o.freeze === 'none' ? undefined : (o.freeze as FreezeMode),
  };
  const bar = makeProgress(o.quiet ?? false);
  // Ctrl-C stops the run between steps (never in the middle of writing files); a second
  // Ctrl-C exits at once (checkpoints are written atomically, so the last one stays whole).
  const abort = new AbortController();
  let interrupts = 0;
  const onSigint = () => {
    if (++interrupts === 1) {
      abort.abort();
      return;
    }
    bar.stop();
    process.stderr.write(`error: interrupted; the last checkpoint is kept in ${resolve(config.out)} (continue with --resume)\n`);
    process.exit(130);
  };
  process.on('SIGINT', onSigint);
  try {
    await train(config, {
      signal: abort.signal,
      log: (line) => process.stdout.write(line + '\n'),
      onEpochStart: ({ epoch, epochs, images }) => bar.start(images, `Epoch ${epoch}/${epochs}`),
      onStep: (s) => bar.update(s.images, { loss: s.loss, acc: s.acc, imgPerSec: s.imagesPerSec }),
      onTrainEnd: () => bar.stop(),
      onEvalStart: ({ epoch, images }) => bar.start(images, `Test ${epoch}`),
      onEvalStep: (s) => bar.update(s.images, { loss: s.loss, acc: s.acc, imgPerSec: s.imagesPerSec }),
      onEvalEnd: () => bar.stop(),
    });
  } finally {
    process.off('SIGINT', onSigint);
    bar.stop();
  }
}

// ---------------------------------------------------------------------------------------
// eval / predict

/** Model name and class count from the options, falling back to the weights file's metadata. */
async function modelFor(o: { model?: string; weights: string; numClasses?: number }): Promise<{ model: string; numClasses: number }> {
  let model = o.model;
  let numClasses = o.numClasses;
  if (model === undefined || numClasses === undefined) {
    const meta = (await readWeightsFile(o.weights)).metadata;
    let saved: { model?: string; numClasses?: number } = {};
    if (meta.config) {
      try {
        saved = JSON.parse(meta.config) as typeof saved;
      } catch {
        /* not ours */
      }
    }
    const savedModel = meta.model ?? saved.model;
    const savedClasses = meta.num_classes !== undefined ? Number(meta.num_classes) : saved.numClasses;
    if (model === undefined) {
      const m = savedModel !== undefined ? canonicalModelName(savedModel) : null;
      if (m === null) throw new UsageError(`--model is required (${o.weights} does not say which model it holds); one of ${modelNames().join(', ')}`);
      model = m;
    }
    numClasses ??= savedClasses !== undefined && Number.isSafeInteger(savedClasses) && savedClasses > 0 ? savedClasses : 10;
  }
  return { model, numClasses };
}

interface EvalOpts {
  model?: string;
  weights: string;
  data: string;
  download?: boolean;
  batchSize: number;
  limitTest?: number;
  numClasses?: number;
  json?: boolean;
  quiet?: boolean;
  recordsPerFile?: number;
}

async function evalCommand(o: EvalOpts): Promise<void> {
  const { model, numClasses } = await modelFor(o);
  const net = createModel(model, numClasses);
  await loadModelWeights(o.weights, net);
  let ds = await cifar10({ root: o.data, train: false, download: o.download ?? true, recordsPerFile: o.recordsPerFile, quiet: o.json || o.quiet });
  if (o.limitTest !== undefined && o.limitTest < ds.length) {
    const n = o.limitTest;
    ds = { ...ds, images: ds.images.subarray(0, n * 3072), labels: ds.labels.subarray(0, n), length: n };
  }
  const loader = new DataLoader(ds, { batchSize: o.batchSize, shuffle: false });
  const bar = makeProgress(o.quiet || o.json || false);
  let r;
  try {
    bar.start(ds.length, 'Test');
    r = await evaluate(net, loader, numClasses, { onBatch: (done, s) => bar.update(done, { loss: s.loss, acc: s.accuracy, imgPerSec: s.imagesPerSec }) });
  } finally {
    bar.stop();
    await loader.close();
  }
  const classes = numClasses === ds.classes.length ? ds.classes : Array.from({ length: numClasses }, (_, i) => `class ${i}`);
  if (o.json) {
    const out = {
      model,
      weights: resolve(o.weights),
      images: r.total,
      correct: r.correct,
      accuracy: r.accuracy,
      loss: r.loss,
      per_class: r.perClass.map((c, i) => ({ class: classes[i], correct: c.correct, total: c.total, accuracy: Number.isFinite(c.accuracy) ? c.accuracy : null })),
      confusion: r.confusion,
      classes,
    };
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
    return;
  }
  process.stdout.write(`Model: ${model} (${resolve(o.weights)}), backend ${getBackend().name}\n`);
  process.stdout.write(formatEvalReport(r, classes) + '\n');
}

interface PredictOpts {
  model?: string;
  weights: string;
  numClasses?: number;
  top: number;
  json?: boolean;
}

async function predictCommand(images: string[], o: PredictOpts): Promise<void> {
  const { model, numClasses } = await modelFor(o);
  const net = createModel(model, numClasses);
  await loadModelWeights(o.weights, net);
  const inputs: Float32Array[] = [];
  for (const path of images) inputs.push(toCifarInput(await decodeImage(path), 32));
  const probs = predictProbabilities(net, inputs);
  const names = numClasses === CIFAR10_CLASSES.length ? CIFAR10_CLASSES : Array.from({ length: numClasses }, (_, i) => `class ${i}`);
  const results = images.map((path, i) => ({
    image: path,
    top: topK(probs[i], o.top).map((t) => ({ class: names[t.index], index: t.index, probability: t.prob })),
  }));
  if (o.json) {
    process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    return;
  }
  const width = Math.max(...names.map((n) => n.length));
  for (const r of results) {
    process.stdout.write(`${r.image}\n`);
    for (const t of r.top) process.stdout.write(`  ${t.class.padEnd(width)}  ${t.probability.toFixed(4)}\n`);
  }
}

// ---------------------------------------------------------------------------------------
// The program

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('convnets')
    .description('Train, evaluate, inspect and use MobileNetV1/V2 and ResNet-18..152 on CIFAR-10.')
    .exitOverride()
    .configureOutput({ outputError: (str, write) => write(oneLine(str) + '\n') })
    .showSuggestionAfterError(true)
    .allowExcessArguments(false)
    .helpCommand(true);

  const models = () => modelNames().join('|');

  program
    .command('train')
    .description('train a model on CIFAR-10 (defaults reproduce the reference demo: MobileNetV2, Adam 1e-3, batch 128, 5 epochs)')
    .addOption(new Option('--model <name>', `model: ${models()}`).argParser(modelChoice).default('mobilenetv2'))
    .addOption(new Option('--epochs <n>', 'number of epochs').argParser(positiveInt).default(5))
    .addOption(new Option('--batch-size <n>', 'images per batch').argParser(positiveInt).default(128))
    .addOption(new Option('--lr <rate>', 'learning rate (the peak rate with --schedule onecycle)').argParser(positiveNumber).default(1e-3, '1e-3'))
    .addOption(new Option('--optimizer <name>', `optimizer: ${OPTIMIZER_NAMES.join('|')}`).argParser(optimizerChoice).default('adam'))
    .addOption(new Option('--momentum <m>', 'SGD momentum').argParser(unitInterval).default(0.9))
    .addOption(new Option('--weight-decay <wd>', 'weight decay (L2, added to the gradient as in PyTorch)').argParser(nonNegativeNumber).default(0))
    .addOption(new Option('--schedule <name>', `learning-rate schedule per step: ${SCHEDULE_NAMES.join('|')}`).argParser(scheduleChoice).default('none'))
    .option('--augment', 'random crop (padding 4) and horizontal flip')
    .option('--data <dir>', 'folder with cifar-10-batches-bin/ (or that folder)', './data')
    .option('--download', 'download CIFAR-10 when it is missing (default)')
    .option('--no-download', 'never download; fail when the data is missing')
    .addOption(new Option('--seed <n>', 'random seed (initialisation, data order, augmentation)').argParser(nonNegativeInt).default(0))
    .option('--out <dir>', 'run folder for checkpoints, metrics and curves (default: ./runs/<model>)')
    .option('--resume', 'continue the run in --out from its checkpoint')
    .addOption(new Option('--limit-train <n>', 'use only the first n training images').argParser(positiveInt))
    .addOption(new Option('--limit-test <n>', 'use only the first n test images').argParser(positiveInt))
    .addOption(new Option('--num-classes <n>', 'number of classes of the classifier').argParser(positiveInt).default(10))
    .addOption(new Option('--label-smoothing <eps>', 'label smoothing of the training loss').argParser(unitInterval).default(0))
    .option('--weights <file>', 'start from these weights (.safetensors, or a torch.save .pth state dict); a classifier of another class count is replaced')
    .addOption(new Option('--freeze <part>', `freeze parameters while fine-tuning: ${FREEZE_MODES.join('|')}`).argParser(freezeChoice).default('none'))
    .option('--quiet', 'no progress bar')
    .addOption(hidden('--records-per-file <n>', 'records per CIFAR .bin file (tests)', positiveInt))
    .action(async (o: TrainOpts) => trainCommand(o));

  program
    .command('eval')
    .description('test-set accuracy, per-class accuracy and confusion matrix of a weights file')
    .addOption(new Option('--model <name>', `model: ${models()} (default: the one named in the weights file)`).argParser(modelChoice))
    .requiredOption('--weights <file>', 'model.safetensors (or a checkpoint.safetensors)')
    .option('--data <dir>', 'folder with cifar-10-batches-bin/ (or that folder)', './data')
    .option('--download', 'download CIFAR-10 when it is missing (default)')
    .option('--no-download', 'never download; fail when the data is missing')
    .addOption(new Option('--batch-size <n>', 'images per batch').argParser(positiveInt).default(128))
    .addOption(new Option('--limit-test <n>', 'use only the first n test images').argParser(positiveInt))
    .addOption(new Option('--num-classes <n>', 'number of classes (default: from the weights file, else 10)').argParser(positiveInt))
    .option('--json', 'print the results as JSON')
    .option('--quiet', 'no progress bar')
    .addOption(hidden('--records-per-file <n>', 'records per CIFAR .bin file (tests)', positiveInt))
    .action(async (o: EvalOpts) => evalCommand(o));

  program
    .command('predict')
    .description('top classes with probabilities for PNG / JPEG images (resized to 32x32)')
    .argument('<images...>', 'PNG or JPEG files')
    .addOption(new Option('--model <name>', `model: ${models()} (default: the one named in the weights file)`).argParser(modelChoice))
    .requiredOption('--weights <file>', 'model.safetensors (or a checkpoint.safetensors)')
    .addOption(new Option('--num-classes <n>', 'number of classes (default: from the weights file, else 10)').argParser(positiveInt))
    .addOption(new Option('--top <k>', 'how many classes to show').argParser(positiveInt).default(5))
    .option('--json', 'print the results as JSON')
    .action(async (images: string[], o: PredictOpts) => predictCommand(images, o));

  program
    .command('summary')
    .description('layer table of a model: output shapes, parameters and multiply-accumulates (and depthwise-separable savings for MobileNets)')
    .addOption(new Option('--model <name>', `model: ${models()}`).argParser(modelChoice).default('mobilenetv2'))
    .addOption(new Option('--input <CxHxW>', 'input size (default 3x32x32 for CIFAR forms, 3x224x224 for *_imagenet)').argParser(inputShape))
    .addOption(new Option('--num-classes <n>', 'number of classes of the classifier').argParser(positiveInt))
    .option('--json', 'print the summary as JSON')
    .action((o: { model: string; input?: number[]; numClasses?: number; json?: boolean }) => {
      const net = createModel(o.model, o.numClasses ?? (o.model.includes('imagenet') || o.model.startsWith('tv') ? 1000 : 10));
      const shape = o.input ?? (o.model.includes('imagenet') || o.model.startsWith('tv') ? [3, 224, 224] : [3, 32, 32]);
      const s = summary(net, shape);
      if (o.json) {
        const { text: _text, ...rest } = s;
        void _text;
        process.stdout.write(JSON.stringify(rest, null, 2) + '\n');
      } else {
        process.stdout.write(formatSummary(s) + '\n');
      }
    });

  return program;
}

/** Run the CLI on `argv` (without node and script); returns the exit code. */
export async function run(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    if (argv.length === 0) {
      program.outputHelp({ error: true });
      return 2;
    }
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return 0;
      return 2; // commander already printed `error: ...`
    }
    if (err instanceof UsageError) {
      process.stderr.write(`error: ${oneLine(err.message)}\n`);
      return 2;
    }
    if (isExpected(err)) {
      process.stderr.write(`error: ${oneLine((err as Error).message)}\n`);
      return err instanceof InterruptedError ? 130 : 1;
    }
    process.stderr.write(`error: unexpected failure (a bug; please report it with the trace below)\n${(err as Error)?.stack ?? String(err)}\n`);
    return 1;
  }
}

function isMain(): boolean {
  if (!process.argv[1]) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href;
  } catch {
    return false;
  }
}

if (isMain()) {
  const code = await run(process.argv.slice(2));
  process.exitCode = code;
  // Leave normally so stdout drains; force the exit if something still holds the loop.
  setTimeout(() => process.exit(code), 2000).unref();
}
