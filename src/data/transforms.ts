/**
 * Batch preparation for image datasets stored as CHW bytes, with the semantics of the
 * usual torchvision training pipeline
 *
 *     RandomCrop(size, padding) -> RandomHorizontalFlip(0.5) -> ToTensor() -> Normalize(mean, std)
 *
 * - Random crop pads the image with zero *bytes* (pixel value 0, like torchvision's
 *   `fill=0` on a PIL image), so after normalisation a padded pixel is (0 - mean) / std.
 * - ToTensor divides by 255 and Normalize computes (x - mean) / std, each step rounded to
 *   float32 exactly like PyTorch's float32 tensor arithmetic (mean and std are float32).
 *
 * The random decisions (crop offsets, flips) are not drawn here: they come in a
 * {@link BatchPlan}, so the same plan gives the same batch whether it is prepared on the
 * main thread or in a worker.
 */

/** Per-channel mean / std of the CIFAR-10 training set (the commonly used values). */
export const CIFAR10_MEAN = [0.4914, 0.4822, 0.4465];
export const CIFAR10_STD = [0.247, 0.2435, 0.2616];

/** Shape and normalisation of the prepared images. */
export interface TransformSpec {
  /** Input image layout (C, H, W). */
  channels: number;
  height: number;
  width: number;
  /** Output size (the crop size when cropping, else height/width). */
  outHeight: number;
  outWidth: number;
  /** Zero padding around the input before cropping (0 when not cropping). */
  padding: number;
  /** Per-channel normalisation after /255; both or neither. */
  mean?: number[];
  std?: number[];
}

/** Which images form a batch and how each one is augmented. */
export interface BatchPlan {
  /** Dataset indices, in batch order. */
  indices: Int32Array;
  /** Crop offsets into the padded image (top, left), one per image; absent = no crop. */
  dy?: Int32Array;
  dx?: Int32Array;
  /** 1 = flip horizontally, one per image; absent = no flip. */
  flip?: Uint8Array;
}

const f32 = Math.fround;

/** ToTensor then Normalize for one byte value, in float32 arithmetic (as PyTorch does). */
export function normalizeByte(v: number, mean?: number, std?: number): number {
  const x = f32(v / 255);
  if (mean === undefined || std === undefined) return x;
  return f32(f32(x - f32(mean)) / f32(std));
}

/** Lookup table: lut[c * 256 + v] = normalised value of byte v in channel c. */
export function buildLut(channels: number, mean?: number[], std?: number[]): Float32Array {
  const lut = new Float32Array(channels * 256);
  for (let c = 0; c < channels; c++) {
    for (let v = 0; v < 256; v++) lut[c * 256 + v] = normalizeByte(v, mean?.[c], std?.[c]);
  }
  return lut;
}

/** Check a spec's consistency; throws a one-line Error describing the problem. */
export function validateSpec(spec: TransformSpec): void {
  const { channels, mean, std } = spec;
  if ((mean === undefined) !== (std === undefined)) throw new Error('normalisation needs both mean and std');
  if (mean && std) {
    if (mean.length !== channels || std.length !== channels) {
      throw new Error(`mean and std need ${channels} values (one per channel), got ${mean.length} and ${std.length}`);
    }
    if (std.some((s) => !(Number.isFinite(s) && s !== 0)) || mean.some((m) => !Number.isFinite(m))) {
      throw new Error(`mean must be finite and std finite and non-zero, got mean=${JSON.stringify(mean)} std=${JSON.stringify(std)}`);
    }
  }
  if (spec.outHeight > spec.height + 2 * spec.padding || spec.outWidth > spec.width + 2 * spec.padding) {
    throw new Error(
      `crop ${spec.outHeight}x${spec.outWidth} is larger than the padded image ${spec.height + 2 * spec.padding}x${spec.width + 2 * spec.padding}`,
    );
  }
}

/**
 * Build a batch: x is (B, C, outH, outW) float32, y the labels as int32.
 * `out` may supply preallocated arrays of the right size.
 */
export function prepareBatch(
  images: Uint8Array,
  labels: Uint8Array,
  plan: BatchPlan,
  spec: TransformSpec,
  lut: Float32Array = buildLut(spec.channels, spec.mean, spec.std),
  out?: { x: Float32Array; y: Int32Array },
): { x: Float32Array; y: Int32Array } {
  const { channels: C, height: H, width: W, outHeight: OH, outWidth: OW, padding: P } = spec;
  const B = plan.indices.length;
  const imgSize = C * H * W;
  const outSize = C * OH * OW;
  const x = out?.x ?? new Float32Array(B * outSize);
  const y = out?.y ?? new Int32Array(B);
  const { dy, dx, flip } = plan;
  for (let b = 0; b < B; b++) {
    const idx = plan.indices[b];
    y[b] = labels[idx];
    const src = idx * imgSize;
    const dst = b * outSize;
    // Output (r, q) reads padded (r + oy, q' + ox), i.e. source (r + oy - P, q' + ox - P),
    // where q' = OW - 1 - q when flipped (flip applied after the crop, as in torchvision).
    const oy = (dy ? dy[b] : P) - P;
    const ox = (dx ? dx[b] : P) - P;
    const flipped = flip !== undefined && flip[b] !== 0;
    for (let c = 0; c < C; c++) {
      const lc = c * 256;
      const zero = lut[lc];
      const srcC = src + c * H * W;
      const dstC = dst + c * OH * OW;
      for (let r = 0; r < OH; r++) {
        const sr = r + oy;
        const dRow = dstC + r * OW;
        if (sr < 0 || sr >= H) {
          x.fill(zero, dRow, dRow + OW);
          continue;
        }
        const sRow = srcC + sr * W;
        // Columns q with source column inside the image: [qa, qb); zeros elsewhere.
        let qa: number;
        let qb: number;
        if (!flipped) {
          qa = Math.max(0, -ox);
          qb = Math.min(OW, W - ox);
        } else {
          // sc = OW - 1 - q + ox in [0, W)  <=>  q in (OW - 1 + ox - W, OW - 1 + ox]
          qa = Math.max(0, OW + ox - W);
          qb = Math.min(OW, OW + ox);
        }
        if (qa > OW) qa = OW;
        if (qb < qa) qb = qa;
        if (qa > 0) x.fill(zero, dRow, dRow + qa);
        if (qb < OW) x.fill(zero, dRow + qb, dRow + OW);
        if (!flipped) {
          const base = sRow + ox;
          for (let q = qa; q < qb; q++) x[dRow + q] = lut[lc + images[base + q]];
        } else {
          const base = sRow + OW - 1 + ox;
          for (let q = qa; q < qb; q++) x[dRow + q] = lut[lc + images[base - q]];
        }
      }
    }
  }
  return { x, y };
}
