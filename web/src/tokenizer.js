// load(): a bundle as the tokenizer of its kind, the JavaScript face of vqedge.runtime.load.
// The sessions run in a Web Worker (browsers) or in-process (Node, or worker: false); the
// pixels are prepared here, as the Python runtime prepares them.

import { BundleError, MULTI_SCALE, SINGLE_SCALE } from "./bundle.js";
import { kindClass, kindNames, registerKind } from "./kinds.js";
import { describePlan } from "./plan.js";
import { LOOKUP_LATENTS } from "./rules.gen.js";
import { checkSide, defaultMaxSide, fitSquare, makeImageData, toImage, toInput, toRGB } from "./preprocess.js";
import { readTokens, writeTokens } from "./tokens.js";
import { PrecisionError, refusal, storedVerdict, storeVerdict, verdictKey, verifyNow } from "./verify.js";

function workerRunner() {
  const worker = new Worker(new URL("./vqedge.worker.js", import.meta.url), { type: "module" });
  const pending = new Map();
  let next = 0;
  const runner = { sessionMs: 0 };
  worker.onmessage = ({ data: { id, result, error, progress, ms } }) => {
    const p = pending.get(id);
    if (progress) return p?.onProgress?.(progress);
    runner.sessionMs += ms ?? 0;
    pending.delete(id);
    if (error) {
      const e = new Error(error.message);
      e.name = error.name;
      p.reject(e);
    } else p.resolve(result);
  };
  worker.onerror = (ev) => {
    for (const p of pending.values()) p.reject(new Error(`vqedge worker failed: ${ev.message}`));
    pending.clear();
  };
  const call = (op, args, transfer = [], onProgress = undefined) =>
    new Promise((resolve, reject) => {
      const id = next++;
      pending.set(id, { resolve, reject, onProgress });
      worker.postMessage({ id, op, args }, transfer);
    });
  return Object.assign(runner, {
    load: ({ onProgress, ...args }) => call("load", args, [], onProgress),
    // the feeds are the tokenizer's own temporaries: moved to the worker, never copied
    run: (graph, feeds) => call("run", { graph, feeds }, [...new Set(Object.values(feeds).map((t) => t.data.buffer))]),
    dispose: () => worker.terminate(),
  });
}

function inProcessRunner() {
  let core = null;
  const runner = { sessionMs: 0 };
  return Object.assign(runner, {
    load: async (args) => {
      // a bare specifier: resolved by Node (or a page's import map), never bundled
      const ortName = "onnxruntime-web";
      const ortFor = async () => {
        const ort = await import(/* @vite-ignore */ ortName);
        return ort.default ?? ort;
      };
      const { openBundle } = await import("./sessions.js");
      await core?.release();
      core = await openBundle(ortFor, args.url, args);
      const { run, release, ...facts } = core;
      return facts;
    },
    run: async (graph, feeds) => {
      const t0 = performance.now();
      const out = await core.run(graph, feeds);
      runner.sessionMs += performance.now() - t0;
      return out;
    },
    dispose: () => {},
  });
}

function checkIndices(indices, k) {
  if (!(indices instanceof Int32Array || indices instanceof Uint32Array || indices instanceof BigInt64Array || Array.isArray(indices))) {
    throw new Error(`token indices must be an integer array (Int32Array), got ${indices?.constructor?.name ?? typeof indices}`);
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of indices) {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new Error(`token indices must be integers, got ${v}`);
    if (n < lo) lo = n;
    if (n > hi) hi = n;
  }
  if (indices.length === 0) throw new Error("token indices must be a non-empty map");
  if (lo < 0 || hi >= k) throw new Error(`token indices must lie in [0, ${k}), got [${lo}, ${hi}]`);
}

const int64 = (a) => BigInt64Array.from(a, (v) => BigInt(v));
const int32 = (a) => Int32Array.from(a, (v) => Number(v));

class TokenizerBase {
  constructor(runner, facts, maxSide) {
    this.runner = runner;
    /** the bundle's manifest */
    this.manifest = facts.manifest;
    /** sha256 of manifest.json: the bundle's identity, written into token files */
    this.bundleSha256 = facts.manifestSha256;
    this._facts(facts);
    this.name = this.manifest.name;
    this.kind = this.manifest.kind;
    this.f = this.manifest.input.downsample_factor;
    this.codebookSize = this.manifest.input.codebook_size;
    this.maxSide = maxSide ?? defaultMaxSide(this.manifest);
  }

  _facts(facts) {
    this.root = facts.root;
    /** what runs: "wasm" or "webgpu" (on which adapter), the precision plan, WASM threads */
    this.backend = facts.backend;
    this.adapter = facts.adapter;
    this.plan = facts.plan;
    /** "fp32", or "encoder fp32, decoder int8" */
    this.precision = describePlan(facts.plan);
    this.threads = facts.threads;
    this.crossOriginIsolated = facts.crossOriginIsolated;
    /** bytes downloaded (manifest, graphs, weights), bytes taken from Cache Storage, per file */
    this.bytesDownloaded = facts.bytesDownloaded;
    this.bytesFromCache = facts.bytesFromCache;
    this.files = facts.files;
    this.loadMs = facts.loadMs;
  }

  /**
   * Run the bundle's check set here, now, on this backend and plan, with the Python
   * runtime's rules (vqedge.runtime.fidelity): each stage judged by its tier.
   * @returns {Promise<{holds: boolean | null, stages: object[], reason: string, plan: object,
   *   backend: string, adapter: string}>}
   */
  async verify() {
    return verifyNow(this);
  }

  /** ms spent inside onnxruntime-web's sessions since load (the worker's clock): the rest of
   * a call's time is JavaScript (pixels, colour maps) and transfers. */
  get sessionMs() {
    return this.runner.sessionMs;
  }

  async _run(graph, name, t) {
    return this.runner.run(graph, { [name]: t });
  }

  _pixels(image, maxSide = this.maxSide) {
    checkSide(image.height, image.width, maxSide);
    return toRGB(image);
  }

  /**
   * Read a .vqt file for this bundle: its K, sha256 and size limits checked first.
   * @param {ArrayBuffer | Uint8Array} buffer @param {{name?: string, force?: boolean}} [options]
   */
  readTokens(buffer, { name, force = false } = {}) {
    return readTokens(buffer, { name, force, bundleSha256: this.bundleSha256, codebookSize: this.codebookSize, ...this._tokenLimits() });
  }

  /** Free the sessions (and the worker). */
  dispose() {
    this.runner.dispose();
  }
}

/** A single-scale bundle: an image of any size <-> one token map [h, w]. */
export class Tokenizer extends TokenizerBase {
  /** (h, w) of the token map of an H x W image. */
  tokenShape(height, width) {
    return [Math.ceil(height / this.f), Math.ceil(width / this.f)];
  }

  _tokenLimits() {
    return { maxImageSide: this.maxSide, maxMapSide: Math.ceil(this.maxSide / this.f) };
  }

  /**
   * An image -> its token map.
   * @param {ImageData} image RGBA pixels, sides up to maxSide
   * @returns {Promise<{indices: Int32Array, height: number, width: number, imageHeight: number, imageWidth: number}>}
   */
  async encode(image) {
    const rgb = this._pixels(image);
    const x = toInput(rgb, image.height, image.width, this.f);
    const { latent } = await this._run("encoder", "image", { type: "float32", ...x });
    const [, C, h, w] = latent.dims;
    const indices = new Int32Array(h * w);
    const rows = Math.max(1, Math.floor(LOOKUP_LATENTS / w));
    for (let r = 0; r < h; r += rows) {
      const n = Math.min(rows, h - r);
      const block = new Float32Array(C * n * w);
      for (let c = 0; c < C; c++) block.set(latent.data.subarray((c * h + r) * w, (c * h + r + n) * w), c * n * w);
      const out = await this._run("quantizer", "latent", { type: "float32", data: block, dims: [1, C, n, w] });
      indices.set(int32(out.indices.data), r * w);
    }
    return { indices, height: h, width: w, imageHeight: image.height, imageWidth: image.width };
  }

  /**
   * A token map -> its image (h*f x w*f, or cropped to size).
   * @param {Int32Array} indices h*w values in [0, K) @param {number} height h @param {number} width w
   * @param {{size?: number[]}} [options] size: [H, W] to crop to (the original image's)
   * @returns {Promise<ImageData>}
   */
  async decode(indices, height, width, { size } = {}) {
    if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0) || indices?.length !== height * width) {
      throw new Error(`token indices must be a non-empty [h, w] map: ${indices?.length} values for ${height}x${width}`);
    }
    checkIndices(indices, this.codebookSize);
    const limit = Math.ceil(this.maxSide / this.f);
    if (Math.max(height, width) > limit) {
      throw new Error(`a ${height}x${width} token map decodes to a ${height * this.f}x${width * this.f} image (f=${this.f}), above max_side=${this.maxSide} (at most ${limit} tokens a side): resize it or raise maxSide`);
    }
    const [H, W] = size ?? [height * this.f, width * this.f];
    if (!(H > 0 && W > 0 && H <= height * this.f && W <= width * this.f)) {
      throw new Error(`size ${JSON.stringify(size)} must be (H, W) within the ${height * this.f}x${width * this.f} image`);
    }
    const { image } = await this._run("decoder", "indices", { type: "int64", data: int64(indices), dims: [1, height, width] });
    return toImage(image.data, image.dims, H, W);
  }

  /** An image -> {image: its reconstruction (same size), indices, height, width}. */
  async reconstruct(image) {
    const enc = await this.encode(image);
    const recon = await this.decode(enc.indices, enc.height, enc.width, { size: [image.height, image.width] });
    return { ...enc, image: recon };
  }

  /** The bytes of a .vqt file of a token map (imageSize: the original [H, W], if known). */
  writeTokens(indices, height, width, { imageSize = null } = {}) {
    return writeTokens({ data: indices, shape: [1, height, width] }, this.codebookSize, this.bundleSha256, { imageSize });
  }
}

/** A multi-scale (VAR) bundle: R x R images <-> one token map per scale, coarse to fine. */
export class MultiScaleTokenizer extends TokenizerBase {
  constructor(runner, facts, maxSide) {
    super(runner, facts, maxSide);
    const s = this.manifest.scales;
    this.patchNums = s.patch_nums;
    this.resolution = s.resolution;
    this.numTokens = s.num_tokens;
    this.offsets = [...s.offsets, s.num_tokens];
  }

  _tokenLimits() {
    return { maxMapSide: this.patchNums.at(-1), scales: this.patchNums };
  }

  _checkSize(height, width) {
    const R = this.resolution;
    if (height !== R || width !== R) {
      throw new Error(`this multi-scale bundle accepts ${R}x${R} images only (scales ${JSON.stringify(this.patchNums)}, f=${this.f}), got ${height}x${width}; fit them first with encodeImage (centre square, Lanczos)`);
    }
    if (this.maxSide < R) throw new Error(`this multi-scale bundle makes ${R}x${R} images, above max_side=${this.maxSide}: load it with maxSide >= ${R}`);
  }

  /** Concatenated tokens (L) -> idx_Bl, one Int32Array of pn*pn per scale. */
  split(indices) {
    return this.patchNums.map((_, i) => indices.slice(this.offsets[i], this.offsets[i + 1]));
  }

  /** Check a list of scales (a prefix of at least minScales) -> one Int32Array per scale. */
  checkIdxBl(idxBl, minScales = 1) {
    const SN = this.patchNums.length;
    if (!Array.isArray(idxBl) || idxBl.length < minScales || idxBl.length > SN) {
      throw new Error(`idx_Bl must be a list of ${minScales} to ${SN} scales (patch_nums ${JSON.stringify(this.patchNums)}), got ${Array.isArray(idxBl) ? idxBl.length : typeof idxBl}`);
    }
    return idxBl.map((a, si) => {
      const pn = this.patchNums[si];
      if (a?.length !== pn * pn) throw new Error(`scale ${si} must hold ${pn * pn} tokens (${pn}x${pn}), got ${a?.length}`);
      checkIndices(a, this.codebookSize);
      return int32(a);
    });
  }

  async _scales(checked) {
    const idx = new BigInt64Array(this.numTokens);
    let o = 0;
    for (const a of checked) for (const v of a) idx[o++] = BigInt(v);
    // scales past the prefix are zeros: f_hat after scale k depends on scales <= k only
    return this.runner.run("scales", { indices: { type: "int64", data: idx, dims: [1, this.numTokens] } });
  }

  async _decodeFhat(data, dims) {
    const { image } = await this._run("decoder", "f_hat", { type: "float32", data, dims });
    return toImage(image.data, image.dims);
  }

  /** An R x R image -> {indices: every scale's tokens, concatenated (L), height: 1, width: L}. */
  async encode(image) {
    this._checkSize(image.height, image.width);
    const x = toInput(this._pixels(image), image.height, image.width, 1);
    const { latent } = await this._run("encoder", "image", { type: "float32", ...x });
    const { indices } = await this._run("quantizer", "latent", latent);
    return { indices: int32(indices.data), height: 1, width: this.numTokens };
  }

  /**
   * An image of any size -> {indices, height, width, fitted}: fitted is the image fitted to
   * R x R (centre square, Lanczos exactly as Pillow) that was tokenized.
   */
  async encodeImage(image) {
    const rgb = fitSquare(this._pixels(image, Infinity), image.height, image.width, this.resolution);
    const R = this.resolution;
    const rgba = new Uint8ClampedArray(R * R * 4);
    for (let i = 0; i < R * R; i++) {
      rgba.set(rgb.subarray(i * 3, i * 3 + 3), i * 4);
      rgba[i * 4 + 3] = 255;
    }
    const fitted = makeImageData(rgba, R, R);
    return { ...(await this.encode(fitted)), fitted };
  }

  /** Tokens (L concatenated, or idx_Bl: every scale or a prefix) -> the R x R image. */
  async decode(tokens) {
    const idxBl = Array.isArray(tokens) ? tokens : tokens?.length === this.numTokens ? this.split(tokens) : null;
    if (!idxBl) throw new Error(`multi-scale tokens must be ${this.numTokens} indices (every scale, concatenated) or a list of per-scale arrays, got ${tokens?.length}`);
    return this.idxBlToImg(idxBl);
  }

  /** An R x R image -> {image: its reconstruction, indices, height, width}. */
  async reconstruct(image) {
    const enc = await this.encode(image);
    return { ...enc, image: await this.decode(enc.indices) };
  }

  /** An R x R image -> idx_Bl: one Int32Array of pn*pn tokens per scale, coarse to fine. */
  async imgToIdxBl(image) {
    return this.split((await this.encode(image)).indices);
  }

  /**
   * idx_Bl (every scale, or the first k) -> the image of f_hat after the last given scale;
   * lastOne: false gives one image per given scale (the progressive reconstructions).
   * @returns {Promise<ImageData | ImageData[]>}
   */
  async idxBlToImg(idxBl, { lastOne = true } = {}) {
    const checked = this.checkIdxBl(idxBl);
    const { f_hat_each: each } = await this._scales(checked);
    const [, SN, C, h, w] = each.dims;
    const one = C * h * w;
    const at = (k) => this._decodeFhat(each.data.slice(k * one, (k + 1) * one), [1, C, h, w]);
    if (lastOne) return at(checked.length - 1);
    const out = [];
    for (let k = 0; k < checked.length; k++) out.push(await at(k));
    return out;
  }

  /**
   * VAR's teacher-forcing input, float32 [1, L - pn_1^2, C], from every scale but the last
   * (which may be left out). @returns {Promise<{data: Float32Array, dims: number[]}>}
   */
  async idxBlToVarInput(idxBl) {
    const checked = this.checkIdxBl(idxBl, this.patchNums.length - 1);
    const { var_input: v } = await this._scales(checked);
    return { data: v.data, dims: v.dims };
  }

  /** The bytes of a .vqt file holding every scale (maps [1, pn, pn]). */
  writeTokens(tokens, { imageSize = null } = {}) {
    const idxBl = this.checkIdxBl(Array.isArray(tokens) ? tokens : this.split(tokens), this.patchNums.length);
    const maps = idxBl.map((data, i) => ({ data, shape: [1, this.patchNums[i], this.patchNums[i]] }));
    return writeTokens(maps, this.codebookSize, this.bundleSha256, { imageSize, scales: this.patchNums });
  }

  /** What a multi-scale .vqt holds -> idx_Bl. */
  tokensOf(file) {
    return file.scales.map((s) => s.data);
  }
}

/**
 * The verdict of the plan that runs (kept, or measured now and kept); strict refuses a plan
 * that does not hold, lenient reopens the stages that do not hold at fp32.
 */
async function verifyAtLoad(tok, strict, reopen) {
  const key = await verdictKey(tok);
  let verdict = await storedVerdict(key);
  if (!verdict) {
    verdict = await tok.verify();
    if (verdict.holds !== null) await storeVerdict(key, verdict);
  }
  tok.verification = verdict;
  if (verdict.holds !== false) return tok;
  if (strict) throw new PrecisionError(refusal(verdict), verdict);
  const failed = verdict.stages.filter((s) => !s.holds && s.precision !== "fp32").map((s) => s.stage);
  if (!failed.length) return tok; // fp32 itself: nothing to fall back to; the verdict says so
  const plan = { ...tok.plan, ...Object.fromEntries(failed.map((s) => [s, "fp32"])) };
  tok._facts(await reopen(plan));
  tok.verification = { ...verdict, fellBackTo: plan };
  return tok;
}

/**
 * Open a bundle folder as the tokenizer of its kind.
 *
 * @param {string} url  the bundle folder (manifest.json, graphs, weights), e.g. "bundles/vqvae-f4/"
 * @param {{backend?: "auto" | "wasm" | "webgpu", precision?: string | {encoder?: string,
 *   decoder?: string}, strict?: boolean, verify?: boolean, threads?: number, maxSide?: number,
 *   worker?: boolean, onProgress?: Function}} [options]  backend "auto" takes WebGPU where an
 *   adapter exists, else WASM; precision: one for every stage, a plan per stage (a stage left
 *   out runs fp32) or "auto" (per stage the fastest that holds here); the first time a bundle,
 *   plan, backend and adapter meet, the bundle's check set is run (verify: false skips it)
 *   and strict (the default) refuses a stage that does not hold, strict: false runs it at
 *   fp32 instead; threads (WASM) need a cross-origin isolated page (default: every core);
 *   worker: false runs the sessions in this thread (Node); onProgress({file, loaded, total,
 *   fromCache}) follows the downloads
 * @returns {Promise<Tokenizer | MultiScaleTokenizer>}
 * @throws {BundleError} a bundle of another format, a missing or tampered file, an absent precision
 * @throws {PrecisionError} strict, and a stage of the plan does not hold here (err.verdict)
 */
export async function load(url, { backend = "auto", precision = "fp32", strict = true, verify = true, threads, maxSide, worker, onProgress } = {}) {
  const useWorker = worker ?? typeof Worker !== "undefined";
  const runner = useWorker ? workerRunner() : inProcessRunner();
  const base = typeof location !== "undefined" ? location.href : undefined;
  const args = { url: new URL(url, base).href, backend, threads, onProgress };
  try {
    const facts = await runner.load({ ...args, precision });
    const Kind = kindClass(facts.manifest.kind);
    if (Kind === undefined) {
      throw new BundleError(`bundle ${url}: kind ${JSON.stringify(facts.manifest.kind)} is not one this package runs (${kindNames().join(", ")}): upgrade vqedge-web, or registerKind() its class`);
    }
    const tok = new Kind(runner, facts, maxSide);
    const auto = precision === "auto" || Object.values(precision ?? {}).includes("auto");
    if (!verify) return tok;
    // an "auto" stage falls back whatever strict says: auto means the fastest that holds
    return await verifyAtLoad(tok, strict && !auto, (plan) => runner.load({ ...args, backend: facts.backend, precision: plan }));
  } catch (e) {
    runner.dispose();
    throw e;
  }
}

// the kinds this package ships (the table: kinds.js)
registerKind(SINGLE_SCALE, Tokenizer);
registerKind(MULTI_SCALE, MultiScaleTokenizer);
