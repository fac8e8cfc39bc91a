#!/usr/bin/env bash
# Train both shipped models (vqvae-f4 and the multi-scale vqvae-ms-f8) on the default
# collection on a lent CUDA GPU, each for a fixed time budget, both at once; the checkpoints
# (weights, config, train_state with its held-out curve) and logs land under $OUT.
#
# Prepare, on a machine where `make train-data` ran (the GPU machine cannot install the
# Debian packages), a downsized copy of the collection that travels with the working tree:
#   echo /.train-data/ >> .git/info/exclude
#   .venv/bin/python -m vqedge.models.data export .train-data
# then, in one device call:
#   run(command="bash benchmarks/train_gpu.sh", carry=[".train-data"], timeout_s=600)
# Back here, each $OUT/<name>/ becomes a run folder for `python -m vqedge.models.card`:
#   mkdir -p runs/<name>/ckpt-N && cp <files>/<name>/* runs/<name>/ckpt-N/ &&
#   echo ckpt-N > runs/<name>/latest   (N: the step in train_state.json, 7 digits)
# The optimizer state stays there (over the size of a returned file): a run continues on the
# CPU from these weights as a new run, not as an exact resume.
set -euo pipefail

BUDGET=${BUDGET:-400}        # seconds of training per model (both run at the same time)
PROBE_STEPS=${PROBE_STEPS:-150}
WORKERS=${WORKERS:-6}        # DataLoader processes per model (the machine has 16 cores)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}       # DEVICE=cpu rehearses the script on a machine without a GPU
OUT=${OUT:-out/train-gpu}
export VQEDGE_COLLECTION_ROOT=${VQEDGE_COLLECTION_ROOT:-$PWD/.train-data}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

# vqedge without installing it: its subpackages are the repository's top-level folders.
SRC=$(mktemp -d)
mkdir -p "$SRC/vqedge"
for d in models runtime commands export demo dataset benchmarks; do
  ln -s "$PWD/$d" "$SRC/vqedge/$d"
done
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DEVICE" = cuda ]; then
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name(0))"
fi

# The shipped models' architectures and optimiser settings (as in their train_state.json).
F4=(--base-channels 32 --channel-mult 1 2 4 --res-blocks 1 --mid-blocks 2
    --codebook-size 1024 --code-dim 8 --l2 --crop 64 --lr 3e-4)
MSF8=(--base-channels 32 --channel-mult 1 1 2 4 --res-blocks 1 --mid-blocks 2
      --codebook-size 1024 --code-dim 16 --patch-nums 1 2 3 4 5 6 8 10 13 16
      --crop 128 --zoom-out 4 --lr 4e-4)

train() {  # limit (s), steps, out folder, model args...
  local limit=$1 steps=$2 out=$3; shift 3
  timeout -s INT -k 60 "$limit" $PY -m vqedge.commands.main train --device "$DEVICE" \
    --workers "$WORKERS" --steps "$steps" --out "$out" --eval-every 1000 --ckpt-every 1000 "$@"
}

rm -rf /tmp/probe-f4 /tmp/probe-ms /tmp/run-f4 /tmp/run-ms
# 1. Probe: steps per second of each model while both share the GPU (startup included, so
#    the estimate errs low).
train 600 "$PROBE_STEPS" /tmp/probe-f4 "${F4[@]}" > "$OUT/probe-f4.log" 2>&1 &
train 600 "$PROBE_STEPS" /tmp/probe-ms "${MSF8[@]}" > "$OUT/probe-ms.log" 2>&1 &
wait
steps_for() {
  $PY - "$1" "$BUDGET" "$PROBE_STEPS" <<'PY'
import json, sys
from pathlib import Path
run, budget, probe = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
state = json.loads((run / (run / "latest").read_text().strip() / "train_state.json").read_text())
print(max(1000, int(probe / state["wall_seconds"] * budget) // 500 * 500))
PY
}
S_F4=$(steps_for /tmp/probe-f4)
S_MS=$(steps_for /tmp/probe-ms)
echo "steps: vqvae-f4 $S_F4, vqvae-ms-f8 $S_MS (budget ${BUDGET}s each)"

# 2. The runs. A run that outlasts its budget by a third is stopped with Ctrl-C's signal,
#    which finishes the step and writes a checkpoint.
LIMIT=$((BUDGET * 4 / 3))
train "$LIMIT" "$S_F4" /tmp/run-f4 "${F4[@]}" > "$OUT/vqvae-f4.log" 2>&1 &
train "$LIMIT" "$S_MS" /tmp/run-ms "${MSF8[@]}" > "$OUT/vqvae-ms-f8.log" 2>&1 &
wait || true

# 3. Bring back each latest checkpoint (weights, config, state): 6 files + 2 logs.
for pair in f4:vqvae-f4 ms:vqvae-ms-f8; do
  run=/tmp/run-${pair%%:*} name=${pair#*:}
  ckpt=$run/$(cat "$run/latest")
  mkdir -p "$OUT/$name"
  cp "$ckpt/model.safetensors" "$ckpt/config.json" "$ckpt/train_state.json" "$OUT/$name/"
  echo "$name: $(basename "$ckpt")"
done
rm -f "$OUT"/probe-*.log  # at most 8 files come back
tail -n 3 "$OUT"/*.log
