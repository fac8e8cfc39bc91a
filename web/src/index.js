// vqedge-web: vqedge bundles in the browser on onnxruntime-web.
export { load, Tokenizer, MultiScaleTokenizer } from "./tokenizer.js";
export { registerKind, kindClass, kindNames } from "./kinds.js";
export { readTokens, writeTokens, bitsFor, crc32, TokenFileError } from "./tokens.js";
export { BundleError, fetchManifest, sha256 } from "./bundle.js";
export { toRGB, toInput, toImage, fitSquare, checkSide, defaultMaxSide, DEFAULT_MAX_SIDE } from "./preprocess.js";
export { webgpuSupport } from "./sessions.js";
