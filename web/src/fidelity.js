// The fidelity rules of vqedge.runtime.fidelity in the browser: the constants and the
// wording come from src/rules.gen.js (generated from the Python source), so a verdict here
// reads as the Python runtime's does for the same figures.

import {
  PIXELS_MIN_PSNR_DB,
  PSNR_CAP_DB,
  RULES_JSON,
  STAGE_TIER,
  TOKENS_MIN_AGREEMENT,
  pixelsReason,
  tokensReason,
} from "./rules.gen.js";

export const STAGES = Object.keys(STAGE_TIER);
export const TOKENS = "tokens";
export const PIXELS = "pixels";

/**
 * The tokens tier: agreement (share of positions equal to fp32's) at least TOKENS_MIN_AGREEMENT.
 * @returns {{stage: string, precision: string, tier: string, figure: number, bar: number,
 *   holds: boolean, reason: string, per_scale: number[]}}
 */
export function judgeTokens(stage, precision, agreement, perScale = []) {
  const holds = agreement >= TOKENS_MIN_AGREEMENT;
  const reason = holds ? "" : tokensReason(stage, precision, agreement, perScale);
  return { stage, precision, tier: TOKENS, figure: agreement, bar: TOKENS_MIN_AGREEMENT, holds, reason, per_scale: [...perScale] };
}

/** The pixels tier: PSNR (capped) against fp32's decode at least PIXELS_MIN_PSNR_DB. */
export function judgePixels(stage, precision, psnrDb) {
  const figure = Math.min(psnrDb, PSNR_CAP_DB);
  const holds = figure >= PIXELS_MIN_PSNR_DB;
  const reason = holds ? "" : pixelsReason(stage, precision, figure);
  return { stage, precision, tier: PIXELS, figure, bar: PIXELS_MIN_PSNR_DB, holds, reason, per_scale: [] };
}

/**
 * One stage judged again from its figure alone (a stored verdict's `holds` and `reason` are
 * never trusted): the tier is the stage's, whatever the record says.
 */
export function rejudgeStage(s) {
  if (!STAGES.includes(s?.stage) || typeof s.precision !== "string" || !Number.isFinite(s.figure)) {
    throw new Error(`a stored verdict stage must have a stage (${STAGES.join(", ")}), a precision and a finite figure`);
  }
  const perScale = Array.isArray(s.per_scale) ? s.per_scale.filter(Number.isFinite) : [];
  return STAGE_TIER[s.stage] === TOKENS ? judgeTokens(s.stage, s.precision, s.figure, perScale) : judgePixels(s.stage, s.precision, s.figure);
}

/** A verdict {stages, ...} judged again from its figures: holds when every stage holds. */
export function rejudge(verdict) {
  const stages = verdict.stages.map(rejudgeStage);
  return { ...verdict, stages, holds: stages.every((s) => s.holds), reason: stages.map((s) => s.reason).filter(Boolean).join("; ") };
}

let digest = null;
/** rules_digest(): a verdict made under other rules is not reused. */
export async function rulesDigest() {
  if (digest === null) {
    const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(RULES_JSON));
    digest = Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("").slice(0, 16);
  }
  return digest;
}

/** PSNR (dB) of two uint8 images of the same size (vqedge.runtime.metrics.psnr); Infinity when equal. */
export function psnr(a, b) {
  if (a.length !== b.length) throw new Error(`psnr needs equal shapes, got ${a.length} and ${b.length} values`);
  let se = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    se += d * d;
  }
  return se === 0 ? Infinity : 10 * Math.log10((255 * 255) / (se / a.length));
}
