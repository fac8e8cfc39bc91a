// The rules generated from the Python source, the .npz reader, verdict judging, and the check
// set run on the shipped f4 bundle in Node (onnxruntime-web's WASM, in-process).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { deflateRawSync } from "node:zlib";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { planFiles } from "../src/bundle.js";
import { judgePixels, judgeTokens, rejudge, rulesDigest } from "../src/fidelity.js";
import { readNpz } from "../src/npz.js";
import { parsePlan } from "../src/plan.js";
import { PIXELS_MIN_PSNR_DB, TOKENS_MIN_AGREEMENT } from "../src/rules.gen.js";
import { generateRules, OUTPUT } from "../gen-rules.mjs";
import { verifyNow } from "../src/verify.js";

const F4 = fileURLToPath(new URL("../../runtime/bundles/vqvae-f4/", import.meta.url));

test("src/rules.gen.js is what the Python source generates now (not stale)", () => {
  assert.equal(readFileSync(OUTPUT, "utf8"), generateRules());
  const gen = fileURLToPath(new URL("../gen-rules.mjs", import.meta.url));
  execFileSync(process.execPath, [gen, "--check"]); // throws on a non-zero exit
  assert.equal(TOKENS_MIN_AGREEMENT, 0.99);
  assert.equal(PIXELS_MIN_PSNR_DB, 40);
});

test("the tiers judge as Python's judge_tokens / judge_pixels, with their wording", async () => {
  const t = judgeTokens("encoder", "int8", 0.8467, [0.5, 0.91]);
  assert.equal(t.holds, false);
  assert.equal(t.reason, "int8 encoder keeps 84.7% of fp32's tokens (per scale: 50%, 91%) (tokens tier: at least 99%)");
  assert.equal(judgeTokens("encoder", "fp32", 0.99).holds, true);
  const p = judgePixels("decoder", "int8", 39.768);
  assert.equal(p.reason, "int8 decoder decodes fp32's tokens 39.8 dB from fp32's decode (pixels tier: at least 40 dB)");
  assert.equal(judgePixels("decoder", "fp32", Infinity).figure, 99);
  assert.match(await rulesDigest(), /^[0-9a-f]{16}$/);
});

test("a stored verdict is judged again from its figures: a forged holds does not pass", () => {
  const forged = { holds: true, stages: [{ stage: "encoder", precision: "int8", tier: "pixels", figure: 0.5, holds: true, reason: "" }, { stage: "decoder", precision: "int8", figure: 45, holds: true }] };
  const v = rejudge(forged);
  assert.equal(v.holds, false);
  assert.equal(v.stages[0].tier, "tokens");
  assert.match(v.reason, /^int8 encoder keeps 50\.0% of fp32's tokens/);
  assert.throws(() => rejudge({ stages: [{ stage: "middle", precision: "int8", figure: 1 }] }), /a stored verdict stage must have a stage/);
});

function zip(entries) {
  // a minimal zip (one deflated, one stored entry), as numpy's savez_compressed writes
  const locals = [];
  const central = [];
  let offset = 0;
  for (const [name, data, method] of entries) {
    const body = method === 8 ? deflateRawSync(data) : data;
    const n = Buffer.from(name);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(method, 8);
    lh.writeUInt32LE(body.length, 18);
    lh.writeUInt32LE(data.length, 22);
    lh.writeUInt16LE(n.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(method, 10);
    ch.writeUInt32LE(body.length, 20);
    ch.writeUInt32LE(data.length, 24);
    ch.writeUInt16LE(n.length, 28);
    ch.writeUInt32LE(offset, 42);
    locals.push(lh, n, body);
    central.push(ch, n);
    offset += 30 + n.length + body.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return new Uint8Array(Buffer.concat([...locals, cd, end]));
}

function npy(descr, shape, bytes) {
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  header = header.padEnd(118, " ") + "\n";
  const pre = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, header.length, 0]);
  return Buffer.concat([pre, Buffer.from(header), Buffer.from(bytes)]);
}

test("the npz reader: numpy's check set, stored and deflated entries, clear refusals", async () => {
  const check = await readNpz(new Uint8Array(readFileSync(`${F4}check.npz`)));
  assert.deepEqual(check.image.shape, [2, 64, 64, 3]);
  assert.deepEqual(check.tokens.shape, [2, 16, 16]);
  assert.ok(check.tokens.data instanceof BigInt64Array);
  assert.equal(check.reconstruction.data.length, 2 * 64 * 64 * 3);
  const f = new Float32Array([1.5, -2, 3]);
  const made = zip([
    ["a.npy", npy("<f4", [3], new Uint8Array(f.buffer)), 8],
    ["b.npy", npy("|u1", [2, 2], [1, 2, 3, 4]), 0],
  ]);
  const out = await readNpz(made);
  assert.deepEqual(Array.from(out.a.data), [1.5, -2, 3]);
  assert.deepEqual(out.b.shape, [2, 2]);
  await assert.rejects(readNpz(new Uint8Array(10), "x.npz"), /x\.npz is not a zip \(\.npz\) file/);
  const bad = zip([["c.npy", npy("<c16", [1], new Uint8Array(16)), 0]]);
  await assert.rejects(readNpz(bad, "y.npz"), /y\.npz: c\.npy: dtype <c16 is not one this reader takes/);
});

test("a plan picks each stage's graph and only the weights files those graphs read", () => {
  const m = JSON.parse(readFileSync(`${F4}manifest.json`, "utf8"));
  const files = planFiles(m, parsePlan({ decoder: "int8" }), "wasm");
  assert.equal(files.encoder.file, "encoder.fp32.onnx");
  assert.equal(files.decoder.file, m.variants.int8.cpu_graphs.decoder.file);
  assert.equal(files.quantizer.file, "quantizer.fp32.onnx");
  assert.throws(() => parsePlan({ middle: "int8" }), /precision plan names unknown stage\(s\) \["middle"\]/);
});

test("verify() on the shipped f4 bundle: fp32 holds; int8 judged with the Python wording", async () => {
  const { load } = await import("../src/index.js");
  const { createServer } = await import("node:http");
  const server = createServer((req, res) => {
    try {
      res.end(readFileSync(F4 + new URL(req.url, "http://x").pathname.slice(1)));
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}/`;
  try {
    const tok = await load(url, { backend: "wasm", worker: false });
    assert.equal(tok.verification.holds, true);
    assert.deepEqual(tok.verification.stages.map((s) => [s.stage, s.tier]), [["encoder", "tokens"], ["decoder", "pixels"]]);
    assert.ok(tok.verification.stages[0].figure >= 0.99);
    const q = await load(url, { backend: "wasm", worker: false, precision: "int8", verify: false });
    const v = await verifyNow(q);
    assert.equal(v.stages[0].precision, "int8");
    for (const s of v.stages) assert.equal(s.reason, s.holds ? "" : s.tier === "tokens" ? judgeTokens(s.stage, "int8", s.figure).reason : judgePixels(s.stage, "int8", s.figure).reason);
    // "auto": the fastest precision per stage (int8 on WASM) where its check holds, else fp32
    const auto = await load(url, { backend: "wasm", worker: false, precision: "auto" });
    assert.deepEqual(auto.plan, Object.fromEntries(v.stages.map((s) => [s.stage, s.holds ? "int8" : "fp32"])));
    if (!v.holds) {
      await assert.rejects(load(url, { backend: "wasm", worker: false, precision: "int8" }), (e) => e.name === "PrecisionError" && e.message.startsWith(v.reason));
      const lenient = await load(url, { backend: "wasm", worker: false, precision: "int8", strict: false });
      assert.ok(Object.values(lenient.plan).includes("fp32"));
      assert.ok(lenient.verification.fellBackTo);
    }
  } finally {
    server.close();
  }
});
