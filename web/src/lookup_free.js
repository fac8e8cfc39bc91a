// The lookup-free kind (Open-MAGVIT2's LFQ, FSQ): one token map per image, as the single-scale
// kind, whose index is its code: the bundle's graphs compute the code from the index, so the
// page needs no codebook. LFQ with factorized bits also splits a map into the two sub-token
// maps Open-MAGVIT2's AR model predicts (low bits first), as the Python runtime does.

import { registerKind } from "./kinds.js";
import { Tokenizer } from "./tokenizer.js";

export class LookupFreeTokenizer extends Tokenizer {
  /** The manifest's quantizer: {quantizer: "lfq", bits, factorized_bits} or {quantizer: "fsq", levels}. */
  get quantizer() {
    return this.manifest.quantizer;
  }

  /** [a, b]: the bits of the two sub-tokens, low first. @returns {[number, number]} */
  factorBits() {
    const fb = this.quantizer?.factorized_bits ?? [];
    if (fb.length !== 2) {
      throw new Error(`this bundle records no token factorization (its quantizer is ${this.quantizer?.quantizer})`);
    }
    return fb;
  }

  /** Token map -> {low, high} sub-token maps (Int32Array each). @param {Int32Array} indices */
  factorize(indices) {
    const [a] = this.factorBits();
    const mask = (1 << a) - 1;
    return { low: indices.map((v) => v & mask), high: indices.map((v) => v >>> a) };
  }

  /** {low, high} -> the token map (factorize's inverse). */
  unfactorize(low, high) {
    const [a, b] = this.factorBits();
    if (low.length !== high.length) throw new Error(`sub-token maps differ in length: ${low.length} and ${high.length}`);
    const out = new Int32Array(low.length);
    for (let i = 0; i < low.length; i++) {
      if (low[i] < 0 || low[i] >= 1 << a || high[i] < 0 || high[i] >= 1 << b) {
        throw new Error(`sub-token ${i} out of range: low in [0, ${1 << a}), high in [0, ${1 << b})`);
      }
      out[i] = low[i] | (high[i] << a);
    }
    return out;
  }
}

registerKind("lookup-free", LookupFreeTokenizer);
