// A bundle folder over HTTP: its manifest checked as the Python runtime checks it
// (vqedge.runtime.manifest), then the graphs and weights files of one precision, each
// downloaded once and checked against its sha256 before a session sees it.

import { FORMAT_VERSION, MAX_MANIFEST_BYTES } from "./rules.gen.js";

export { FORMAT_VERSION };
export const FORMAT = "vqedge-bundle";
export const MANIFEST = "manifest.json";
export const PRECISIONS = ["fp32", "fp16", "int8"];
export const SINGLE_SCALE = "single-scale";
export const MULTI_SCALE = "multi-scale";
// where checked bundle files are kept between visits (Cache Storage), keyed by URL and sha256
export const CACHE_NAME = "vqedge-bundles-v1";

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

async function openCache() {
  try {
    return globalThis.caches ? await globalThis.caches.open(CACHE_NAME) : null;
  } catch {
    return null; // no Cache Storage here (Node, an opaque origin): download every time
  }
}

// the cache key: the file's URL with its expected sha256, so a new bundle never meets old bytes
const cacheKey = (url, sha) => `${url}${url.includes("?") ? "&" : "?"}vqedge-sha256=${sha}`;

async function fetchCounting(url, what, onBytes) {
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new BundleError(`${what} could not be fetched from ${url}: ${e.message}`);
  }
  if (!res.ok) throw new BundleError(`${what} is missing: ${url} answered ${res.status} ${res.statusText}`.trimEnd());
  if (!res.body || !onBytes) return new Uint8Array(await res.arrayBuffer());
  const chunks = [];
  let n = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    n += value.length;
    onBytes(n, Number(res.headers.get("content-length")) || undefined);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/**
 * One bundle file, checked against its sha256 in the manifest: from Cache Storage where a
 * copy is kept (checked on every read: a changed copy is dropped and downloaded again), else
 * downloaded and then kept.
 * @param {(p: {file: string, loaded: number, total?: number, fromCache: boolean}) => void} [onProgress]
 * @returns {Promise<{data: Uint8Array, fromCache: boolean}>}
 */
export async function fetchChecked(root, m, rel, onProgress) {
  checkRel(m, rel, root);
  const url = new URL(rel, root).href;
  const key = cacheKey(url, m.files[rel]);
  const cache = await openCache();
  const hit = await cache?.match(key);
  if (hit) {
    const data = new Uint8Array(await hit.arrayBuffer());
    if ((await sha256(data)) === m.files[rel]) {
      onProgress?.({ file: rel, loaded: data.length, total: data.length, fromCache: true });
      return { data, fromCache: true };
    }
    await cache.delete(key);
  }
  const data = await fetchCounting(url, `bundle file ${rel}`, onProgress && ((loaded, total) => onProgress({ file: rel, loaded, total, fromCache: false })));
  if ((await sha256(data)) !== m.files[rel]) throw new BundleError(`bundle file ${rel} does not match its sha256 in the manifest`);
  try {
    await cache?.put(key, new Response(data));
  } catch {
    // storage full or refused: the next visit downloads it again
  }
  return { data, fromCache: false };
}

/** Download one bundle file and check it against its sha256 in the manifest. */
export async function fetchVerified(root, m, rel) {
  return (await fetchChecked(root, m, rel)).data;
}

/**
 * The manifest of a bundle folder and its sha256 (what token files are tied to). The
 * manifest is fetched again on every load (it names the sha256 of everything else) unless
 * the network fails, when the last copy kept is used: the page works offline.
 * @param {string} url the bundle folder
 * @returns {Promise<{root: string, manifest: object, manifestSha256: string, bytes: number, fromCache: boolean}>}
 */
export async function fetchManifest(url) {
  const root = folderUrl(url);
  const murl = new URL(MANIFEST, root).href;
  const cache = await openCache();
  let data;
  let fromCache = false;
  try {
    data = await fetchCounting(murl, `not a vqedge bundle: ${root}${MANIFEST}`);
    await cache?.put(murl, new Response(data)).catch(() => {});
  } catch (e) {
    const kept = e instanceof BundleError && /could not be fetched/.test(e.message) ? await cache?.match(murl) : null;
    if (!kept) throw e;
    data = new Uint8Array(await kept.arrayBuffer());
    fromCache = true;
  }
  const manifest = parseManifest(data, `${root}${MANIFEST}`);
  if (cache && !fromCache) await dropStale(cache, root, manifest);
  return { root, manifest, manifestSha256: await sha256(data), bytes: fromCache ? 0 : data.length, fromCache };
}

/** Forget the kept files of this bundle folder that its current manifest no longer names
 * (an older export's), so the cache holds one copy of a bundle. */
async function dropStale(cache, root, manifest) {
  const current = new Set(Object.entries(manifest.files).map(([rel, sha]) => cacheKey(new URL(rel, root).href, sha)));
  try {
    for (const req of await cache.keys()) {
      if (req.url.startsWith(root) && req.url.includes("vqedge-sha256=") && !current.has(req.url)) await cache.delete(req);
    }
  } catch {
    // a cache that cannot be listed keeps its old entries: they are never read again
  }
}

/**
 * Which graph file each graph runs from under a precision plan, and the weights files it
 * reads: the encoder from the plan's encoder variant, the decoder from its decoder variant,
 * every other graph (the lookup, a multi-scale bundle's scales) from fp32. On WASM a
 * variant's CPU form (cpu_graphs) replaces its plain graph, as on the Python CPU provider.
 * A graph's own `weights` list (bundles that split their weights by graph) is preferred to
 * its variant's.
 * @returns {Record<string, {file: string, weights: string[], precision: string}>}
 */
export function planFiles(manifest, plan, backend) {
  const out = {};
  for (const g of Object.keys(manifest.variants.fp32?.graphs ?? {})) {
    const precision = g in plan ? plan[g] : "fp32";
    const v = manifest.variants[precision];
    const spec = (backend === "wasm" ? v.cpu_graphs?.[g] : undefined) ?? v.graphs[g];
    if (!spec) throw new BundleError(`bundle ${manifest.name}: the ${precision} variant has no ${g} graph`);
    out[g] = { file: spec.file, weights: spec.weights ?? v.weights ?? [], precision };
  }
  return out;
}

/**
 * Every file a plan's sessions need, each fetched once (from the cache where kept) and checked.
 * @returns {Promise<{graphs: Record<string, Uint8Array>, weights: {path: string, data: Uint8Array}[],
 *   bytes: number, fromCache: number, files: {file: string, bytes: number, fromCache: boolean}[]}>}
 */
export async function fetchPlan(root, manifest, plan, backend, onProgress) {
  for (const p of new Set(Object.values(plan))) {
    if (!manifest.variants[p]) {
      throw new BundleError(`bundle ${root} has no ${p} variant (it has ${Object.keys(manifest.variants).sort().join(", ")}); export it with --precisions ${p}`);
    }
  }
  const files = planFiles(manifest, plan, backend);
  const weightNames = [...new Set(Object.values(files).flatMap((f) => f.weights))];
  const unique = [...new Set([...Object.values(files).map((f) => f.file), ...weightNames])];
  const fetched = await Promise.all(unique.map((rel) => fetchChecked(root, manifest, rel, onProgress)));
  const byRel = Object.fromEntries(unique.map((rel, i) => [rel, fetched[i].data]));
  const graphs = Object.fromEntries(Object.entries(files).map(([g, f]) => [g, byRel[f.file]]));
  const listed = unique.map((rel, i) => ({ file: rel, bytes: fetched[i].data.length, fromCache: fetched[i].fromCache }));
  return {
    graphs,
    weightsOf: Object.fromEntries(Object.entries(files).map(([g, f]) => [g, f.weights.map((rel) => ({ path: rel, data: byRel[rel] }))])),
    bytes: listed.filter((f) => !f.fromCache).reduce((s, f) => s + f.bytes, 0),
    fromCache: listed.filter((f) => f.fromCache).reduce((s, f) => s + f.bytes, 0),
    files: listed,
  };
}
