// Pixels in and out as the Python runtime does them (vqedge.runtime.images).
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkSide, defaultMaxSide, fitSquare, toImage, toInput, toRGB } from "../src/preprocess.js";

test("uint8 -> [-1, 1] in float32, edge-padded at the bottom and right", () => {
  // a 2x3 image, f = 4: padded to 4x4 by repeating the last row and column
  const rgb = Uint8Array.from({ length: 18 }, (_, i) => i * 14);
  const { data, dims } = toInput(rgb, 2, 3, 4);
  assert.deepEqual(dims, [1, 3, 4, 4]);
  const red = (y, x) => data[y * 4 + x];
  assert.equal(red(0, 0), Math.fround(Math.fround(0 / 127.5) - 1));
  assert.equal(red(1, 2), Math.fround(Math.fround(rgb[15] / 127.5) - 1));
  assert.equal(red(3, 3), red(1, 2)); // the corner repeats the last pixel
  assert.equal(red(0, 3), red(0, 2));
  assert.equal(data[16 + 0], Math.fround(Math.fround(rgb[1] / 127.5) - 1)); // green plane
  assert.ok(data.every((v) => v >= -1 && v <= 1));
});

test("floats -> uint8 as the Python runtime's float_to_uint8 (values it was run on)", () => {
  // (x + 1) * 127.5 in float32, rint, clip; expected from vqedge.runtime.images.float_to_uint8
  const xs = [-0.9960784316062927, -0.9882352948188782, -0.9803921580314636, -3, 9, 0, 0.003921568859368563];
  const data = Float32Array.from(xs);
  const img = toImage(new Float32Array([...data, ...data, ...data]), [1, 3, 1, xs.length]);
  assert.deepEqual(Array.from(img.data).filter((_, i) => i % 4 === 0), [0, 1, 2, 0, 255, 128, 128]);
  assert.ok(Array.from(img.data).filter((_, i) => i % 4 === 3).every((a) => a === 255));
});

test("transparent pixels are composited on white", () => {
  const rgb = toRGB({ data: Uint8ClampedArray.from([10, 20, 30, 0, 10, 20, 30, 255, 100, 100, 100, 128]), width: 3, height: 1 });
  assert.deepEqual(Array.from(rgb), [255, 255, 255, 10, 20, 30, 177, 177, 177]);
});

test("an image above max side is refused with the Python runtime's message", () => {
  assert.throws(() => checkSide(5000, 20, 4096), /image side 5000 exceeds the limit of 4096 pixels/);
  assert.equal(defaultMaxSide({ input: {} }), 4096);
  assert.equal(defaultMaxSide({ input: { attention_stride: 4 } }), 512);
});

test("fitSquare takes the centre square; a square of the target size is unchanged", () => {
  const rgb = Uint8Array.from({ length: 4 * 6 * 3 }, (_, i) => i);
  const out = fitSquare(rgb, 4, 6, 4);
  assert.deepEqual(Array.from(out.subarray(0, 3)), [3, 4, 5]); // column 1 of row 0
  const flat = new Uint8Array(16 * 16 * 3).fill(77);
  assert.ok(fitSquare(flat, 16, 16, 8).every((v) => v === 77)); // Lanczos keeps a flat colour
});
