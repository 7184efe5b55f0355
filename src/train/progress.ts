/**
 * Per-epoch progress display.
 *
 * On a TTY (stderr by default): a cli-progress bar with done/total, loss, accuracy,
 * images/s and ETA. Elsewhere (CI, piped to a file): a plain line at most every
 * `intervalMs` (default 10 s) and one at the end, so logs stay short. `quiet` prints nothing.
 */
import { SingleBar } from 'cli-progress';

export interface ProgressOptions {
  quiet?: boolean;
  /** Where to write (default process.stderr). */
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
  /** Minimum time between plain lines when not a TTY (default 10000 ms). */
  intervalMs?: number;
}

export interface ProgressStats {
  loss?: number;
  /** Accuracy as a fraction in [0, 1] (a value above 1 is taken as a percentage already). */
  acc?: number;
  imgPerSec?: number;
}

export class ProgressBar {
  private readonly quiet: boolean;
  private readonly stream: NodeJS.WritableStream & { isTTY?: boolean };
  private readonly intervalMs: number;
  private bar: SingleBar | null = null;
  private total = 0;
  private done = 0;
  private label = '';
  private stats: ProgressStats = {};
  private startTime = 0;
  private lastLine = 0;
  private active = false;

  constructor(opts: ProgressOptions = {}) {
    this.quiet = opts.quiet ?? false;
    this.stream = opts.stream ?? process.stderr;
    this.intervalMs = opts.intervalMs ?? 10_000;
  }

  /** Begin an epoch of `total` steps (batches or images: whatever update() counts). */
  start(total: number, label: string): void {
    if (this.active) this.stop();
    this.total = Math.max(0, total);
    this.done = 0;
    this.label = label;
    this.stats = {};
    this.startTime = Date.now();
    this.lastLine = this.startTime;
    this.active = true;
    if (this.quiet) return;
    if (this.stream.isTTY) {
      this.bar = new SingleBar({
        stream: this.stream,
        format: '{label} [{bar}] {value}/{total} | loss {loss} | acc {acc} | {ips} img/s | ETA {eta_formatted}',
        barsize: 25,
        hideCursor: true,
        clearOnComplete: false,
        stopOnComplete: false,
        etaBuffer: 20,
        fps: 10,
      });
      this.bar.start(this.total, 0, this.payload());
    }
  }

  /** Report progress: `done` steps out of total, with the running statistics. */
  update(done: number, stats: ProgressStats = {}): void {
    if (!this.active) return;
    this.done = done;
    this.stats = { ...this.stats, ...stats };
    if (this.quiet) return;
    if (this.bar) {
      this.bar.update(done, this.payload());
      return;
    }
    const now = Date.now();
    if (now - this.lastLine >= this.intervalMs && done < this.total) {
      this.lastLine = now;
      this.stream.write(this.plainLine(now) + '\n');
    }
  }

  /** End the epoch (prints the final line when not a TTY). */
  stop(): void {
    if (!this.active) return;
    this.active = false;
    if (this.quiet) return;
    if (this.bar) {
      this.bar.update(this.done, this.payload());
      this.bar.stop();
      this.bar = null;
      return;
    }
    this.stream.write(this.plainLine(Date.now(), true) + '\n');
  }

  private payload(): Record<string, string> {
    return {
      label: this.label,
      loss: fmtLoss(this.stats.loss),
      acc: fmtAcc(this.stats.acc),
      ips: fmtRate(this.stats.imgPerSec),
    };
  }

  private plainLine(now: number, final = false): string {
    const elapsed = (now - this.startTime) / 1000;
    const parts = [
      `${this.label} ${this.done}/${this.total}`,
      `loss ${fmtLoss(this.stats.loss)}`,
      `acc ${fmtAcc(this.stats.acc)}`,
      `${fmtRate(this.stats.imgPerSec)} img/s`,
    ];
    if (final) parts.push(`${fmtTime(elapsed)}`);
    else {
      const eta = this.done > 0 ? (elapsed / this.done) * (this.total - this.done) : NaN;
      parts.push(`ETA ${fmtTime(eta)}`);
    }
    return parts.join(' | ');
  }
}

function fmtLoss(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(4);
}

function fmtAcc(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  return `${(v > 1 ? v : v * 100).toFixed(2)}%`;
}

function fmtRate(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? '-' : v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

function fmtTime(secs: number): string {
  if (!Number.isFinite(secs) || secs < 0) return '-';
  const s = Math.round(secs);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m${String(ss).padStart(2, '0')}s` : m > 0 ? `${m}m${String(ss).padStart(2, '0')}s` : `${ss}s`;
}
