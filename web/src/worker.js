// The package's Web Worker: downloads and checks the bundle and runs its sessions, so that
// neither the download's hashing nor inference blocks the page.

import { openBundle } from "./sessions.js";

// each backend's onnxruntime-web build sits beside this file (copied there by the build)
const ORT_BUILDS = { wasm: "./ort.wasm.bundle.min.mjs", webgpu: "./ort.webgpu.bundle.min.mjs" };

let core = null;

async function load(id, { url, backend, precision, threads }) {
  const ortFor = (chosen) => import(new URL(ORT_BUILDS[chosen], import.meta.url).href);
  const onProgress = (progress) => self.postMessage({ id, progress });
  await core?.release();
  core = null;
  core = await openBundle(ortFor, url, { backend, precision, threads, onProgress });
  const { run, release, ...facts } = core;
  return facts;
}

function transferables(outputs) {
  return Object.values(outputs).map((t) => t.data.buffer);
}

self.onmessage = async ({ data: { id, op, args } }) => {
  try {
    if (op === "load") {
      self.postMessage({ id, result: await load(id, args) });
    } else if (op === "run") {
      if (!core) throw new Error("no bundle is loaded");
      const t0 = performance.now();
      const out = await core.run(args.graph, args.feeds);
      self.postMessage({ id, result: out, ms: performance.now() - t0 }, transferables(out));
    } else {
      throw new Error(`unknown operation ${op}`);
    }
  } catch (e) {
    self.postMessage({ id, error: { name: e.name, message: e.message } });
  }
};
