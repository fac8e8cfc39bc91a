// The bundle's check set run in the page (vqedge.runtime.verify's job): each stage of the
// precision plan judged by its tier, the verdict kept in IndexedDB per bundle (manifest
// sha256), plan, backend, adapter and rules, and judged again from its figures on every read.

import { fetchVerified } from "./bundle.js";
import { judgePixels, judgeTokens, psnr, rejudge, rulesDigest, STAGES } from "./fidelity.js";
import { readNpz } from "./npz.js";
import { describePlan } from "./plan.js";
import { PSNR_CAP_DB } from "./rules.gen.js";

export const CHECK_ARRAYS = ["image", "tokens", "reconstruction"];
const DB_NAME = "vqedge";
const STORE = "verdicts";

/** A precision that does not hold on this device, refused in strict mode. */
export class PrecisionError extends Error {
  constructor(message, verdict) {
    super(message);
    this.name = "PrecisionError";
    this.verdict = verdict;
  }
}

/** The check set's arrays (image, tokens, reconstruction), sha256 checked. */
export async function readCheckSet(tok) {
  const entry = tok.manifest.check;
  if (!entry || typeof entry.file !== "string") return null;
  const arrays = await readNpz(await fetchVerified(tok.root, tok.manifest, entry.file), `bundle check set ${entry.file}`);
  for (const k of CHECK_ARRAYS) {
    if (!arrays[k]) throw new Error(`bundle check set ${entry.file} is not readable (arrays ${CHECK_ARRAYS.join(", ")}): it has no ${k}`);
  }
  return arrays;
}

function rgba(rgb, h, w) {
  const out = new Uint8ClampedArray(h * w * 4);
  for (let i = 0, j = 0; i < h * w; i++, j += 3) {
    out[i * 4] = rgb[j];
    out[i * 4 + 1] = rgb[j + 1];
    out[i * 4 + 2] = rgb[j + 2];
    out[i * 4 + 3] = 255;
  }
  return { data: out, width: w, height: h };
}

function rgbOf(img) {
  const out = new Uint8Array((img.data.length / 4) * 3);
  for (let i = 0, j = 0; i < img.data.length; i += 4, j += 3) out.set(img.data.subarray(i, i + 3), j);
  return out;
}

/**
 * Run the check set through a tokenizer: {encoder: judgement, decoder: judgement}.
 * Encoder: the check images encoded -> agreement with the reference tokens (per scale for a
 * multi-scale bundle). Decoder: the reference tokens decoded -> PSNR (capped) against the
 * reference reconstructions, the mean over images.
 */
export async function measure(tok, arrays) {
  const [, H, W] = arrays.image.shape;
  // the check images are the bundle's own: a caller's smaller maxSide does not apply to them
  const maxSide = tok.maxSide;
  tok.maxSide = Math.max(maxSide, H, W);
  try {
    return await measureAll(tok, arrays);
  } finally {
    tok.maxSide = maxSide;
  }
}

async function measureAll(tok, arrays) {
  const [N, H, W] = arrays.image.shape;
  const perImage = arrays.tokens.data.length / N;
  const multi = tok.kind === "multi-scale";
  const bounds = multi ? tok.offsets : [0, perImage];
  const same = new Array(bounds.length - 1).fill(0);
  let psnrSum = 0;
  for (let i = 0; i < N; i++) {
    const img = rgba(arrays.image.data.subarray(i * H * W * 3, (i + 1) * H * W * 3), H, W);
    const ref = arrays.tokens.data.subarray(i * perImage, (i + 1) * perImage);
    const { indices } = await tok.encode(img);
    if (indices.length !== perImage) throw new Error(`check set tokens have ${perImage} per image, this bundle gives ${indices.length}`);
    for (let s = 0; s + 1 < bounds.length; s++) {
      for (let k = bounds[s]; k < bounds[s + 1]; k++) if (BigInt(indices[k]) === ref[k]) same[s]++;
    }
    const refIdx = Int32Array.from(ref, Number);
    const [h, w] = arrays.tokens.shape.length === 3 ? arrays.tokens.shape.slice(1) : [1, perImage];
    const recon = multi ? await tok.decode(refIdx) : await tok.decode(refIdx, h, w, { size: [H, W] });
    const want = arrays.reconstruction.data.subarray(i * H * W * 3, (i + 1) * H * W * 3);
    psnrSum += Math.min(psnr(rgbOf(recon), want), PSNR_CAP_DB);
  }
  const perScale = multi ? same.map((n, s) => n / (N * (bounds[s + 1] - bounds[s]))) : [];
  const agreement = same.reduce((a, b) => a + b, 0) / (N * perImage);
  return {
    encoder: judgeTokens("encoder", tok.plan.encoder, agreement, perScale),
    decoder: judgePixels("decoder", tok.plan.decoder, psnrSum / N),
  };
}

/** The IndexedDB key of a verdict: bundle, plan, backend, adapter and rules. */
export async function verdictKey(tok) {
  return JSON.stringify([tok.bundleSha256, STAGES.map((s) => tok.plan[s]), tok.backend, tok.adapter, await rulesDigest()]);
}

function openDb() {
  if (typeof indexedDB === "undefined") return Promise.resolve(null);
  return new Promise((resolve) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null); // private mode and the like: verify every time
  });
}

async function dbOp(mode, fn) {
  const db = await openDb();
  if (!db) return undefined;
  return new Promise((resolve) => {
    const tx = db.transaction(STORE, mode);
    const req = fn(tx.objectStore(STORE));
    tx.oncomplete = () => {
      db.close();
      resolve(req.result);
    };
    tx.onerror = tx.onabort = () => {
      db.close();
      resolve(undefined);
    };
  });
}

/** A kept verdict for this key, judged again from its figures (null if none or unreadable). */
export async function storedVerdict(key) {
  const v = await dbOp("readonly", (s) => s.get(key));
  if (!v || !Array.isArray(v.stages)) return null;
  try {
    return { ...rejudge(v), cached: true };
  } catch {
    return null;
  }
}

/** Keep a verdict's figures for this key. */
export async function storeVerdict(key, verdict) {
  const { cached, ...figures } = verdict;
  await dbOp("readwrite", (s) => s.put(figures, key));
}

/**
 * tok.verify(): the check set run now, on this backend and plan.
 * @returns {Promise<object>} {holds, stages: [encoder, decoder judgements], plan, backend,
 *   adapter, bundle, bundleSha256, rulesDigest, reason, seconds}; null stages when the bundle
 *   carries no check set (holds: null)
 */
export async function verifyNow(tok) {
  const t0 = performance.now();
  const base = { plan: { ...tok.plan }, backend: tok.backend, adapter: tok.adapter, bundle: tok.name, bundleSha256: tok.bundleSha256, rulesDigest: await rulesDigest() };
  const arrays = await readCheckSet(tok);
  if (!arrays) return { ...base, holds: null, stages: [], reason: "the bundle carries no check set (re-export it to add one)" };
  const m = await measure(tok, arrays);
  const stages = STAGES.map((s) => m[s]);
  return { ...base, holds: stages.every((s) => s.holds), stages, reason: stages.map((s) => s.reason).filter(Boolean).join("; "), seconds: (performance.now() - t0) / 1000 };
}

/** What strict mode says of a verdict that does not hold. */
export function refusal(verdict) {
  return `${verdict.reason} on ${verdict.backend} (${verdict.adapter}): use precision "fp32" for the stage(s) that do not hold, or load with strict: false to fall back to fp32 there`;
}

/** One line for the page: "holds (encoder 100.0% tokens, decoder 99.0 dB)". */
export function describeVerdict(v) {
  if (v.holds === null) return `not verified: ${v.reason}`;
  const figs = v.stages.map((s) => `${s.stage} ${s.precision} ${s.tier === "tokens" ? `${(s.figure * 100).toFixed(1)}% of fp32's tokens` : `${s.figure.toFixed(1)} dB`}`).join(", ");
  const fell = v.fellBackTo ? `; running ${describePlan(v.fellBackTo)} instead` : "";
  return `${v.holds ? "verified" : "does not hold"}${v.cached ? " (kept verdict)" : ""}: ${figs}${fell}`;
}
