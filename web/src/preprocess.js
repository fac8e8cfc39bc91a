// Pixels in and out, as the Python runtime does them (vqedge.runtime.images / inputs): RGB,
// transparency on white, edge padding at the bottom and right to a multiple of f, floats in
// [-1, 1] (x / 127.5 - 1 in float32), rounding back half to even, and the multi-scale fit
// (centre square, then Pillow's Lanczos resampling, reproduced exactly below).

/** @typedef {{data: Uint8ClampedArray | Uint8Array, width: number, height: number}} ImageLike */

// the largest side an image may have unless the caller raises it, and the bound on an untiled
// attention's float32 score matrix (runtime/limits.py, generated)
import { ATTENTION_MAX_BYTES, DEFAULT_MAX_SIDE } from "./rules.gen.js";

export { DEFAULT_MAX_SIDE };
// what to do with an image above max_side (the Python runtime's advice, minus tiling)
export const SIZE_ADVICE = "resize it or raise maxSide";

/** The default max side of a bundle (the Python runtime's default_max_side). */
export function defaultMaxSide(manifest) {
  const stride = manifest?.input?.attention_stride;
  if (stride === undefined || stride === null) return DEFAULT_MAX_SIDE;
  const positionsPerSide = Math.floor(Math.sqrt(Math.floor(Math.sqrt(ATTENTION_MAX_BYTES / 4))));
  return Math.min(DEFAULT_MAX_SIDE, positionsPerSide * stride);
}

/**
 * An RGBA image (ImageData) as uint8 RGB [H, W, 3]; pixels that are not opaque are
 * composited on white, (c * a + 255 * (255 - a) + 127) / 255 rounded down, as Python does.
 * @param {ImageLike} img @returns {Uint8Array}
 */
export function toRGB(img) {
  const { data, width, height } = img;
  if (!(width > 0 && height > 0)) throw new Error(`images must have non-zero height and width, got ${height}x${width}`);
  if (data.length !== width * height * 4) {
    throw new Error(`expected RGBA pixels (ImageData): ${width * height * 4} values, got ${data.length}`);
  }
  const out = new Uint8Array(width * height * 3);
  for (let p = 0, q = 0; p < data.length; p += 4, q += 3) {
    const a = data[p + 3];
    for (let c = 0; c < 3; c++) {
      out[q + c] = a === 255 ? data[p + c] : Math.floor((data[p + c] * a + 255 * (255 - a) + 127) / 255);
    }
  }
  return out;
}

/** Refuse an image whose longer side is over maxSide (the Python runtime's message). */
export function checkSide(height, width, maxSide, advice = SIZE_ADVICE) {
  if (height < 1 || width < 1) throw new Error(`images must have non-zero height and width, got ${height}x${width}`);
  if (Math.max(height, width) > maxSide) {
    throw new Error(`image side ${Math.max(height, width)} exceeds the limit of ${maxSide} pixels: ${advice}`);
  }
}

/**
 * uint8 RGB [H, W, 3] -> float32 [1, 3, H', W'] in [-1, 1], H' and W' the next multiples of f,
 * padded at the bottom and right by repeating the edge pixels.
 * @param {Uint8Array} rgb @param {number} height @param {number} width @param {number} f
 * @returns {{data: Float32Array, dims: number[]}}
 */
export function toInput(rgb, height, width, f = 1) {
  const H = Math.ceil(height / f) * f;
  const W = Math.ceil(width / f) * f;
  const plane = H * W;
  const out = new Float32Array(3 * plane);
  for (let y = 0; y < H; y++) {
    const sy = Math.min(y, height - 1);
    for (let x = 0; x < W; x++) {
      const s = (sy * width + Math.min(x, width - 1)) * 3;
      const d = y * W + x;
      // float32 division then float32 subtraction: numpy's uint8 / 127.5 - 1.0 in float32
      out[d] = Math.fround(rgb[s] / 127.5) - 1;
      out[plane + d] = Math.fround(rgb[s + 1] / 127.5) - 1;
      out[2 * plane + d] = Math.fround(rgb[s + 2] / 127.5) - 1;
    }
  }
  return { data: out, dims: [1, 3, H, W] };
}

function rintEven(v) {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * float32 [1, 3, H, W] in [-1, 1] -> RGBA pixels (opaque), cropped to height x width:
 * rint((x + 1) * 127.5) in float32, half to even, clipped to [0, 255] (images.float_to_uint8).
 * @param {Float32Array} data @param {number[]} dims
 * @returns {{data: Uint8ClampedArray, width: number, height: number}}
 */
export function toImage(data, dims, height = dims[2], width = dims[3]) {
  const [, , H, W] = dims;
  const plane = H * W;
  const out = new Uint8ClampedArray(height * width * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const s = y * W + x;
      const d = (y * width + x) * 4;
      for (let c = 0; c < 3; c++) {
        const v = rintEven(Math.fround(Math.fround(data[c * plane + s] + 1) * 127.5));
        out[d + c] = v < 0 ? 0 : v > 255 ? 255 : v;
      }
      out[d + 3] = 255;
    }
  }
  return makeImageData(out, width, height);
}

/** An ImageData where the platform has one (browsers), else a plain object of its shape. */
export function makeImageData(data, width, height) {
  if (typeof ImageData !== "undefined") return new ImageData(data, width, height);
  return { data, width, height, colorSpace: "srgb" };
}

// -- Pillow's Lanczos resampling (libImaging/Resample.c), uint8 path -----------------------

// fixed-point precision of Pillow's 8-bit resampling: 32 - 8 - 2
const PRECISION_BITS = 22;
const LANCZOS_SUPPORT = 3;

function sinc(x) {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

function lanczos(x) {
  return -3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

function coeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = LANCZOS_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = lanczos((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      kk[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { kk, bounds, ksize };
}

function clip8(v) {
  if (v >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / 2 ** PRECISION_BITS);
}

/**
 * uint8 RGB [H, W, 3] -> [side, side, 3]: the centre square, then Lanczos as Pillow's
 * Image.resize does it (two passes, horizontal first, 8-bit fixed point), so that the
 * pixels, and so the tokens, are the Python runtime's (images.fit_square).
 * @param {Uint8Array} rgb @param {number} height @param {number} width @param {number} side
 * @returns {Uint8Array}
 */
export function fitSquare(rgb, height, width, side) {
  const s = Math.min(height, width);
  const y0 = Math.floor((height - s) / 2);
  const x0 = Math.floor((width - s) / 2);
  const sq = new Uint8Array(s * s * 3);
  for (let y = 0; y < s; y++) sq.set(rgb.subarray(((y0 + y) * width + x0) * 3, ((y0 + y) * width + x0 + s) * 3), y * s * 3);
  if (s === side) return sq;
  const h = coeffs(s, side);
  const v = coeffs(s, side);
  // rows of the source the vertical pass reads
  const yFirst = v.bounds[0];
  const yLast = v.bounds[2 * side - 2] + v.bounds[2 * side - 1];
  const rows = yLast - yFirst;
  const tmp = new Uint8Array(rows * side * 3);
  const half = 2 ** (PRECISION_BITS - 1);
  for (let y = 0; y < rows; y++) {
    const src = (y + yFirst) * s * 3;
    for (let xx = 0; xx < side; xx++) {
      const xmin = h.bounds[2 * xx];
      const xmax = h.bounds[2 * xx + 1];
      const k = xx * h.ksize;
      for (let c = 0; c < 3; c++) {
        let acc = half;
        for (let x = 0; x < xmax; x++) acc += sq[src + (x + xmin) * 3 + c] * h.kk[k + x];
        tmp[(y * side + xx) * 3 + c] = clip8(acc);
      }
    }
  }
  const out = new Uint8Array(side * side * 3);
  for (let yy = 0; yy < side; yy++) {
    const ymin = v.bounds[2 * yy] - yFirst;
    const ymax = v.bounds[2 * yy + 1];
    const k = yy * v.ksize;
    for (let xx = 0; xx < side; xx++) {
      for (let c = 0; c < 3; c++) {
        let acc = half;
        for (let y = 0; y < ymax; y++) acc += tmp[((y + ymin) * side + xx) * 3 + c] * v.kk[k + y];
        out[(yy * side + xx) * 3 + c] = clip8(acc);
      }
    }
  }
  return out;
}
