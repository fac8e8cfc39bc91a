// A bundle folder over HTTP: its manifest checked as the Python runtime checks it
// (vqedge.runtime.manifest), then the graphs and weights files of one precision, each
// downloaded once and checked against its sha256 before a session sees it.

export const FORMAT = "vqedge-bundle";
export const FORMAT_VERSION = 2;
export const MANIFEST = "manifest.json";
export const PRECISIONS = ["fp32", "fp16", "int8"];
export const SINGLE_SCALE = "single-scale";
export const MULTI_SCALE = "multi-scale";
const MAX_MANIFEST_BYTES = 16 << 20;

export class BundleError extends Error {
  constructor(message) {
    super(message);
    this.name = "BundleError";
  }
}

/** Hex sha256 of some bytes (WebCrypto). @param {ArrayBuffer | Uint8Array} bytes */
export async function sha256(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The folder URL with a trailing slash, resolved against the page. */
export function folderUrl(url) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const u = new URL(url, base);
  if (!u.pathname.endsWith("/")) u.pathname += "/";
  return u.href;
}

async function fetchBytes(url, what) {
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new BundleError(`${what} could not be fetched from ${url}: ${e.message}`);
  }
  if (!res.ok) throw new BundleError(`${what} is missing: ${url} answered ${res.status} ${res.statusText}`.trimEnd());
  return new Uint8Array(await res.arrayBuffer());
}

/**
 * Check the bytes of a manifest (parse_manifest's checks and messages).
 * @param {Uint8Array} data @param {string} path what errors call it
 * @returns {object}
 */
export function parseManifest(data, path) {
  if (data.length > MAX_MANIFEST_BYTES) {
    throw new BundleError(`bundle manifest ${path} is ${data.length} bytes; a manifest is at most ${MAX_MANIFEST_BYTES} bytes`);
  }
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(data);
  } catch {
    throw new BundleError(`bundle manifest ${path} is not UTF-8 text: expected JSON`);
  }
  let m;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new BundleError(`bundle manifest ${path} is not valid JSON: ${e.message}`);
  }
  if (m === null || typeof m !== "object" || Array.isArray(m) || m.format !== FORMAT) {
    throw new BundleError(`${path} is not a ${FORMAT} manifest (its 'format' must be '${FORMAT}')`);
  }
  const root = path.replace(/\/?manifest\.json$/, "");
  if (m.format_version === 1) {
    throw new BundleError(`bundle ${root} is format 1 (one file per graph with its own weights); this vqedge reads format 2: re-export it with \`vqedge export\``);
  }
  if (m.format_version !== FORMAT_VERSION) {
    throw new BundleError(`bundle ${root} has format version ${JSON.stringify(m.format_version)}; this vqedge reads format ${FORMAT_VERSION}: upgrade vqedge (newer bundles) or re-export it with \`vqedge export\``);
  }
  for (const key of ["kind", "config", "variants"]) {
    if (!(key in m)) throw new BundleError(`bundle manifest ${path} has no '${key}' field`);
  }
  // which kinds run is the table's to say (kinds.js, read by load()); here only the type
  if (typeof m.kind !== "string") throw new BundleError(`bundle manifest ${path}: 'kind' must be a string`);
  if (typeof m.config !== "object" || m.config === null) throw new BundleError(`bundle manifest ${path}: 'config' must be an object`);
  if (typeof m.variants !== "object" || m.variants === null || Object.keys(m.variants).length === 0) {
    throw new BundleError(`bundle manifest ${path}: 'variants' must be a non-empty object`);
  }
  for (const [name, v] of Object.entries(m.variants)) {
    if (!PRECISIONS.includes(name)) throw new BundleError(`bundle manifest ${path}: variant '${name}' is not one of ${PRECISIONS.join(", ")}`);
    if (typeof v?.graphs !== "object") throw new BundleError(`bundle manifest ${path}: variant '${name}' has no 'graphs' object`);
  }
  if (typeof m.files !== "object" || m.files === null) throw new BundleError(`bundle manifest ${path}: 'files' must be an object`);
  return m;
}

function checkRel(m, rel, root) {
  if (typeof m.files[rel] !== "string") throw new BundleError(`bundle file ${rel} is not listed in ${root}${MANIFEST}`);
  if (rel.startsWith("/") || rel.split("/").includes("..") || /^[a-z]+:/i.test(rel)) {
    throw new BundleError(`bundle file ${rel} in ${root}${MANIFEST} points outside the bundle`);
  }
}

/** Download one bundle file and check it against its sha256 in the manifest. */
export async function fetchVerified(root, m, rel) {
  checkRel(m, rel, root);
  const data = await fetchBytes(new URL(rel, root).href, `bundle file ${rel}`);
  if ((await sha256(data)) !== m.files[rel]) throw new BundleError(`bundle file ${rel} does not match its sha256 in the manifest`);
  return data;
}

/**
 * The manifest of a bundle folder and its sha256 (what token files are tied to).
 * @param {string} url the bundle folder
 * @returns {Promise<{root: string, manifest: object, manifestSha256: string, bytes: number}>}
 */
export async function fetchManifest(url) {
  const root = folderUrl(url);
  const data = await fetchBytes(new URL(MANIFEST, root).href, `not a vqedge bundle: ${root}${MANIFEST}`);
  const manifest = parseManifest(data, `${root}${MANIFEST}`);
  return { root, manifest, manifestSha256: await sha256(data), bytes: data.length };
}

/**
 * Which graph file each graph of a precision runs from: the CPU form (cpu_graphs) on WASM,
 * as the Python runtime's CPU provider, the plain form on WebGPU.
 */
export function graphFiles(manifest, precision, backend) {
  const v = manifest.variants[precision];
  const files = {};
  for (const [g, spec] of Object.entries(v.graphs)) files[g] = spec.file;
  if (backend === "wasm") for (const [g, spec] of Object.entries(v.cpu_graphs ?? {})) files[g] = spec.file;
  return files;
}

/**
 * Every file one precision's sessions need, downloaded once and checked.
 * @returns {Promise<{graphs: Record<string, Uint8Array>, weights: {path: string, data: Uint8Array}[], bytes: number}>}
 */
export async function fetchVariant(root, manifest, precision, backend) {
  const v = manifest.variants[precision];
  if (!v) {
    throw new BundleError(`bundle ${root} has no ${precision} variant (it has ${Object.keys(manifest.variants).sort().join(", ")}); export it with --precisions ${precision}`);
  }
  const files = graphFiles(manifest, precision, backend);
  const unique = [...new Set([...Object.values(files), ...(v.weights ?? [])])];
  const fetched = await Promise.all(unique.map((rel) => fetchVerified(root, manifest, rel)));
  const byRel = Object.fromEntries(unique.map((rel, i) => [rel, fetched[i]]));
  const graphs = Object.fromEntries(Object.entries(files).map(([g, rel]) => [g, byRel[rel]]));
  const weights = (v.weights ?? []).map((rel) => ({ path: rel, data: byRel[rel] }));
  return { graphs, weights, bytes: fetched.reduce((s, d) => s + d.length, 0) };
}
