// numpy's .npz (a zip of .npy files, stored or deflated) read without a dependency: the zip's
// central directory, DecompressionStream("deflate-raw") (browsers and Node 20), and the .npy
// header. Enough for a bundle's check set: little-endian u1, i4, i8, f4 arrays in C order.

import { BundleError } from "./bundle.js";

const DTYPES = { "|u1": Uint8Array, "<u1": Uint8Array, "<i4": Int32Array, "<i8": BigInt64Array, "<f4": Float32Array };

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** One .npy file's bytes -> {dtype, shape, data}. */
export function parseNpy(bytes, name = "array") {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) throw new BundleError(`${name} is not a .npy array`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!(descr in DTYPES) || fortran !== "False" || shapeText === undefined) {
    throw new BundleError(`${name}: dtype ${descr}${fortran === "True" ? " in Fortran order" : ""} is not one this reader takes (${Object.keys(DTYPES).join(", ")}, C order)`);
  }
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const Type = DTYPES[descr];
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  if (bytes.length - offset < count * Type.BYTES_PER_ELEMENT) throw new BundleError(`${name} is truncated: shape ${JSON.stringify(shape)} needs ${count * Type.BYTES_PER_ELEMENT} bytes`);
  // a copy: aligned for the typed array whatever the offset in the zip
  const data = new Type(bytes.slice(offset, offset + count * Type.BYTES_PER_ELEMENT).buffer);
  return { dtype: descr, shape, data };
}

/**
 * An .npz file's bytes -> {name: {dtype, shape, data}} (the names without ".npy").
 * @param {Uint8Array} bytes @param {string} [what] what errors call the file
 */
export async function readNpz(bytes, what = "npz file") {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 0xffff); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new BundleError(`${what} is not a zip (.npz) file`);
  const count = view.getUint16(eocd + 10, true);
  let p = view.getUint32(eocd + 16, true);
  const out = {};
  for (let n = 0; n < count; n++) {
    if (p + 46 > bytes.length || view.getUint32(p, true) !== 0x02014b50) throw new BundleError(`${what}: its zip directory is corrupt`);
    const method = view.getUint16(p + 10, true);
    const size = view.getUint32(p + 20, true);
    const nameLen = view.getUint16(p + 28, true);
    const extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true);
    const local = view.getUint32(p + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(p + 46, p + 46 + nameLen));
    if (size === 0xffffffff || local === 0xffffffff) throw new BundleError(`${what}: ${name} is a zip64 entry, which this reader does not take`);
    const dataStart = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    const raw = bytes.subarray(dataStart, dataStart + size);
    let data;
    if (method === 0) data = raw;
    else if (method === 8) data = await inflate(raw);
    else throw new BundleError(`${what}: ${name} uses zip compression method ${method} (stored or deflate expected)`);
    out[name.replace(/\.npy$/, "")] = parseNpy(data, `${what}: ${name}`);
    p += 46 + nameLen + extraLen + commentLen;
  }
  return out;
}
