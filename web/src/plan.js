// The precision plan of vqedge.runtime.plan: a precision per stage (encoder, decoder), given
// as one string (every stage), {encoder, decoder} (a stage left out runs fp32) or "auto". The
// nearest-code lookup (and a multi-scale bundle's scales graph) always runs fp32.

import { STAGES } from "./fidelity.js";

export const AUTO = "auto";
export const RUN_PRECISIONS = ["fp32", "fp16", "int8"];

/**
 * What load({precision}) takes -> {encoder, decoder}, a stage possibly still "auto".
 * @param {string | {encoder?: string, decoder?: string}} precision
 * @returns {{encoder: string, decoder: string}}
 */
export function parsePlan(precision = "fp32") {
  let plan;
  if (typeof precision === "string") {
    plan = Object.fromEntries(STAGES.map((s) => [s, precision]));
  } else if (precision && typeof precision === "object" && !Array.isArray(precision)) {
    const unknown = Object.keys(precision).filter((k) => !STAGES.includes(k)).sort();
    if (unknown.length) throw new Error(`precision plan names unknown stage(s) ${JSON.stringify(unknown)}: the stages are ${STAGES.join(", ")}`);
    plan = Object.fromEntries(STAGES.map((s) => [s, precision[s] ?? "fp32"]));
  } else {
    throw new Error(`precision must be a string (every stage), an object {encoder, decoder} or "auto", got ${JSON.stringify(precision)}`);
  }
  for (const s of STAGES) {
    if (![...RUN_PRECISIONS, AUTO].includes(plan[s])) {
      throw new Error(`precision for the ${s} must be one of ${[...RUN_PRECISIONS, AUTO].join(", ")}, got ${JSON.stringify(plan[s])}`);
    }
  }
  return plan;
}

/** "fp32", or "encoder fp32, decoder int8" (PrecisionPlan.describe). */
export function describePlan(plan) {
  const values = new Set(STAGES.map((s) => plan[s]));
  return values.size === 1 ? [...values][0] : STAGES.map((s) => `${s} ${plan[s]}`).join(", ");
}

/**
 * "auto" stages -> the precision to try first: the fastest the bundle has on this backend
 * (int8 on WASM, fp16 on WebGPU with shader-f16), else fp32. load() verifies it and falls
 * back to fp32 for a stage that does not hold.
 */
export function autoCandidates(plan, manifest, backend, f16) {
  const order = backend === "webgpu" ? (f16 ? ["fp16", "fp32"] : ["fp32"]) : ["int8", "fp32"];
  const best = order.find((p) => p in manifest.variants) ?? "fp32";
  return Object.fromEntries(STAGES.map((s) => [s, plan[s] === AUTO ? best : plan[s]]));
}
