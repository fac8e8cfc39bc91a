// Builds dist/: the package (vqedge.js), its worker (vqedge.worker.js), and beside them the
// two onnxruntime-web builds the worker imports by backend, with their WASM binaries.
import { build } from "esbuild";
import { copyFileSync, existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { OUTPUT, REPO, generateRules } from "./gen-rules.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const ortDist = join(here, "node_modules", "onnxruntime-web", "dist");
// WASM: the plain threaded build; WebGPU: the WebGPU build (its own, larger binary)
const ORT_FILES = [
  "ort.wasm.bundle.min.mjs",
  "ort-wasm-simd-threaded.wasm",
  "ort.webgpu.bundle.min.mjs",
  "ort-wasm-simd-threaded.asyncify.wasm",
];

// the rules and limits shared with the Python runtime, from its source text (a copy of web/
// without the Python source beside it builds with the committed src/rules.gen.js)
if (existsSync(join(REPO, "runtime", "fidelity.py"))) writeFileSync(OUTPUT, generateRules());
else console.log(`no Python source at ${REPO}: building with the committed ${OUTPUT}`);
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });
await build({
  entryPoints: { vqedge: join(here, "src/index.js"), "vqedge.worker": join(here, "src/worker.js") },
  outdir: dist,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  external: ["onnxruntime-web"],
  logLevel: "warning",
});
for (const f of ORT_FILES) copyFileSync(join(ortDist, f), join(dist, f));
console.log(`built ${dist}`);
