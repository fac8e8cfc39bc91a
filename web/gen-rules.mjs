// Generates src/rules.gen.js from the Python runtime's source text (no Python needed): the
// fidelity rules (runtime/fidelity.py) with the wording of their verdicts, and the limits the
// package shares with the runtime. `node gen-rules.mjs` writes it; `node gen-rules.mjs --check`
// fails when the committed file is stale (the build runs the first, the tests the second).
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = join(here, "..");
export const OUTPUT = join(here, "src", "rules.gen.js");

// [python file, constant names] read from the source text
const CONSTANTS = [
  ["runtime/fidelity.py", ["TOKENS_MIN_AGREEMENT", "PIXELS_MIN_PSNR_DB", "PIXELS_ENCODER_MAX_DROP_DB", "PSNR_CAP_DB"]],
  ["runtime/limits.py", ["DEFAULT_MAX_SIDE", "ATTENTION_MAX_BYTES"]],
  ["runtime/manifest.py", ["MAX_MANIFEST_BYTES", "FORMAT_VERSION"]],
  ["runtime/tokenizer.py", ["LOOKUP_LATENTS"]],
];

class GenError extends Error {}

/** A module-level `NAME = <number | a << b | a * b>` -> {value, text} (text as Python writes it). */
function readConstant(source, file, name) {
  const m = source.match(new RegExp(`^${name} = ([^#\\n]+?)\\s*(#.*)?$`, "m"));
  if (!m) throw new GenError(`${file}: no module-level ${name} = <number>; update web/gen-rules.mjs`);
  const expr = m[1];
  const num = "(\\d+(?:\\.\\d*)?)";
  let r = expr.match(new RegExp(`^${num}$`));
  if (r) return { value: Number(r[1]), text: r[1] };
  r = expr.match(new RegExp(`^${num} (<<|\\*) ${num}$`));
  if (r) {
    const value = r[2] === "<<" ? Number(r[1]) * 2 ** Number(r[3]) : Number(r[1]) * Number(r[3]);
    return { value, text: String(value) };
  }
  throw new GenError(`${file}: ${name} = ${expr} is not a number this generator reads; update web/gen-rules.mjs`);
}

/** STAGE_TIER = {ENCODER_STAGE: TOKENS, ...} with the names' string values resolved. */
function readStageTier(source) {
  const str = (name) => {
    const m = source.match(new RegExp(`^${name} = "([^"]+)"$`, "m"));
    if (!m) throw new GenError(`runtime/fidelity.py: no ${name} = "..."; update web/gen-rules.mjs`);
    return m[1];
  };
  const m = source.match(/^STAGE_TIER = \{([^}]+)\}$/m);
  if (!m) throw new GenError("runtime/fidelity.py: no STAGE_TIER = {...}; update web/gen-rules.mjs");
  return Object.fromEntries(m[1].split(",").map((pair) => pair.split(":").map((s) => str(s.trim()))));
}

/** The body of `def name(` up to the next top-level def. */
function functionBody(source, name) {
  const start = source.indexOf(`\ndef ${name}(`);
  if (start < 0) throw new GenError(`runtime/fidelity.py: no def ${name}; update web/gen-rules.mjs`);
  const end = source.indexOf("\ndef ", start + 1);
  return source.slice(start, end < 0 ? undefined : end);
}

/** A Python f-string's text -> a JS template literal's, formats through fmt(value, spec). */
function templateOf(fstring, names) {
  return fstring.replace(/`/g, "\\`").replace(/\{([A-Za-z_][A-Za-z_0-9]*)(?::([^}]*))?\}/g, (_, name, spec) => {
    if (!names.includes(name)) throw new GenError(`runtime/fidelity.py: the message names {${name}}, which web/gen-rules.mjs does not know`);
    return "${fmt(" + name + ", " + JSON.stringify(spec ?? "") + ")}";
  });
}

/** `reason = ( f"..." f"..." )` in a function -> the concatenated f-string text. */
function reasonFString(body, fn) {
  const m = body.match(/reason = \(\n((?:\s+f?"[^"\n]*"\n)+)\s+\)/);
  if (!m) throw new GenError(`runtime/fidelity.py: ${fn}'s reason = (f"..." ...) not found; update web/gen-rules.mjs`);
  return [...m[1].matchAll(/f?"([^"\n]*)"/g)].map((x) => x[1]).join("");
}

function scalesPart(body) {
  const m = body.match(/scales = "([^"]*)" \+ "([^"]*)"\.join\(f"\{a(?::([^}]*))?\}" for a in per_scale\) \+ "([^"]*)"/);
  if (!m) throw new GenError("runtime/fidelity.py: judge_tokens's per-scale wording not found; update web/gen-rules.mjs");
  return { pre: m[1], sep: m[2], spec: m[3] ?? "", post: m[4] };
}

/** Python's json.dumps of rules(), sort_keys=True: what rules_digest hashes. */
function rulesJson(values, stageTier) {
  const floatText = (v) => (Number.isInteger(v) ? `${v}.0` : String(v));
  const rules = {
    PIXELS_ENCODER_MAX_DROP_DB: floatText(values.PIXELS_ENCODER_MAX_DROP_DB),
    PIXELS_MIN_PSNR_DB: floatText(values.PIXELS_MIN_PSNR_DB),
    PSNR_CAP_DB: floatText(values.PSNR_CAP_DB),
    STAGE_TIER: "[" + Object.entries(stageTier).map(([s, t]) => JSON.stringify(`${s}:${t}`)).join(", ") + "]",
    TOKENS_MIN_AGREEMENT: floatText(values.TOKENS_MIN_AGREEMENT),
  };
  return "{" + Object.entries(rules).map(([k, v]) => `${JSON.stringify(k)}: ${v}`).join(", ") + "}";
}

/** The text of src/rules.gen.js, from the Python source under `repo`. */
export function generateRules(repo = REPO) {
  const values = {};
  const sources = {};
  for (const [file, names] of CONSTANTS) {
    sources[file] = readFileSync(join(repo, file), "utf8");
    for (const name of names) values[name] = readConstant(sources[file], file, name).value;
  }
  const fid = sources["runtime/fidelity.py"];
  const stageTier = readStageTier(fid);
  const constNames = Object.keys(values);
  const tokensBody = functionBody(fid, "judge_tokens");
  const tokens = templateOf(reasonFString(tokensBody, "judge_tokens"), ["precision", "stage", "agreement", "scales", ...constNames]);
  const sc = scalesPart(tokensBody);
  const pixels = templateOf(reasonFString(functionBody(fid, "judge_pixels"), "judge_pixels"), ["precision", "stage", "figure", ...constNames]);
  const lines = [
    "// GENERATED by web/gen-rules.mjs from runtime/fidelity.py, runtime/limits.py,",
    "// runtime/manifest.py and runtime/tokenizer.py: do not edit (npm run build regenerates it).",
    "/* eslint-disable */",
    ...Object.entries(values).map(([k, v]) => `export const ${k} = ${v};`),
    `export const STAGE_TIER = ${JSON.stringify(stageTier)};`,
    `// json.dumps(fidelity.rules(), sort_keys=True): sha256 of it, first 16 hex digits, is rules_digest()`,
    `export const RULES_JSON = ${JSON.stringify(rulesJson(values, stageTier))};`,
    "",
    "/** Python's format(value, spec) for the specs the messages use ('', .Nf, .N%). */",
    "export function fmt(value, spec) {",
    "  const m = /^\\.(\\d+)([f%])$/.exec(spec);",
    "  if (!m) return String(value);",
    "  return m[2] === \"%\" ? `${(value * 100).toFixed(Number(m[1]))}%` : value.toFixed(Number(m[1]));",
    "}",
    "",
    "/** judge_tokens's reason (the tokens tier does not hold). */",
    "export function tokensReason(stage, precision, agreement, perScale = []) {",
    `  const scales = perScale.length ? ${JSON.stringify(sc.pre)} + perScale.map((a) => fmt(a, ${JSON.stringify(sc.spec)})).join(${JSON.stringify(sc.sep)}) + ${JSON.stringify(sc.post)} : "";`,
    `  return \`${tokens}\`;`,
    "}",
    "",
    "/** judge_pixels's reason (the pixels tier does not hold). */",
    "export function pixelsReason(stage, precision, figure) {",
    `  return \`${pixels}\`;`,
    "}",
    "",
  ];
  return lines.join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const text = generateRules();
  if (process.argv.includes("--check")) {
    const current = readFileSync(OUTPUT, "utf8");
    if (current !== text) {
      console.error(`${OUTPUT} is stale: run \`node web/gen-rules.mjs\` (or npm run build)`);
      process.exit(1);
    }
  } else {
    writeFileSync(OUTPUT, text);
  }
}
