// Plain-text tables for the CLI: per-class accuracy and the confusion matrix.
import type { EvalResult } from '../train/evaluate.js';

function pct(v: number): string {
  return Number.isFinite(v) ? `${(v * 100).toFixed(2)}%` : 'n/a';
}

/** Rows of cells as an aligned table (first column left-aligned, the rest right-aligned). */
export function table(rows: string[][], gap = 2): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  const sep = ' '.repeat(gap);
  return rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(sep).trimEnd()).join('\n');
}

export function perClassTable(r: EvalResult, classes: string[]): string {
  const rows = [['class', 'correct', 'total', 'accuracy']];
  r.perClass.forEach((c, i) => rows.push([`${i} ${classes[i] ?? `class ${i}`}`, String(c.correct), String(c.total), pct(c.accuracy)]));
  return table(rows);
}

/** Rows: true class; columns: predicted class (by index, named in the row labels). */
export function confusionTable(r: EvalResult, classes: string[]): string {
  const n = r.confusion.length;
  const rows = [['true \\ predicted', ...Array.from({ length: n }, (_, j) => String(j))]];
  r.confusion.forEach((row, i) => rows.push([`${i} ${classes[i] ?? `class ${i}`}`, ...row.map(String)]));
  return table(rows);
}

export function formatEvalReport(r: EvalResult, classes: string[]): string {
  return [
    `Test accuracy: ${pct(r.accuracy)} (${r.correct}/${r.total})`,
    `Test loss: ${Number.isFinite(r.loss) ? r.loss.toFixed(4) : String(r.loss)}`,
    '',
    'Per-class accuracy:',
    perClassTable(r, classes),
    '',
    'Confusion matrix (rows: true class, columns: predicted class):',
    confusionTable(r, classes),
  ].join('\n');
}
