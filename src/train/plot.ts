/**
 * Training curves: a PNG (drawn here with a tiny built-in bitmap font, encoded by pngjs)
 * and a self-contained HTML page (inline SVG + a table), both written atomically.
 *
 * Two panels: loss, and accuracy in %. Each has a train line and, when the history has
 * test values, a test line, with axes, tick labels and a legend.
 *
 * Accuracies may be given as fractions (all values <= 1, e.g. 0.87) or as percentages
 * (e.g. 87.0): when every accuracy in the history is <= 1 they are taken as fractions and
 * multiplied by 100. Non-finite values are skipped.
 */
import { PNG } from 'pngjs';
import { writeFileAtomic } from '../io/atomic.js';

export interface HistoryEntry {
  epoch: number;
  trainLoss: number;
  trainAcc: number;
  testLoss?: number;
  testAcc?: number;
}

export const PLOT_WIDTH = 900;
export const PLOT_HEIGHT = 400;

type Rgb = readonly [number, number, number];
const TRAIN_COLOR: Rgb = [31, 119, 180];
const TEST_COLOR: Rgb = [255, 127, 14];
const AXIS_COLOR: Rgb = [40, 40, 40];
const GRID_COLOR: Rgb = [225, 225, 225];
const TEXT_COLOR: Rgb = [30, 30, 30];

interface Series {
  name: string;
  color: Rgb;
  points: [number, number][];
}

interface Chart {
  title: string;
  series: Series[];
  x0: number;
  x1: number;
  y0: number;
  y1: number;
  xTicks: number[];
  yTicks: number[];
  xDecimals: number;
  yDecimals: number;
}

/** Write the two-panel PNG (900x400) to `path` atomically. */
export async function renderCurvesPng(history: HistoryEntry[], path: string): Promise<void> {
  await writeFileAtomic(path, curvesPng(history));
}

/** Write the self-contained HTML report to `path` atomically. */
export async function renderCurvesHtml(history: HistoryEntry[], path: string): Promise<void> {
  await writeFileAtomic(path, curvesHtml(history));
}

// ---------------------------------------------------------------------------------------
// Chart model (shared by PNG and SVG)

function accScale(history: HistoryEntry[]): number {
  const accs: number[] = [];
  for (const h of history) {
    if (Number.isFinite(h.trainAcc)) accs.push(h.trainAcc);
    if (h.testAcc !== undefined && Number.isFinite(h.testAcc)) accs.push(h.testAcc);
  }
  return accs.length > 0 && accs.every((a) => a <= 1) ? 100 : 1;
}

function points(history: HistoryEntry[], get: (h: HistoryEntry) => number | undefined, scale = 1): [number, number][] {
  const out: [number, number][] = [];
  for (const h of history) {
    const v = get(h);
    if (Number.isFinite(h.epoch) && v !== undefined && Number.isFinite(v)) out.push([h.epoch, v * scale]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

function buildCharts(history: HistoryEntry[]): [Chart, Chart] {
  const s = accScale(history);
  const lossSeries: Series[] = [{ name: 'train', color: TRAIN_COLOR, points: points(history, (h) => h.trainLoss) }];
  const accSeries: Series[] = [{ name: 'train', color: TRAIN_COLOR, points: points(history, (h) => h.trainAcc, s) }];
  const testLoss = points(history, (h) => h.testLoss);
  const testAcc = points(history, (h) => h.testAcc, s);
  if (testLoss.length > 0) lossSeries.push({ name: 'test', color: TEST_COLOR, points: testLoss });
  if (testAcc.length > 0) accSeries.push({ name: 'test', color: TEST_COLOR, points: testAcc });
  return [makeChart('loss', lossSeries, false), makeChart('accuracy (%)', accSeries, true)];
}

function makeChart(title: string, series: Series[], percent: boolean): Chart {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  let xmin = xs.length ? Math.min(...xs) : 0;
  let xmax = xs.length ? Math.max(...xs) : 1;
  if (xmin === xmax) {
    xmin -= 1;
    xmax += 1;
  }
  const xStep = Math.max(niceStep((xmax - xmin) / 8), Number.isInteger(xmin) && Number.isInteger(xmax) ? 1 : 0);
  const xTicks = ticks(xmin, xmax, xStep);

  let ymin = ys.length ? Math.min(...ys) : 0;
  let ymax = ys.length ? Math.max(...ys) : percent ? 100 : 1;
  if (ymin === ymax) {
    const pad = Math.abs(ymin) * 0.1 || 1;
    ymin -= pad;
    ymax += pad;
  }
  const yStep = niceStep((ymax - ymin) / 5);
  let y0 = Math.floor(ymin / yStep) * yStep;
  let y1 = Math.ceil(ymax / yStep) * yStep;
  if (percent) {
    y0 = Math.max(y0, Math.min(0, ymin));
    y1 = Math.min(y1, Math.max(100, ymax));
  } else if (ymin >= 0) {
    y0 = Math.max(y0, 0);
  }
  if (y0 === y1) y1 = y0 + yStep;
  return {
    title,
    series,
    x0: xmin,
    x1: xmax,
    y0,
    y1,
    xTicks,
    yTicks: ticks(y0, y1, yStep),
    xDecimals: decimalsFor(xStep),
    yDecimals: decimalsFor(yStep),
  };
}

function niceStep(raw: number): number {
  if (!(raw > 0) || !Number.isFinite(raw)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
}

function ticks(lo: number, hi: number, step: number): number[] {
  const out: number[] = [];
  const eps = step * 1e-9;
  for (let k = Math.ceil((lo - eps) / step); k * step <= hi + eps && out.length < 50; k++) {
    out.push(Number((k * step).toPrecision(12)));
  }
  return out;
}

function decimalsFor(step: number): number {
  for (let d = 0; d < 8; d++) {
    const v = step * Math.pow(10, d);
    if (Math.abs(v - Math.round(v)) < 1e-9 * Math.max(1, v)) return d;
  }
  return 8;
}

// Panel layout (per 450x400 panel).
const PANEL_W = PLOT_WIDTH / 2;
const MARGIN = { left: 62, right: 18, top: 40, bottom: 52 };

interface Frame {
  left: number;
  right: number;
  top: number;
  bottom: number;
  sx: (x: number) => number;
  sy: (y: number) => number;
}

function frame(chart: Chart, ox: number): Frame {
  const left = ox + MARGIN.left;
  const right = ox + PANEL_W - MARGIN.right;
  const top = MARGIN.top;
  const bottom = PLOT_HEIGHT - MARGIN.bottom;
  return {
    left,
    right,
    top,
    bottom,
    sx: (x) => left + ((x - chart.x0) / (chart.x1 - chart.x0)) * (right - left),
    sy: (y) => bottom - ((y - chart.y0) / (chart.y1 - chart.y0)) * (bottom - top),
  };
}

/** Top-left corner for a legend box of w x h: the plot corner that hides the fewest line samples. */
function legendPosition(chart: Chart, f: Frame, w: number, h: number): [number, number] {
  const corners: [number, number][] = [
    [f.right - w - 8, f.top + 6],
    [f.right - w - 8, f.bottom - h - 6],
    [f.left + 8, f.top + 6],
    [f.left + 8, f.bottom - h - 6],
  ];
  let best = corners[0];
  let bestHits = Infinity;
  for (const [x, y] of corners) {
    let hits = 0;
    for (const s of chart.series) {
      const pts = s.points.map(([px, py]) => [f.sx(px), f.sy(py)]);
      // Sample along each segment so lines crossing the box count too.
      for (let i = 0; i < pts.length; i++) {
        const a = pts[i];
        const b = pts[Math.min(i + 1, pts.length - 1)];
        for (let t = 0; t <= 1; t += 0.05) {
          const qx = a[0] + (b[0] - a[0]) * t;
          const qy = a[1] + (b[1] - a[1]) * t;
          if (qx >= x - 4 && qx <= x + w + 4 && qy >= y - 4 && qy <= y + h + 4) hits++;
        }
      }
    }
    if (hits < bestHits) {
      bestHits = hits;
      best = [x, y];
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------
// PNG

/** Encode the curves as PNG bytes. */
export function curvesPng(history: HistoryEntry[]): Buffer {
  const img = new Raster(PLOT_WIDTH, PLOT_HEIGHT);
  const charts = buildCharts(history);
  charts.forEach((c, i) => drawChart(img, c, i * PANEL_W));
  const png = new PNG({ width: PLOT_WIDTH, height: PLOT_HEIGHT, colorType: 2, inputColorType: 6 });
  png.data = Buffer.from(img.data.buffer, img.data.byteOffset, img.data.length);
  return PNG.sync.write(png, { colorType: 2, inputColorType: 6 });
}

function drawChart(img: Raster, chart: Chart, ox: number): void {
  const f = frame(chart, ox);
  // Title.
  const title = chart.title.toUpperCase();
  img.text(Math.round(ox + (MARGIN.left + PANEL_W - MARGIN.right) / 2 - textWidth(title, 2) / 2), 12, title, 2, TEXT_COLOR);
  // Grid and y tick labels.
  for (const t of chart.yTicks) {
    const y = Math.round(f.sy(t));
    img.hline(f.left, f.right, y, GRID_COLOR);
    img.hline(f.left - 4, f.left, y, AXIS_COLOR);
    const s = t.toFixed(chart.yDecimals);
    img.text(f.left - 7 - textWidth(s, 1), y - 3, s, 1, TEXT_COLOR);
  }
  for (const t of chart.xTicks) {
    const x = Math.round(f.sx(t));
    img.vline(x, f.top, f.bottom, GRID_COLOR);
    img.vline(x, f.bottom, f.bottom + 4, AXIS_COLOR);
    const s = t.toFixed(chart.xDecimals);
    img.text(x - Math.floor(textWidth(s, 1) / 2), f.bottom + 8, s, 1, TEXT_COLOR);
  }
  // Axes.
  img.hline(f.left, f.right, f.bottom, AXIS_COLOR);
  img.vline(f.left, f.top, f.bottom, AXIS_COLOR);
  const xl = 'EPOCH';
  img.text(Math.round((f.left + f.right) / 2 - textWidth(xl, 1) / 2), f.bottom + 24, xl, 1, TEXT_COLOR);
  // Series: anti-aliased lines and markers.
  for (const s of chart.series) {
    const cov = new Float32Array(img.width * img.height);
    const pts = s.points.map(([x, y]) => [f.sx(x), f.sy(y)] as const);
    for (let i = 1; i < pts.length; i++) coverSegment(cov, img.width, img.height, pts[i - 1], pts[i], 1.1);
    for (const p of pts) coverSegment(cov, img.width, img.height, p, p, pts.length > 30 ? 1.6 : 2.8);
    img.composite(cov, s.color);
  }
  // Legend (top right, inside the plot area).
  const rowH = 12;
  const names = chart.series.map((s) => s.name.toUpperCase());
  const lw = 30 + Math.max(...names.map((n) => textWidth(n, 1)));
  const [lx, ly] = legendPosition(chart, f, lw, rowH * names.length + 6);
  img.fillRect(lx, ly, lw, rowH * names.length + 6, [255, 255, 255]);
  img.rect(lx, ly, lw, rowH * names.length + 6, [170, 170, 170]);
  chart.series.forEach((s, i) => {
    const y = ly + 9 + i * rowH;
    img.fillRect(lx + 5, y - 1, 16, 3, s.color);
    img.text(lx + 25, y - 3, names[i], 1, TEXT_COLOR);
  });
}

/** Max-coverage of a thick segment (distance-based anti-aliasing). */
function coverSegment(
  cov: Float32Array,
  w: number,
  h: number,
  a: readonly [number, number],
  b: readonly [number, number],
  halfWidth: number,
): void {
  const r = halfWidth + 1;
  const xa = Math.max(0, Math.floor(Math.min(a[0], b[0]) - r));
  const xb = Math.min(w - 1, Math.ceil(Math.max(a[0], b[0]) + r));
  const ya = Math.max(0, Math.floor(Math.min(a[1], b[1]) - r));
  const yb = Math.min(h - 1, Math.ceil(Math.max(a[1], b[1]) + r));
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len2 = dx * dx + dy * dy;
  for (let py = ya; py <= yb; py++) {
    for (let px = xa; px <= xb; px++) {
      const cx = px + 0.5 - a[0];
      const cy = py + 0.5 - a[1];
      const t = len2 > 0 ? Math.min(1, Math.max(0, (cx * dx + cy * dy) / len2)) : 0;
      const ex = cx - t * dx;
      const ey = cy - t * dy;
      const d = Math.sqrt(ex * ex + ey * ey);
      const c = Math.min(1, Math.max(0, halfWidth + 0.5 - d));
      const i = py * w + px;
      if (c > cov[i]) cov[i] = c;
    }
  }
}

class Raster {
  readonly data: Uint8Array;
  constructor(
    readonly width: number,
    readonly height: number,
  ) {
    this.data = new Uint8Array(width * height * 4).fill(255);
  }

  set(x: number, y: number, c: Rgb): void {
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const i = (y * this.width + x) * 4;
    this.data[i] = c[0];
    this.data[i + 1] = c[1];
    this.data[i + 2] = c[2];
  }

  hline(x0: number, x1: number, y: number, c: Rgb): void {
    for (let x = Math.round(x0); x <= Math.round(x1); x++) this.set(x, y, c);
  }

  vline(x: number, y0: number, y1: number, c: Rgb): void {
    for (let y = Math.round(y0); y <= Math.round(y1); y++) this.set(x, y, c);
  }

  fillRect(x: number, y: number, w: number, h: number, c: Rgb): void {
    for (let j = 0; j < h; j++) for (let i = 0; i < w; i++) this.set(x + i, y + j, c);
  }

  rect(x: number, y: number, w: number, h: number, c: Rgb): void {
    this.hline(x, x + w - 1, y, c);
    this.hline(x, x + w - 1, y + h - 1, c);
    this.vline(x, y, y + h - 1, c);
    this.vline(x + w - 1, y, y + h - 1, c);
  }

  composite(cov: Float32Array, c: Rgb): void {
    const d = this.data;
    for (let i = 0; i < cov.length; i++) {
      const a = cov[i];
      if (a <= 0) continue;
      const j = i * 4;
      d[j] = Math.round(d[j] * (1 - a) + c[0] * a);
      d[j + 1] = Math.round(d[j + 1] * (1 - a) + c[1] * a);
      d[j + 2] = Math.round(d[j + 2] * (1 - a) + c[2] * a);
    }
  }

  /** Draw text with the 5x7 font; (x, y) is the top-left corner. */
  text(x: number, y: number, s: string, scale: number, c: Rgb): void {
    let cx = x;
    for (const ch of s.toUpperCase()) {
      const g = FONT[ch] ?? FONT['?'];
      for (let row = 0; row < 7; row++) {
        for (let col = 0; col < 5; col++) {
          if ((g[row] >> (4 - col)) & 1) this.fillRect(cx + col * scale, y + row * scale, scale, scale, c);
        }
      }
      cx += 6 * scale;
    }
  }
}

function textWidth(s: string, scale: number): number {
  return s.length === 0 ? 0 : (s.length * 6 - 1) * scale;
}

/** 5x7 bitmap font (rows top to bottom, bit 4 = leftmost column). Lower case draws as upper case. */
const FONT: Record<string, readonly number[]> = {
  ' ': [0, 0, 0, 0, 0, 0, 0],
  '0': [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
  '1': [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
  '2': [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
  '3': [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
  '4': [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
  '5': [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
  '6': [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
  '7': [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
  '8': [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
  '9': [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
  A: [0x0e, 0x11, 0x11, 0x11, 0x1f, 0x11, 0x11],
  B: [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
  C: [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
  D: [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c],
  E: [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
  F: [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
  G: [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
  H: [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
  I: [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
  J: [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
  K: [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
  L: [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
  M: [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
  N: [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
  O: [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
  P: [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
  Q: [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
  R: [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
  S: [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
  T: [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
  U: [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
  V: [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
  W: [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
  X: [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
  Y: [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04],
  Z: [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
  '.': [0, 0, 0, 0, 0, 0x0c, 0x0c],
  ',': [0, 0, 0, 0, 0x0c, 0x04, 0x08],
  '%': [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
  '-': [0, 0, 0, 0x1f, 0, 0, 0],
  '+': [0, 0x04, 0x04, 0x1f, 0x04, 0x04, 0],
  '(': [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
  ')': [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
  ':': [0, 0x0c, 0x0c, 0, 0x0c, 0x0c, 0],
  '/': [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
  '?': [0x0e, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
};

// ---------------------------------------------------------------------------------------
// HTML

const fmtLoss = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? '' : v.toFixed(4));
const fmtAcc = (v: number | undefined, scale: number) => (v === undefined || !Number.isFinite(v) ? '' : (v * scale).toFixed(2));

/** The HTML report as a string. */
export function curvesHtml(history: HistoryEntry[]): string {
  const charts = buildCharts(history);
  const scale = accScale(history);
  const svgs = charts.map((c) => chartSvg(c)).join('\n');
  const rows = [...history]
    .sort((a, b) => a.epoch - b.epoch)
    .map(
      (h) =>
        `<tr><td>${esc(String(h.epoch))}</td><td>${fmtLoss(h.trainLoss)}</td><td>${fmtAcc(h.trainAcc, scale)}</td>` +
        `<td>${fmtLoss(h.testLoss)}</td><td>${fmtAcc(h.testAcc, scale)}</td></tr>`,
    )
    .join('\n');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Training curves</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
svg { background: #fff; border: 1px solid #ddd; }
table { border-collapse: collapse; margin-top: 16px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f4f4f4; }
</style>
</head>
<body>
<h1>Training curves</h1>
<div class="charts">
${svgs}
</div>
<table>
<thead><tr><th>epoch</th><th>train loss</th><th>train acc (%)</th><th>test loss</th><th>test acc (%)</th></tr></thead>
<tbody>
${rows}
</tbody>
</table>
</body>
</html>
`;
}

const css = (c: Rgb) => `rgb(${c[0]},${c[1]},${c[2]})`;
const r2 = (v: number) => Number(v.toFixed(2));

function chartSvg(chart: Chart): string {
  const f = frame(chart, 0);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${PANEL_W}" height="${PLOT_HEIGHT}" viewBox="0 0 ${PANEL_W} ${PLOT_HEIGHT}" font-family="sans-serif" font-size="11">`);
  parts.push(`<title>${esc(chart.title)}</title>`);
  parts.push(`<text x="${r2((f.left + f.right) / 2)}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(chart.title)}</text>`);
  for (const t of chart.yTicks) {
    const y = r2(f.sy(t));
    parts.push(`<line x1="${f.left}" y1="${y}" x2="${f.right}" y2="${y}" stroke="${css(GRID_COLOR)}"/>`);
    parts.push(`<text x="${f.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${t.toFixed(chart.yDecimals)}</text>`);
  }
  for (const t of chart.xTicks) {
    const x = r2(f.sx(t));
    parts.push(`<line x1="${x}" y1="${f.top}" x2="${x}" y2="${f.bottom}" stroke="${css(GRID_COLOR)}"/>`);
    parts.push(`<text x="${x}" y="${f.bottom + 16}" text-anchor="middle">${t.toFixed(chart.xDecimals)}</text>`);
  }
  parts.push(`<line x1="${f.left}" y1="${f.bottom}" x2="${f.right}" y2="${f.bottom}" stroke="${css(AXIS_COLOR)}"/>`);
  parts.push(`<line x1="${f.left}" y1="${f.top}" x2="${f.left}" y2="${f.bottom}" stroke="${css(AXIS_COLOR)}"/>`);
  parts.push(`<text x="${r2((f.left + f.right) / 2)}" y="${f.bottom + 36}" text-anchor="middle">epoch</text>`);
  for (const s of chart.series) {
    const pts = s.points.map(([x, y]) => `${r2(f.sx(x))},${r2(f.sy(y))}`);
    if (pts.length > 1) {
      parts.push(`<polyline fill="none" stroke="${css(s.color)}" stroke-width="2" points="${pts.join(' ')}"/>`);
    }
    for (const [x, y] of s.points) {
      parts.push(
        `<circle cx="${r2(f.sx(x))}" cy="${r2(f.sy(y))}" r="3" fill="${css(s.color)}"><title>${esc(s.name)} epoch ${x}: ${r2f(y)}</title></circle>`,
      );
    }
  }
  const [lx, ly] = legendPosition(chart, f, 72, chart.series.length * 16 + 6);
  parts.push(`<rect x="${lx}" y="${ly}" width="72" height="${chart.series.length * 16 + 6}" fill="#fff" stroke="#aaa"/>`);
  chart.series.forEach((s, i) => {
    const y = ly + 12 + i * 16;
    parts.push(`<line x1="${lx + 6}" y1="${y}" x2="${lx + 24}" y2="${y}" stroke="${css(s.color)}" stroke-width="3"/>`);
    parts.push(`<text x="${lx + 30}" y="${y}" dominant-baseline="middle">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

function r2f(v: number): string {
  return Number(v.toPrecision(6)).toString();
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}
