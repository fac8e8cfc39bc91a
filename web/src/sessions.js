// One bundle's onnxruntime-web sessions: every graph of one precision, created from checked
// bytes with the precision's weights files passed as external data. Runs wherever it is
// imported: in the package's Web Worker in a browser, in-process under Node.

import { BundleError, fetchManifest, fetchVariant } from "./bundle.js";

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
  return { adapter: true, f16: adapter.features.has("shader-f16") };
}

/** The WASM threads this context can use (cores; 1 unless cross-origin isolated), and the
 * default (onnxruntime-web's: half the cores, at most 4). */
export function threadLimits() {
  const cores = globalThis.navigator?.hardwareConcurrency ?? 1;
  if (!globalThis.crossOriginIsolated) return { max: 1, default: 1 };
  return { max: cores, default: Math.max(1, Math.min(4, Math.ceil(cores / 2))) };
}

/**
 * Resolve the backend and precision asked for into what will run, or say why not.
 * "auto" picks WebGPU where an adapter exists and WASM otherwise; fp16 runs on WebGPU only
 * with shader-f16.
 */
export async function chooseBackend(backend, precision, manifest) {
  if (backend !== "auto" && !BACKENDS.includes(backend)) {
    throw new Error(`backend must be "auto", "wasm" or "webgpu", got ${JSON.stringify(backend)}`);
  }
  if (precision !== undefined && !(precision in manifest.variants)) {
    throw new BundleError(`bundle ${manifest.name} has no ${precision} variant (it has ${Object.keys(manifest.variants).sort().join(", ")}); export it with --precisions ${precision}`);
  }
  const gpu = backend === "wasm" ? { adapter: false, f16: false } : await webgpuSupport();
  if (backend === "webgpu" && !gpu.adapter) throw new Error(`WebGPU was asked for, but ${gpu.reason}`);
  // auto: WebGPU where there is an adapter, and for fp16 only with shader-f16
  const gpuFits = gpu.adapter && (precision !== "fp16" || gpu.f16);
  const chosen = backend === "auto" ? (gpuFits ? "webgpu" : "wasm") : backend;
  if (chosen === "webgpu" && precision === "fp16" && !gpu.f16) {
    throw new Error("fp16 on WebGPU needs the adapter feature shader-f16, which this adapter lacks: use fp32");
  }
  return { backend: chosen, precision: precision ?? "fp32" };
}

/**
 * Download, check and open a bundle's sessions for one precision.
 *
 * @param {(backend: string) => Promise<object>} ortFor  the onnxruntime-web module to use for
 *   a backend (the worker imports the WASM or the WebGPU build)
 * @param {string} url  the bundle folder
 * @param {{backend?: string, precision?: string, threads?: number}} options
 * @returns {Promise<object>} {manifest, manifestSha256, backend, precision, threads,
 *   bytesDownloaded, loadMs, run(graph, feeds) -> outputs}
 */
export async function openBundle(ortFor, url, { backend = "auto", precision, threads } = {}) {
  const t0 = performance.now();
  const { root, manifest, manifestSha256, bytes } = await fetchManifest(url);
  const chosen = await chooseBackend(backend, precision, manifest);
  const [variant, ort] = await Promise.all([fetchVariant(root, manifest, chosen.precision, chosen.backend), ortFor(chosen.backend)]);
  const limits = threadLimits();
  const n = chosen.backend === "wasm" ? Math.max(1, Math.min(threads ?? limits.default, limits.max)) : 1;
  ort.env.wasm.numThreads = n;
  const options = {
    executionProviders: [chosen.backend],
    graphOptimizationLevel: "all",
    // node placement notes (shape ops kept on the CPU under WebGPU) are not the user's concern
    logSeverityLevel: 3,
    externalData: variant.weights,
  };
  const sessions = {};
  for (const [graph, bytesOfGraph] of Object.entries(variant.graphs)) {
    try {
      sessions[graph] = await ort.InferenceSession.create(bytesOfGraph, options);
    } catch (e) {
      throw new Error(`${graph} graph of bundle ${manifest.name} (${chosen.precision}) did not load on ${chosen.backend}: ${e.message}`);
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
    precision: chosen.precision,
    threads: n,
    crossOriginIsolated: Boolean(globalThis.crossOriginIsolated),
    bytesDownloaded: bytes + variant.bytes,
    loadMs: performance.now() - t0,
    run,
  };
}
