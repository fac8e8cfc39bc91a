// One bundle's onnxruntime-web sessions: every graph of one precision, created from checked
// bytes with the precision's weights files passed as external data. Runs wherever it is
// imported: in the package's Web Worker in a browser, in-process under Node.

import { BundleError, fetchManifest, fetchPlan } from "./bundle.js";
import { autoCandidates, parsePlan, RUN_PRECISIONS } from "./plan.js";

export const BACKENDS = ["wasm", "webgpu"];

/**
 * Whether this context has a WebGPU adapter, and whether it has shader-f16.
 * @returns {Promise<{adapter: boolean, f16: boolean, reason?: string}>}
 */
export async function webgpuSupport() {
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) return { adapter: false, f16: false, reason: "navigator.gpu is absent" };
  let adapter = null;
  try {
    adapter = await gpu.requestAdapter();
  } catch (e) {
    return { adapter: false, f16: false, reason: `requestAdapter failed: ${e.message}` };
  }
  if (!adapter) return { adapter: false, f16: false, reason: "navigator.gpu.requestAdapter() gave no adapter" };
  const i = adapter.info ?? {};
  const info = [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(" ") || "unknown adapter";
  return { adapter: true, f16: adapter.features.has("shader-f16"), info };
}

/** The WASM threads this context can use: every core of a cross-origin isolated page (the
 * default), 1 elsewhere (no SharedArrayBuffer). */
export function threadLimits() {
  const cores = globalThis.navigator?.hardwareConcurrency ?? 1;
  if (!globalThis.crossOriginIsolated) return { max: 1, default: 1 };
  return { max: cores, default: cores };
}

/**
 * Resolve the backend and precision plan asked for into what will run, or say why not.
 * "auto" picks WebGPU where an adapter exists and WASM otherwise; fp16 runs on WebGPU only
 * with shader-f16; an "auto" stage takes the fastest precision the bundle has here (load()
 * then verifies it and falls back to fp32 where it does not hold).
 * @returns {Promise<{backend: string, plan: {encoder: string, decoder: string}, adapter: string}>}
 */
export async function chooseBackend(backend, precision, manifest) {
  if (backend !== "auto" && !BACKENDS.includes(backend)) {
    throw new Error(`backend must be "auto", "wasm" or "webgpu", got ${JSON.stringify(backend)}`);
  }
  const asked = parsePlan(precision);
  for (const p of Object.values(asked)) {
    if (RUN_PRECISIONS.includes(p) && !(p in manifest.variants)) {
      throw new BundleError(`bundle ${manifest.name} has no ${p} variant (it has ${Object.keys(manifest.variants).sort().join(", ")}); export it with --precisions ${p}`);
    }
  }
  const wantsF16 = Object.values(asked).includes("fp16");
  const gpu = backend === "wasm" ? { adapter: false, f16: false } : await webgpuSupport();
  if (backend === "webgpu" && !gpu.adapter) throw new Error(`WebGPU was asked for, but ${gpu.reason}`);
  // auto: WebGPU where there is an adapter, and for fp16 only with shader-f16
  const gpuFits = gpu.adapter && (!wantsF16 || gpu.f16);
  const chosen = backend === "auto" ? (gpuFits ? "webgpu" : "wasm") : backend;
  if (chosen === "webgpu" && wantsF16 && !gpu.f16) {
    throw new Error("fp16 on WebGPU needs the adapter feature shader-f16, which this adapter lacks: use fp32");
  }
  const plan = autoCandidates(asked, manifest, chosen, gpu.f16);
  return { backend: chosen, plan, adapter: chosen === "webgpu" ? (gpu.info ?? "webgpu") : "wasm" };
}

/**
 * Download (or take from the cache), check and open a bundle's sessions for a precision plan.
 *
 * @param {(backend: string) => Promise<object>} ortFor  the onnxruntime-web module to use for
 *   a backend (the worker imports the WASM or the WebGPU build)
 * @param {string} url  the bundle folder
 * @param {{backend?: string, precision?: string | object, threads?: number,
 *   onProgress?: Function}} options
 * @returns {Promise<object>} {manifest, manifestSha256, backend, plan, adapter, threads,
 *   bytesDownloaded, bytesFromCache, files, loadMs, run(graph, feeds) -> outputs}
 */
export async function openBundle(ortFor, url, { backend = "auto", precision = "fp32", threads, onProgress } = {}) {
  const t0 = performance.now();
  const { root, manifest, manifestSha256, bytes } = await fetchManifest(url);
  const chosen = await chooseBackend(backend, precision, manifest);
  const [fetched, ort] = await Promise.all([fetchPlan(root, manifest, chosen.plan, chosen.backend, onProgress), ortFor(chosen.backend)]);
  const limits = threadLimits();
  const n = chosen.backend === "wasm" ? Math.max(1, Math.min(threads ?? limits.default, limits.max)) : 1;
  ort.env.wasm.numThreads = n;
  const sessions = {};
  for (const [graph, bytesOfGraph] of Object.entries(fetched.graphs)) {
    const options = {
      executionProviders: [chosen.backend],
      graphOptimizationLevel: "all",
      // node placement notes (shape ops kept on the CPU under WebGPU) are not the user's concern
      logSeverityLevel: 3,
      externalData: fetched.weightsOf[graph],
    };
    try {
      sessions[graph] = await ort.InferenceSession.create(bytesOfGraph, options);
    } catch (e) {
      throw new Error(`${graph} graph of bundle ${manifest.name} (${chosen.plan[graph] ?? "fp32"}) did not load on ${chosen.backend}: ${e.message}`);
    }
  }
  const run = async (graph, feeds) => {
    const sess = sessions[graph];
    if (!sess) throw new BundleError(`bundle ${manifest.name} has no ${graph} graph (it has ${Object.keys(sessions).sort().join(", ")})`);
    const inputs = {};
    for (const [name, t] of Object.entries(feeds)) inputs[name] = new ort.Tensor(t.type, t.data, t.dims);
    const out = await sess.run(inputs);
    const result = {};
    for (const [name, t] of Object.entries(out)) {
      result[name] = { type: t.type, data: t.data.slice(), dims: [...t.dims] };
      t.dispose?.();
    }
    return result;
  };
  return {
    root,
    manifest,
    manifestSha256,
    backend: chosen.backend,
    plan: chosen.plan,
    adapter: chosen.adapter,
    threads: n,
    crossOriginIsolated: Boolean(globalThis.crossOriginIsolated),
    bytesDownloaded: bytes + fetched.bytes,
    bytesFromCache: fetched.fromCache,
    files: fetched.files,
    loadMs: performance.now() - t0,
    run,
    release: async () => {
      for (const sess of Object.values(sessions)) await sess.release?.();
    },
  };
}
