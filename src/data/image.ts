/**
 * Decoding PNG / JPEG files to 8-bit RGB and turning them into model input.
 *
 * - PNG (pngjs): any colour type and bit depth (grey, grey+alpha, palette, RGB, RGBA; 8 or
 *   16 bits) becomes 8-bit RGB. Alpha is dropped, like PIL's `Image.convert('RGB')`;
 *   16-bit samples are scaled to 8 bits by pngjs.
 * - JPEG (jpeg-js): baseline and progressive, greyscale or colour, to RGB.
 * The format is detected from the file's magic bytes, not its extension.
 */
import { readFile } from 'node:fs/promises';
import { decode as decodeJpeg } from 'jpeg-js';
import { PNG } from 'pngjs';
import { DataError } from './errors.js';

export interface RgbImage {
  /** RGB bytes, HWC (row-major, 3 bytes per pixel). */
  data: Uint8Array;
  width: number;
  height: number;
}

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Decode a PNG or JPEG file to 8-bit RGB. */
export async function decodeImage(path: string): Promise<RgbImage> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new DataError(`${path}: cannot read image (${(err as Error).message}); check the path`);
  }
  return decodeImageBuffer(buf, path);
}

/** Decode PNG or JPEG bytes; `name` is used in error messages. */
export function decodeImageBuffer(buf: Uint8Array, name = '<buffer>'): RgbImage {
  const isPng = buf.length >= 8 && PNG_MAGIC.every((b, i) => buf[i] === b);
  const isJpeg = buf.length >= 3 && buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff;
  if (isPng) {
    let png: { width: number; height: number; data: Buffer };
    try {
      png = PNG.sync.read(Buffer.from(buf.buffer, buf.byteOffset, buf.length));
    } catch (err) {
      throw new DataError(`${name}: corrupt PNG (${(err as Error).message}); re-export the image`);
    }
    const { width, height } = png;
    const n = width * height;
    const data = new Uint8Array(n * 3);
    // pngjs always returns 8-bit RGBA (grey/palette expanded, 16-bit scaled down).
    for (let i = 0; i < n; i++) {
      data[i * 3] = png.data[i * 4];
      data[i * 3 + 1] = png.data[i * 4 + 1];
      data[i * 3 + 2] = png.data[i * 4 + 2];
    }
    return { data, width, height };
  }
  if (isJpeg) {
    let jpg: { width: number; height: number; data: Uint8Array };
    try {
      jpg = decodeJpeg(buf, { useTArray: true, formatAsRGBA: false, tolerantDecoding: false });
    } catch (err) {
      throw new DataError(`${name}: corrupt JPEG (${(err as Error).message}); re-export the image`);
    }
    const { width, height } = jpg;
    if (!(width > 0 && height > 0) || jpg.data.length !== width * height * 3) {
      throw new DataError(`${name}: corrupt JPEG (decoded ${jpg.data.length} bytes for ${width}x${height}); re-export the image`);
    }
    return { data: new Uint8Array(jpg.data), width, height };
  }
  throw new DataError(`${name}: not a PNG or JPEG file (unrecognised header); convert it to PNG or JPEG`);
}

/**
 * Resize to size x size with bilinear interpolation and return CHW float32 in [0, 1].
 *
 * Sampling uses half-pixel centres (source = (dst + 0.5) * in / out - 0.5, clamped at the
 * edges), i.e. `torch.nn.functional.interpolate(mode='bilinear', align_corners=False,
 * antialias=False)`. PIL's `resize(BILINEAR)` antialiases when shrinking, so for large
 * downscales the result is sharper than PIL's (fine for CIFAR-sized inputs; pre-shrink
 * very large photos for best accuracy). A constant image stays exactly constant.
 */
export function toCifarInput(img: RgbImage, size = 32): Float32Array {
  const { width: W, height: H, data } = img;
  if (!Number.isInteger(size) || size <= 0) throw new DataError(`toCifarInput: size must be a positive integer, got ${size}`);
  if (!(W > 0 && H > 0) || data.length !== W * H * 3) {
    throw new DataError(`toCifarInput: image of ${W}x${H} needs ${W * H * 3} RGB bytes, got ${data.length}`);
  }
  const out = new Float32Array(3 * size * size);
  const x0 = new Int32Array(size);
  const x1 = new Int32Array(size);
  const wx = new Float64Array(size);
  const sx = W / size;
  for (let q = 0; q < size; q++) {
    const s = Math.min(Math.max((q + 0.5) * sx - 0.5, 0), W - 1);
    x0[q] = Math.floor(s);
    x1[q] = Math.min(x0[q] + 1, W - 1);
    wx[q] = s - x0[q];
  }
  const sy = H / size;
  const plane = size * size;
  for (let r = 0; r < size; r++) {
    const s = Math.min(Math.max((r + 0.5) * sy - 0.5, 0), H - 1);
    const y0 = Math.floor(s);
    const y1 = Math.min(y0 + 1, H - 1);
    const wy = s - y0;
    for (let q = 0; q < size; q++) {
      for (let c = 0; c < 3; c++) {
        const a = data[(y0 * W + x0[q]) * 3 + c];
        const b = data[(y0 * W + x1[q]) * 3 + c];
        const d = data[(y1 * W + x0[q]) * 3 + c];
        const e = data[(y1 * W + x1[q]) * 3 + c];
        // a + (b - a) * w form: exact when the neighbours are equal.
        const top = a + (b - a) * wx[q];
        const bot = d + (e - d) * wx[q];
        const v = top + (bot - top) * wy;
        out[c * plane + r * size + q] = v / 255;
      }
    }
  }
  return out;
}
