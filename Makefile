# Every target sets itself up: a fresh clone needs only python3 (3.10+), make and, for the
# demo's browser test and the web package's Node.js, apt-get (Debian).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU-only torch, installed before the project so the `torch>=2.4` range keeps it; a bare
# `torch` requirement would pull a multi-GB CUDA build. GPU users: see the README.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
OPEN_MAGVIT2_SPEC ?= open-magvit2==1.1
OUT ?= out
# the built vqedge-web package (web/): what `vqedge web` serves and the browser tests load
WEB_BUILD := web/dist/vqedge.js

.PHONY: setup browser train-data eval-data demo reconstruct test test-heavy lint clean

setup: $(STAMP) $(WEB_BUILD)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# setuptools for the wheel-building install tests (--no-build-isolation)
	$(BIN)/python -m pip install --quiet --upgrade "setuptools>=77"
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all]"
	# Open-MAGVIT2's modules, the lookup-free tests' reference: without the training stack
	# its metadata pins (lightning, transformers, albumentations); they need torch and einops
	$(BIN)/python -m pip install --quiet --no-deps "$(OPEN_MAGVIT2_SPEC)"
	touch $(STAMP)

# vqedge-web: its npm packages exactly as the lockfile pins them, then its own build into
# web/dist. Debian's nodejs and npm where npm is missing (needs root on a machine without).
$(WEB_BUILD): web/package.json web/package-lock.json web/build.mjs $(wildcard web/src/*.js)
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent

# The main job: the web demo on the shipped default (http://127.0.0.1:7860, offline).
demo: setup
	$(BIN)/vqedge demo

# Tokenize a held-out photo with the shipped default and decode it back (no browser needed).
reconstruct: setup
	mkdir -p $(OUT)
	$(BIN)/vqedge reconstruct \
	  "$$($(BIN)/python -c 'from vqedge.models.data import held_out_paths; print(held_out_paths()[2])')" \
	  -o $(OUT)/chelsea-reconstruction.png

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian's chromium for the demo's browser test (Playwright drives it; nothing is downloaded
# by Playwright itself). Needs root on a machine without it.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# The default training collection's wallpapers (Debian packages, about 140 MB): `vqedge train`
# without a folder and the tests' content check of the splits need them. Needs root on a
# machine without them.
train-data:
	@dpkg -s plasma-workspace-wallpapers mate-backgrounds >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq plasma-workspace-wallpapers mate-backgrounds; }

# Images in no training split, for `python -m vqedge.benchmarks.quality` and the tests' content
# check (Debian packages, about 40 MB; photographs and illustrations). Needs root on a machine
# without them.
eval-data:
	@dpkg -s lomiri-wallpapers-16.04 ukui-wallpapers >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq lomiri-wallpapers-16.04 ukui-wallpapers; }

# Everything but the full-size imported models (see test-heavy): ruff, then pytest. The data
# packages are installed first, and VQEDGE_REQUIRE_DATA makes the tests that need them fail
# rather than skip: `make test` cannot pass without the held-out content check.
test: lint browser train-data eval-data
	VQEDGE_REQUIRE_DATA=1 $(BIN)/pytest -m "not heavy"

# Full-size exports of the imported families (50-110M parameters): minutes and GBs each.
test-heavy: setup
	$(BIN)/pytest -m heavy

# --- make bench: every results file in benchmarks/results, rerun at HEAD on this machine ---
# (docs/performance.md). The short harnesses take about 25 minutes on 2 cores; LONG=1 adds the
# long ones (the browser run, arm64 under emulation), which are otherwise listed, not run.
# Nothing else should run on the machine meanwhile: every file records the load average.
LONG ?=
OV_VENV ?= .venv-ov
OV_STAMP := $(OV_VENV)/.installed
RESULTS := benchmarks/results
BENCH := $(BIN)/python -m vqedge.benchmarks
BENCH_SHORT := bench-latest bench-quality bench-tiled bench-tokenize bench-verify-cost \
  bench-int8 bench-frontier
BENCH_LONG := bench-web bench-arm64
.PHONY: bench ov-setup $(BENCH_SHORT) $(BENCH_LONG)

bench: setup
	@echo "make bench: running $(BENCH_SHORT)$(if $(LONG), $(BENCH_LONG))"
	@$(if $(LONG),true,echo "make bench: NOT running (long; make bench LONG=1): $(BENCH_LONG)")
	$(MAKE) --no-print-directory $(BENCH_SHORT) $(if $(LONG),$(BENCH_LONG))
	@echo "make bench: ran $(BENCH_SHORT)$(if $(LONG), $(BENCH_LONG))"
	@$(if $(LONG),true,echo "make bench: NOT run (long; make bench LONG=1): $(BENCH_LONG)")

# the OpenVINO provider's environment: onnxruntime-openvino owns the `onnxruntime` module, so
# it never shares an environment with onnxruntime
ov-setup: $(OV_STAMP)
$(OV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(OV_VENV)
	$(OV_VENV)/bin/pip install --quiet onnxruntime-openvino==1.24.1 openvino==2026.4.1 numpy pillow
	$(OV_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(OV_STAMP)

# bf16 is computed at fp32 (emulated, minutes a pass) on a CPU without AVX-512 BF16 or AMX:
# there the comparison leaves the bf16 configurations out, and its command line says so
CPU_BF16 := $(shell grep -qsE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo yes)
LATEST_CONFIGS := $(if $(CPU_BF16),,--configs vqedge-cpu vqedge-openvino/fp32 \
  vqedge-openvino/int8 openvino/fp32 openvino/int8 torch-eager/fp32 torch-compile/fp32)
bench-latest: setup ov-setup
	$(BENCH).compare --ov-python $(OV_VENV)/bin/python --batches 1 --sizes 256 --rounds 5 \
	  --iters 5 $(LATEST_CONFIGS)
bench-quality: setup eval-data
	$(BENCH).quality
bench-tiled: setup
	$(BENCH).tiled_memory --sizes 1024 2048
bench-tokenize: setup
	$(BENCH).tokenize_throughput --images 120 --repeats 1
bench-verify-cost: setup
	$(BENCH).verify_cost --rounds 7 --out $(RESULTS)/verify_cost.md
bench-int8: setup ov-setup
	$(BENCH).int8_recipe --ov-python $(OV_VENV)/bin/python
bench-frontier: setup ov-setup
	$(BENCH).frontier --ov-python $(OV_VENV)/bin/python
bench-web: setup browser
	$(BENCH).web
# an arm64 Debian root (debootstrap, qemu-user-static; cached in .arm64/), as root
bench-arm64: setup
	$(BENCH).arm64_verify

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info web/node_modules web/dist
