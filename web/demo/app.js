// The page: what the Gradio demo's first sections do, run on this device by vqedge-web.
import * as vqedge from "../dist/vqedge.js";

const $ = (id) => document.getElementById(id);
// what the page holds; window.vqedgePage lets a test (or a curious user) look at it
const state = { tok: null, image: null, enc: null, name: null, vqt: null, region: [0, 0, 4, 4] };
window.vqedge = vqedge;
window.vqedgePage = state;

function setState(s, text) {
  document.body.dataset.state = s;
  if (text !== undefined) $("status").textContent = text;
}

function show(id, text, error = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", error);
}

function draw(canvas, img) {
  canvas.width = img.width;
  canvas.height = img.height;
  canvas.getContext("2d").putImageData(img instanceof ImageData ? img : new ImageData(img.data, img.width, img.height), 0, 0);
}

function psnr(a, b) {
  let se = 0;
  for (let i = 0; i < a.data.length; i++) {
    if (i % 4 === 3) continue;
    const d = a.data[i] - b.data[i];
    se += d * d;
  }
  const mse = se / ((a.data.length / 4) * 3);
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

// one colour per code, spread around the hue circle (golden-ratio steps)
function codeColour(k) {
  const h = (k * 0.6180339887) % 1;
  const l = 0.35 + 0.3 * (((k * 0.3819660113) % 1));
  const a = 0.8 * Math.min(l, 1 - l);
  const f = (n) => {
    const x = (n + h * 12) % 12;
    return Math.round(255 * (l - a * Math.max(-1, Math.min(x - 3, 9 - x, 1))));
  };
  return [f(0), f(8), f(4)];
}

// the token map drawn: the finest scale of a multi-scale bundle, the map of a single-scale one
function tokenGrid() {
  const { tok, enc } = state;
  if (tok.kind === "multi-scale") {
    const pn = tok.patchNums.at(-1);
    return { data: enc.indices.subarray(tok.numTokens - pn * pn), h: pn, w: pn };
  }
  return { data: enc.indices, h: enc.height, w: enc.width };
}

function drawTokenMap() {
  const { data, h, w } = tokenGrid();
  const px = new Uint8ClampedArray(h * w * 4);
  data.forEach((k, i) => {
    px.set(codeColour(k), i * 4);
    px[i * 4 + 3] = 255;
  });
  const c = $("tokenmap");
  draw(c, new ImageData(px, w, h));
  if (state.tok.kind === "single-scale") {
    const [t, l, b, r] = state.region;
    const ctx = c.getContext("2d");
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 0.5;
    ctx.strokeRect(l + 0.25, t + 0.25, r - l - 0.5, b - t - 0.5);
  }
}

async function imageFromBlob(blob) {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = c.getContext("2d");
  ctx.drawImage(bmp, 0, 0);
  return ctx.getImageData(0, 0, bmp.width, bmp.height, { colorSpace: "srgb" });
}

function precisionAsked() {
  const v = $("precision").value;
  return v.startsWith("{") ? JSON.parse(v) : v;
}

// what the downloads did: per file, bytes so far and whether the cache had it
function progressShower() {
  const files = new Map();
  return (p) => {
    files.set(p.file, p);
    const all = [...files.values()];
    const got = all.filter((f) => !f.fromCache).reduce((s, f) => s + f.loaded, 0);
    const total = all.filter((f) => !f.fromCache).reduce((s, f) => s + (f.total ?? f.loaded), 0);
    const cached = all.filter((f) => f.fromCache);
    show("download", `Downloading ${(got / 1e6).toFixed(2)} of ${(total / 1e6).toFixed(2)} MB` + (cached.length ? `; ${cached.length} file(s) from the cache` : ""));
  };
}

async function loadModel() {
  const url = $("bundle").value;
  setState("loading", `Loading ${url} …`);
  show("verdict", "");
  state.tok?.dispose();
  state.tok = null;
  try {
    const tok = await vqedge.load(url, { backend: $("backend").value, precision: precisionAsked(), strict: $("strict").checked, onProgress: progressShower() });
    state.tok = tok;
    const iso = crossOriginIsolated ? "cross-origin isolated" : "not cross-origin isolated";
    setState(
      "ready",
      `${tok.name} (${tok.kind}, f=${tok.f}, K=${tok.codebookSize}) on ${tok.backend}, ${tok.precision}, ` +
        `${tok.threads} thread(s) of ${navigator.hardwareConcurrency} core(s), ${iso}: loaded in ${Math.round(tok.loadMs)} ms`,
    );
    const v = tok.verification;
    show("verdict", v ? `Check set: ${vqedge.describeVerdict(v)}` : "Check set: not run", v?.holds === false && !v.fellBackTo);
    const fromCache = tok.files.filter((f) => f.fromCache);
    show("download", `${(tok.bytesDownloaded / 1e6).toFixed(2)} MB downloaded, ${(tok.bytesFromCache / 1e6).toFixed(2)} MB from the cache (${fromCache.length} of ${tok.files.length} bundle files), every file checked against its sha256`);
    $("scales-section").hidden = tok.kind !== "multi-scale";
    $("apply").disabled = true;
    if (state.image) await tokenize(state.image, state.name);
  } catch (e) {
    setState("error", `Could not load ${url}: ${e.message}`);
  }
}

// the held-out photos, as the Gradio demo offers them
async function showExamples() {
  let names = [];
  try {
    const res = await fetch("examples.json");
    if (res.ok) names = await res.json();
  } catch {
    return; // a static host without examples
  }
  $("examples").replaceChildren(
    ...names.map((name) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "example";
      b.textContent = name;
      b.addEventListener("click", async () => {
        const blob = await (await fetch(`examples/${name}`)).blob();
        await tokenize(await imageFromBlob(blob), name);
      });
      return b;
    }),
  );
}

async function tokenize(image, name) {
  const { tok } = state;
  state.image = image;
  state.name = name;
  if (!tok) return;
  setState("busy");
  try {
    const t0 = performance.now();
    let enc;
    let shown = image;
    if (tok.kind === "multi-scale") {
      enc = await tok.encodeImage(image);
      shown = enc.fitted;
    } else {
      enc = await tok.encode(image);
    }
    const t1 = performance.now();
    const recon = tok.kind === "multi-scale" ? await tok.decode(enc.indices) : await tok.decode(enc.indices, enc.height, enc.width, { size: [image.height, image.width] });
    const t2 = performance.now();
    state.enc = { ...enc, imageHeight: shown.height, imageWidth: shown.width, shown, recon };
    state.edited = undefined;
    $("edited").width = 0; // an edit belongs to the tokens it was made on
    draw($("original"), shown);
    draw($("reconstruction"), recon);
    drawTokenMap();
    const bits = vqedge.bitsFor(tok.codebookSize);
    const what = tok.kind === "multi-scale" ? `${enc.indices.length} tokens over ${tok.patchNums.length} scales` : `${enc.indices.length} tokens (${enc.height}x${enc.width})`;
    show("metrics", `${name}: PSNR ${psnr(shown, recon).toFixed(2)} dB · ${what} · ${bits} bits each · encode ${Math.round(t1 - t0)} ms · decode ${Math.round(t2 - t1)} ms`);
    $("save").disabled = false;
    $("apply").disabled = tok.kind !== "single-scale";
    show("edit-message", tok.kind === "single-scale" ? "" : "Region editing works on single-scale bundles.");
    if (tok.kind === "multi-scale") await drawScales(enc.indices);
    setState("ready");
  } catch (e) {
    show("metrics", `${name}: ${e.message}`, true);
    setState("ready");
  }
}

async function drawScales(indices) {
  const { tok } = state;
  const images = await tok.idxBlToImg(tok.split(indices), { lastOne: false });
  const row = $("scales");
  row.replaceChildren(
    ...images.map((img, k) => {
      const fig = document.createElement("figure");
      const c = document.createElement("canvas");
      draw(c, img);
      const cap = document.createElement("figcaption");
      cap.textContent = `${k + 1} scale${k ? "s" : ""} (${tok.patchNums[k]}x${tok.patchNums[k]})`;
      fig.append(c, cap);
      return fig;
    }),
  );
}

function readRegion() {
  const { h, w } = tokenGrid();
  const v = ["top", "left", "bottom", "right"].map((id) => Number($(id).value));
  const [t, l, b, r] = [Math.max(0, Math.min(v[0], h - 1)), Math.max(0, Math.min(v[1], w - 1)), Math.min(h, v[2]), Math.min(w, v[3])];
  if (!(b > t && r > l)) throw new Error(`the region must have bottom > top and right > left within the ${h}x${w} map`);
  return [t, l, b, r];
}

function setRegion([t, l, b, r]) {
  state.region = [t, l, b, r];
  ["top", "left", "bottom", "right"].forEach((id, i) => ($(id).value = state.region[i]));
  if (state.enc) drawTokenMap();
}

async function applyEdit() {
  const { tok, enc } = state;
  try {
    const [t, l, b, r] = readRegion();
    setRegion([t, l, b, r]);
    const code = Number($("code").value);
    const random = $("how").value === "random";
    if (!random && !(Number.isInteger(code) && code >= 0 && code < tok.codebookSize)) {
      throw new Error(`code must be an integer in [0, ${tok.codebookSize})`);
    }
    const edited = enc.indices.slice();
    for (let y = t; y < b; y++) for (let x = l; x < r; x++) edited[y * enc.width + x] = random ? Math.floor(Math.random() * tok.codebookSize) : code;
    const img = await tok.decode(edited, enc.height, enc.width, { size: [enc.imageHeight, enc.imageWidth] });
    state.edited = edited;
    draw($("edited"), img);
    const n = (b - t) * (r - l);
    show("edit-message", `Replaced ${n} codes (rows ${t}-${b - 1}, columns ${l}-${r - 1}) with ${random ? "random codes" : `code ${code}`}; PSNR against the original ${psnr(enc.shown, img).toFixed(2)} dB.`);
  } catch (e) {
    show("edit-message", e.message, true);
  }
}

function saveTokens() {
  const { tok, enc } = state;
  const bytes = tok.kind === "multi-scale" ? tok.writeTokens(enc.indices) : tok.writeTokens(enc.indices, enc.height, enc.width, { imageSize: [enc.imageHeight, enc.imageWidth] });
  state.vqt = bytes;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  a.download = `${(state.name ?? "image").replace(/\.[^.]*$/, "")}.vqt`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

async function openTokens(file) {
  const { tok } = state;
  try {
    const f = tok.readTokens(await file.arrayBuffer(), { name: file.name });
    let img;
    if (tok.kind === "multi-scale") {
      img = await tok.decode(tok.tokensOf(f));
    } else {
      const [, h, w] = f.scales[0].shape;
      img = await tok.decode(f.scales[0].data, h, w, f.imageSize ? { size: f.imageSize } : {});
    }
    draw($("reconstruction"), img);
    show("metrics", `${file.name}: decoded ${f.scales.reduce((s, m) => s + m.data.length, 0)} tokens to a ${img.width}x${img.height} image`);
    state.decoded = img;
  } catch (e) {
    show("metrics", e.message, true);
  }
}

// -- wiring -----------------------------------------------------------------------------------

$("model").addEventListener("submit", (ev) => {
  ev.preventDefault();
  loadModel();
});
$("image-input").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (!file) return;
  try {
    await tokenize(await imageFromBlob(file), file.name);
  } catch (e) {
    show("metrics", `${file.name}: cannot read image (${e.message})`, true);
  }
});
const drop = $("drop");
drop.addEventListener("dragover", (ev) => {
  ev.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  const file = ev.dataTransfer.files[0];
  if (file) await tokenize(await imageFromBlob(file), file.name).catch((e) => show("metrics", e.message, true));
});
$("edit-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  applyEdit();
});
$("save").addEventListener("click", saveTokens);
$("vqt-input").addEventListener("change", (ev) => ev.target.files[0] && openTokens(ev.target.files[0]));

// drag on the token map to select a region (in tokens)
let dragFrom = null;
const toToken = (ev) => {
  const c = $("tokenmap");
  return [Math.floor((ev.offsetY * c.height) / c.clientHeight), Math.floor((ev.offsetX * c.width) / c.clientWidth)];
};
$("tokenmap").addEventListener("mousedown", (ev) => state.enc && (dragFrom = toToken(ev)));
$("tokenmap").addEventListener("mouseup", (ev) => {
  if (!dragFrom) return;
  const to = toToken(ev);
  setRegion([Math.min(dragFrom[0], to[0]), Math.min(dragFrom[1], to[1]), Math.max(dragFrom[0], to[0]) + 1, Math.max(dragFrom[1], to[1]) + 1]);
  dragFrom = null;
});

async function start() {
  const params = new URLSearchParams(location.search);
  let bundles = [];
  try {
    const res = await fetch("bundles.json");
    if (res.ok) bundles = await res.json();
  } catch {
    // a static host without bundles.json: ?bundle=URL names the bundle
  }
  if (params.get("bundle")) {
    const named = bundles.find((b) => b.name === params.get("bundle"));
    if (!named) bundles.unshift({ name: params.get("bundle"), url: params.get("bundle") });
  }
  if (!bundles.length) {
    setState("error", "No bundle to load: serve bundles.json or open this page with ?bundle=URL-of-a-bundle-folder");
    return;
  }
  $("bundle").replaceChildren(...bundles.map((b) => new Option(b.name, b.url)));
  const wanted = params.get("bundle");
  if (wanted) $("bundle").value = bundles.find((b) => b.name === wanted)?.url ?? wanted;
  for (const key of ["backend", "precision"]) if (params.get(key)) $(key).value = params.get(key);
  if (params.get("strict") === "0") $("strict").checked = false;
  showExamples();
  if (params.get("autoload") === "0") {
    setState("idle", "Choose a bundle and press Load.");
    return;
  }
  await loadModel();
}

start();
