// vqedge-web: vqedge bundles in the browser on onnxruntime-web.
export { load, Tokenizer, MultiScaleTokenizer } from "./tokenizer.js";
export { registerKind, kindClass, kindNames } from "./kinds.js";
export { LookupFreeTokenizer } from "./lookup_free.js";
export { readTokens, writeTokens, bitsFor, crc32, TokenFileError } from "./tokens.js";
export { BundleError, fetchManifest, sha256 } from "./bundle.js";
export { toRGB, toInput, toImage, fitSquare, checkSide, defaultMaxSide, DEFAULT_MAX_SIDE } from "./preprocess.js";
export { webgpuSupport, threadLimits } from "./sessions.js";
export { PrecisionError, describeVerdict, CHECK_ARRAYS } from "./verify.js";
export { readNpz, parseNpy } from "./npz.js";
export { judgeTokens, judgePixels, rejudge, rulesDigest } from "./fidelity.js";
export { parsePlan, describePlan } from "./plan.js";
export * as rules from "./rules.gen.js";
