// The .vqt format: byte-identical to files the Python runtime wrote (fixtures/*.vqt, made by
// vqedge.runtime's save_tokens from the indices in fixtures/tokens.json), and the same
// header-first refusals.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { bitsFor, crc32, readTokens, writeTokens } from "../src/tokens.js";

const fixture = (name) => new Uint8Array(readFileSync(new URL(`fixtures/${name}`, import.meta.url)));
const expected = JSON.parse(readFileSync(new URL("fixtures/tokens.json", import.meta.url), "utf8"));
const SHA = expected.f4.bundle_sha256;

test("bitsFor and crc32 match Python's", () => {
  assert.deepEqual([1, 2, 3, 1024, 1025, 4096, 16384].map(bitsFor), [1, 1, 2, 10, 11, 12, 14]);
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
});

test("a Python-written single-scale file reads back and rewrites byte for byte", () => {
  const bytes = fixture("f4.vqt");
  const f = readTokens(bytes, { bundleSha256: SHA, codebookSize: 1024 });
  assert.deepEqual(Array.from(f.scales[0].data), expected.f4.indices);
  assert.deepEqual(f.scales[0].shape, [1, 12, 16]);
  assert.deepEqual(f.imageSize, [45, 61]);
  const again = writeTokens(f.scales[0], 1024, SHA, { imageSize: [45, 61] });
  assert.deepEqual(again, bytes);
});

test("a Python-written multi-scale file rewrites byte for byte", () => {
  const bytes = fixture("ms-f8.vqt");
  const f = readTokens(bytes, { scales: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16] });
  assert.equal(f.scales.length, 10);
  assert.deepEqual(f.scales.flatMap((s) => Array.from(s.data)), expected["ms-f8"].indices);
  assert.deepEqual(writeTokens(f.scales, 1024, expected["ms-f8"].bundle_sha256), bytes);
});

test("every bit width round-trips", () => {
  for (const k of [1, 2, 3, 255, 256, 257, 65536, 2 ** 20 + 3, 2 ** 31]) {
    const data = Int32Array.from({ length: 37 }, (_, i) => Math.min(k - 1, (i * 2654435761) % k));
    const back = readTokens(writeTokens({ data, shape: [1, 1, 37] }, k, SHA));
    assert.deepEqual(back.scales[0].data, data, `K=${k}`);
  }
});

test("header-first refusals, in the Python runtime's words", () => {
  const good = fixture("f4.vqt");
  const read = (b, o = {}) => () => readTokens(b, { name: "t.vqt", ...o });
  assert.throws(read(new TextEncoder().encode("PNG and more bytes than sixteen")), /t\.vqt: foreign file, not a vqedge token file \(bad magic\)/);
  assert.throws(read(good.slice(0, 10)), /truncated token file \(10 bytes\)/);
  assert.throws(read(good.slice(0, 40)), /truncated header/);
  assert.throws(read(good.slice(0, good.length - 1)), /truncated payload/);
  assert.throws(read(new Uint8Array([...good, 0])), /trailing bytes after payload/);
  const newer = good.slice();
  newer[7] = 2;
  assert.throws(read(newer), /token format version 2, this runtime reads up to 1; upgrade vqedge/);
  const badHeader = good.slice();
  badHeader[20] ^= 1;
  assert.throws(read(badHeader), /corrupt header \(crc32 mismatch\)/);
  const badPayload = good.slice();
  badPayload[good.length - 1] ^= 1;
  assert.throws(read(badPayload), /corrupt payload \(crc32 mismatch\)/);
  assert.throws(read(good, { codebookSize: 512 }), /codebook_size K=1024 in the file, this bundle has K=512/);
  assert.throws(read(good, { bundleSha256: "0".repeat(64) }), /tokens made by bundle [0-9a-f]{64}, not by this bundle 0{64}; pass force/);
  assert.throws(read(good, { maxMapSide: 8 }), /a token map side is over the limit of 8/);
  assert.throws(read(good, { maxTokens: 100 }), /hold 192 tokens, over the limit of 100/);
  assert.throws(read(good, { maxImageSide: 44 }), /image_size \[45,61\] is over the limit of 44 pixels/);
  assert.throws(read(good, { scales: [1, 2] }), /do not match this bundle's scales/);
});

test("writing refuses what Python refuses", () => {
  const data = Int32Array.from([0, 1, 2, 3]);
  assert.throws(() => writeTokens({ data, shape: [1, 2, 2] }, 3, SHA), /holds indices in \[0, 3\], expected \[0, 3\) for K=3/);
  assert.throws(() => writeTokens({ data, shape: [1, 2, 2] }, 4, "abc"), /bundle_sha256 must be 64 hex digits/);
  assert.throws(() => writeTokens({ data, shape: [1, 3, 2] }, 4, SHA), /its shape \[1,3,2\] needs 6/);
  assert.throws(() => writeTokens([], 4, SHA), /empty list of scales/);
});
