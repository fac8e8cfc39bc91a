// The .vqt token file, byte for byte the Python runtime's (vqedge.runtime.tokens).
//
// offset  size  field
// 0       7     magic "VQETOK\0"
// 7       1     format version (uint8), 1
// 8       4     header length L (uint32 LE)
// 12      4     crc32 of the header bytes (uint32 LE)
// 16      L     header: UTF-8 JSON, written exactly as Python's json.dumps writes it
// 16+L    P     payload: every scale's indices, C order, bits = max(1, ceil(log2 K)) each,
//               most significant bit first, the last byte zero-padded

export const MAGIC = new Uint8Array([0x56, 0x51, 0x45, 0x54, 0x4f, 0x4b, 0x00]);
export const FORMAT_VERSION = 1;
const PREFIX_BYTES = 16;
// the same limits as the Python reader
export const MAX_HEADER_BYTES = 64 * 1024;
export const MAX_SCALES = 64;
export const MAX_TOKENS = 2 ** 24;
// indices are Int32Array here: codebooks up to 2^31 entries
const MAX_BITS = 31;

export class TokenFileError extends Error {
  constructor(message) {
    super(message);
    this.name = "TokenFileError";
  }
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** zlib.crc32 of a byte array. @param {Uint8Array} bytes @returns {number} */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Bits per token for a codebook of K entries: max(1, ceil(log2 K)). @param {number} k */
export function bitsFor(k) {
  if (!Number.isSafeInteger(k) || k < 1) {
    throw new Error(`codebook_size must be a positive integer, got ${k}`);
  }
  let bits = 0;
  while (2 ** bits < k) bits++;
  return Math.max(1, bits);
}

function pack(values, bits) {
  const out = new Uint8Array(Math.ceil((values.length * bits) / 8));
  let acc = 0; // pending bits, as a number (at most 7 + 31 bits: exact in a double)
  let nacc = 0;
  let o = 0;
  for (let i = 0; i < values.length; i++) {
    acc = acc * 2 ** bits + values[i];
    nacc += bits;
    while (nacc >= 8) {
      const div = 2 ** (nacc - 8);
      const byte = Math.floor(acc / div);
      out[o++] = byte;
      acc -= byte * div;
      nacc -= 8;
    }
  }
  if (nacc > 0) out[o] = acc * 2 ** (8 - nacc);
  return out;
}

function unpack(payload, n, bits) {
  const out = new Int32Array(n);
  let acc = 0;
  let nacc = 0;
  let p = 0;
  for (let i = 0; i < n; i++) {
    while (nacc < bits) {
      acc = acc * 256 + payload[p++];
      nacc += 8;
    }
    const div = 2 ** (nacc - bits);
    const v = Math.floor(acc / div);
    out[i] = v;
    acc -= v * div;
    nacc -= bits;
  }
  return out;
}

// Python's json.dumps layout (", " and ": "), for the header's own fields only
function pyJson(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return `[${v.map(pyJson).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v)
      .map(([k, x]) => `${JSON.stringify(k)}: ${pyJson(x)}`)
      .join(", ")}}`;
  }
  return JSON.stringify(v);
}

/**
 * @typedef {{data: Int32Array, shape: number[]}} TokenMap  one scale's indices, shape [B, h, w]
 * @typedef {{scales: TokenMap[], codebookSize: number, bits: number, bundleSha256: string,
 *   imageSize: number[] | null}} TokenFile
 */

function checkMap(m, k, name) {
  const { data, shape } = m ?? {};
  if (!Array.isArray(shape) || shape.length !== 3 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new Error(`${name} must be a non-empty [B, h, w] token map, got shape ${JSON.stringify(shape)}`);
  }
  if (!data || data.length !== shape[0] * shape[1] * shape[2]) {
    throw new Error(`${name} holds ${data?.length} indices, its shape ${JSON.stringify(shape)} needs ${shape[0] * shape[1] * shape[2]}`);
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (!Number.isInteger(v)) throw new Error(`${name} must hold integer token indices, got ${v}`);
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo < 0 || hi >= k) {
    throw new Error(`${name} holds indices in [${lo}, ${hi}], expected [0, ${k}) for K=${k}`);
  }
}

/**
 * The bytes of a .vqt file (what the Python runtime's save_tokens writes for the same maps).
 *
 * @param {TokenMap | TokenMap[]} maps  one map, or one per scale (coarsest first, one B)
 * @param {number} codebookSize  K
 * @param {string} bundleSha256  sha256 (64 hex digits) of the bundle's manifest.json
 * @param {{imageSize?: number[] | null, scales?: number[]}} [options]  imageSize [H, W];
 *   scales: the expected side of each map (checked, not stored)
 * @returns {Uint8Array}
 */
export function writeTokens(maps, codebookSize, bundleSha256, { imageSize = null, scales } = {}) {
  const bits = bitsFor(codebookSize);
  if (bits > MAX_BITS) throw new Error(`codebook_size ${codebookSize} needs ${bits} bits; this package handles up to ${MAX_BITS}`);
  const list = Array.isArray(maps) ? maps : [maps];
  if (list.length === 0) throw new Error("maps is an empty list of scales; expected at least one token map");
  list.forEach((m, i) => checkMap(m, codebookSize, `scale ${i}`));
  if (new Set(list.map((m) => m.shape[0])).size !== 1) {
    throw new Error(`scales differ in batch size: ${JSON.stringify(list.map((m) => m.shape))}`);
  }
  if (scales && (scales.length !== list.length || list.some((m, i) => m.shape[1] !== scales[i] || m.shape[2] !== scales[i]))) {
    throw new Error(`maps ${JSON.stringify(list.map((m) => m.shape))} do not match scales ${JSON.stringify(scales)}`);
  }
  const sha = String(bundleSha256).toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(sha)) throw new Error(`bundle_sha256 must be 64 hex digits, got ${JSON.stringify(bundleSha256)}`);
  if (imageSize !== null && !(imageSize.length === 2 && imageSize.every((d) => Number.isInteger(d) && d >= 1))) {
    throw new Error(`image_size must be (H, W) of positive ints, got ${JSON.stringify(imageSize)}`);
  }
  const n = list.reduce((s, m) => s + m.data.length, 0);
  const flat = new Int32Array(n);
  let o = 0;
  for (const m of list) {
    flat.set(m.data, o);
    o += m.data.length;
  }
  const payload = pack(flat, bits);
  const header = new TextEncoder().encode(
    pyJson({
      format_version: FORMAT_VERSION,
      codebook_size: codebookSize,
      bits,
      bundle_sha256: sha,
      image_size: imageSize,
      shapes: list.map((m) => m.shape),
      payload_bytes: payload.length,
      payload_crc32: crc32(payload),
    }),
  );
  const out = new Uint8Array(PREFIX_BYTES + header.length + payload.length);
  out.set(MAGIC, 0);
  const dv = new DataView(out.buffer);
  dv.setUint8(7, FORMAT_VERSION);
  dv.setUint32(8, header.length, true);
  dv.setUint32(12, crc32(header), true);
  out.set(header, PREFIX_BYTES);
  out.set(payload, PREFIX_BYTES + header.length);
  return out;
}

const isPosInt = (d) => Number.isInteger(d) && d > 0;
const short = (v) => {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 40 ? `${s.slice(0, 37)}...` : s;
};

function int(h, key, lo = 0) {
  const v = h[key];
  if (!Number.isInteger(v)) throw new Error(`${key} must be an integer, got ${short(v)}`);
  if (v < lo) throw new Error(`${key} must be >= ${lo}, got ${v}`);
  return v;
}

function parseHeader(raw) {
  const h = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  if (h === null || typeof h !== "object" || Array.isArray(h)) {
    throw new Error(`expected a JSON object, got ${Array.isArray(h) ? "list" : typeof h}`);
  }
  const k = int(h, "codebook_size", 1);
  const bits = int(h, "bits", 1);
  if (bits !== bitsFor(k)) throw new Error(`bits=${bits} does not match codebook_size=${k} (expects ${bitsFor(k)})`);
  if (bits > MAX_BITS) throw new Error(`codebook_size=${k} needs ${bits} bits; this package reads up to ${MAX_BITS}`);
  const shapes = h.shapes;
  if (!Array.isArray(shapes) || shapes.length < 1 || shapes.length > MAX_SCALES) {
    throw new Error(`shapes must be a list of 1 to ${MAX_SCALES} [B, h, w], got ${short(shapes)}`);
  }
  for (const s of shapes) {
    if (!(Array.isArray(s) && s.length === 3 && s.every(isPosInt))) {
      throw new Error(`each shape must be [B, h, w] of positive ints, got ${short(s)}`);
    }
  }
  if (new Set(shapes.map((s) => s[0])).size !== 1) throw new Error(`scales differ in batch size: ${JSON.stringify(shapes)}`);
  const sha = h.bundle_sha256;
  if (typeof sha !== "string" || !/^[0-9a-fA-F]{64}$/.test(sha)) {
    throw new Error(`bundle_sha256 must be 64 hex digits, got ${short(sha)}`);
  }
  const size = h.image_size;
  if (size !== null && size !== undefined && !(Array.isArray(size) && size.length === 2 && size.every(isPosInt))) {
    throw new Error(`image_size must be null or [H, W] of positive ints, got ${short(size)}`);
  }
  const n = shapes.reduce((s, d) => s + d[0] * d[1] * d[2], 0);
  const nbytes = int(h, "payload_bytes");
  if (nbytes !== Math.ceil((n * bits) / 8)) {
    throw new Error(`payload_bytes=${nbytes}, but shapes ${JSON.stringify(shapes)} at ${bits} bits per token need ${Math.ceil((n * bits) / 8)} B`);
  }
  return { k, bits, n, shapes, sha: sha.toLowerCase(), imageSize: size ?? null, payloadBytes: nbytes, payloadCrc32: int(h, "payload_crc32") };
}

/**
 * Read a .vqt file, checking its header (and the caller's limits) before its payload.
 *
 * @param {ArrayBuffer | Uint8Array} buffer
 * @param {{name?: string, bundleSha256?: string, force?: boolean, codebookSize?: number,
 *   maxTokens?: number | null, maxMapSide?: number, maxImageSide?: number, scales?: number[]}}
 *   [options]  as the Python load_tokens' arguments; name is what errors call the file
 * @returns {TokenFile}
 * @throws {TokenFileError} a foreign, truncated, corrupt or newer file, or one that does not
 *   fit the bundle or the limits; the message names the file and the field
 */
export function readTokens(buffer, options = {}) {
  const { name = "token file", bundleSha256, force = false, codebookSize, maxTokens = MAX_TOKENS, maxMapSide, maxImageSide, scales } = options;
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const fail = (msg) => new TokenFileError(`${name}: ${msg}`);
  const magicOk = (len) => MAGIC.slice(0, len).every((b, i) => bytes[i] === b);
  if (bytes.length < PREFIX_BYTES) {
    if (magicOk(Math.min(bytes.length, MAGIC.length))) throw fail(`truncated token file (${bytes.length} bytes)`);
    throw fail("foreign file, not a vqedge token file (bad magic)");
  }
  if (!magicOk(MAGIC.length)) throw fail("foreign file, not a vqedge token file (bad magic)");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint8(7);
  const hlen = dv.getUint32(8, true);
  const hcrc = dv.getUint32(12, true);
  if (version < 1) throw fail(`corrupt token file (format version ${version})`);
  if (version > FORMAT_VERSION) {
    throw fail(`token format version ${version}, this runtime reads up to ${FORMAT_VERSION}; upgrade vqedge`);
  }
  if (hlen > MAX_HEADER_BYTES) throw fail(`corrupt header (header length ${hlen} B, the limit is ${MAX_HEADER_BYTES} B)`);
  if (bytes.length < PREFIX_BYTES + hlen) throw fail(`truncated header (${bytes.length - PREFIX_BYTES} of ${hlen} B)`);
  const raw = bytes.subarray(PREFIX_BYTES, PREFIX_BYTES + hlen);
  if (crc32(raw) !== hcrc) throw fail("corrupt header (crc32 mismatch)");
  let h;
  try {
    h = parseHeader(raw);
  } catch (e) {
    throw fail(`corrupt header: ${e.message}`);
  }
  const listed = JSON.stringify(h.shapes);
  if (codebookSize !== undefined && h.k !== codebookSize) {
    throw fail(`codebook_size K=${h.k} in the file, this bundle has K=${codebookSize}`);
  }
  if (scales && (h.shapes.length !== scales.length || h.shapes.some((s, i) => s[1] !== scales[i] || s[2] !== scales[i]))) {
    throw fail(`shapes ${listed} do not match this bundle's scales ${JSON.stringify(scales)}`);
  }
  if (maxMapSide !== undefined && Math.max(...h.shapes.map((s) => Math.max(s[1], s[2]))) > maxMapSide) {
    throw fail(`shapes ${listed}: a token map side is over the limit of ${maxMapSide}`);
  }
  if (maxTokens !== null && h.n > maxTokens) throw fail(`shapes ${listed} hold ${h.n} tokens, over the limit of ${maxTokens}`);
  if (maxImageSide !== undefined && h.imageSize && Math.max(...h.imageSize) > maxImageSide) {
    throw fail(`image_size ${JSON.stringify(h.imageSize)} is over the limit of ${maxImageSide} pixels`);
  }
  const payloadSize = bytes.length - PREFIX_BYTES - hlen;
  if (payloadSize !== h.payloadBytes) {
    const what = payloadSize < h.payloadBytes ? "truncated payload" : "trailing bytes after payload";
    throw fail(`${what} (${payloadSize} B, expected ${h.payloadBytes} B)`);
  }
  if (bundleSha256 !== undefined && bundleSha256.toLowerCase() !== h.sha) {
    const msg = `tokens made by bundle ${h.sha}, not by this bundle ${bundleSha256.toLowerCase()}`;
    if (!force) throw fail(`${msg}; pass force: true to load anyway`);
    console.warn(`${name}: ${msg}; loading anyway (force: true)`);
  }
  const payload = bytes.subarray(PREFIX_BYTES + hlen);
  if (crc32(payload) !== h.payloadCrc32) throw fail("corrupt payload (crc32 mismatch)");
  const flat = unpack(payload, h.n, h.bits);
  let top = 0;
  for (let i = 0; i < flat.length; i++) if (flat[i] > top) top = flat[i];
  if (top >= h.k) throw fail(`corrupt payload (index ${top} >= K=${h.k})`);
  let o = 0;
  const maps = h.shapes.map((shape) => {
    const len = shape[0] * shape[1] * shape[2];
    const data = flat.slice(o, o + len);
    o += len;
    return { data, shape: [...shape] };
  });
  return { scales: maps, codebookSize: h.k, bits: h.bits, bundleSha256: h.sha, imageSize: h.imageSize };
}
