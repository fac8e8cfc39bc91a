// A real bundle on onnxruntime-web's WASM backend in Node (in-process sessions): the shipped
// f4 bundle served over HTTP, and copies of it broken in the ways load() must refuse.
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { load } from "../src/index.js";

const SHIPPED = fileURLToPath(new URL("../../runtime/bundles/vqvae-f4", import.meta.url));
const work = mkdtempSync(join(tmpdir(), "vqedge-web-"));
let server;
let base;

function copyBundle(name, change) {
  const dir = join(work, name);
  cpSync(SHIPPED, dir, { recursive: true });
  change?.(dir);
  return `${base}${name}/`;
}

before(async () => {
  server = http.createServer((req, res) => {
    const rel = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^\/+/, "");
    try {
      const body = readFileSync(join(work, rel));
      res.writeHead(200, { "content-type": extname(rel) === ".json" ? "application/json" : "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${server.address().port}/`;
});

after(() => {
  server?.close();
  rmSync(work, { recursive: true, force: true });
});

const opts = { backend: "wasm", worker: false };

function image(width, height) {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < data.length; i++) data[i] = i % 4 === 3 ? 255 : (i * 37) % 256;
  return { data, width, height };
}

test("encode, decode and reconstruct on the shipped f4 bundle", async () => {
  const tok = await load(copyBundle("good"), opts);
  assert.equal(tok.kind, "single-scale");
  assert.equal(tok.backend, "wasm");
  assert.equal(tok.bundleSha256.length, 64);
  const img = image(61, 45);
  const enc = await tok.encode(img);
  assert.deepEqual([enc.height, enc.width], [12, 16]); // ceil(45/4), ceil(61/4)
  assert.equal(enc.indices.length, 12 * 16);
  assert.ok(enc.indices.every((v) => v >= 0 && v < 1024));
  const rec = await tok.reconstruct(img);
  assert.deepEqual(rec.indices, enc.indices);
  assert.deepEqual([rec.image.width, rec.image.height], [61, 45]);
  const full = await tok.decode(enc.indices, 12, 16);
  assert.deepEqual([full.width, full.height], [64, 48]);
  // the .vqt of these tokens reads back through the tokenizer's own checks
  const file = tok.readTokens(tok.writeTokens(enc.indices, 12, 16, { imageSize: [45, 61] }));
  assert.deepEqual(file.scales[0].data, enc.indices);
  // an image above max side, and tokens of another K, are refused before anything runs
  const small = await load(copyBundle("small"), { ...opts, maxSide: 32 });
  await assert.rejects(small.encode(image(40, 8)), /image side 40 exceeds the limit of 32 pixels/);
  await assert.rejects(tok.decode(Int32Array.from([0, 1, 1024, 2]), 2, 2), /token indices must lie in \[0, 1024\), got \[0, 1024\]/);
});

test("a bundle of another format or version is refused", async () => {
  const edit = (name, f) =>
    copyBundle(name, (dir) => {
      const m = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
      f(m);
      writeFileSync(join(dir, "manifest.json"), JSON.stringify(m));
    });
  await assert.rejects(load(edit("foreign", (m) => (m.format = "other")), opts), /is not a vqedge-bundle manifest/);
  await assert.rejects(load(edit("v1", (m) => (m.format_version = 1)), opts), /is format 1 .* re-export it/);
  await assert.rejects(load(edit("v3", (m) => (m.format_version = 3)), opts), /has format version 3; this vqedge reads format 2/);
  await assert.rejects(load(`${base}nothing-here/`, opts), /not a vqedge bundle: .*manifest\.json is missing: .* answered 404/);
  await assert.rejects(load(copyBundle("noprec"), { ...opts, precision: "bf16" }), /precision for the encoder must be one of fp32, fp16, int8, auto, got "bf16"/);
});

test("a missing or tampered file is refused, naming it", async () => {
  const missing = copyBundle("missing", (dir) => rmSync(join(dir, "weights.fp32.bin")));
  await assert.rejects(load(missing, opts), /bundle file weights\.fp32\.bin is missing/);
  const tampered = copyBundle("tampered", (dir) => {
    const p = join(dir, "encoder.fp32.onnx");
    const b = readFileSync(p);
    b[b.length - 5] ^= 1;
    writeFileSync(p, b);
  });
  await assert.rejects(load(tampered, opts), /bundle file encoder\.fp32\.onnx does not match its sha256 in the manifest/);
});
