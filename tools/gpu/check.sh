#!/usr/bin/env bash
# GPU check: parity, model throughput and a server benchmark with a prebuilt binary, in a few
# minutes, on the GPU machine (no Rust toolchain there: nothing is built). See tools/gpu/README.md.
#
#   bash tools/gpu/check.sh [BINARY]            # default target-cuda/release/rewarddance
#
# Steps (each under `timeout`, all inside GPU_CHECK_BUDGET_S; a failed step does not stop the
# others; the exit code is 1 if any step failed, timed out or was skipped for lack of budget):
#   1. nvidia-smi
#   2. rewarddance parity on the device, per dtype (f32, bf16)
#   3. rewarddance bench-model --preset P --random-weights, pointwise + pairwise, batch 1/16/64,
#      then --grad (ScoreGrad against Score, prefix reuse off and on) at GPU_CHECK_GRAD_PRESETS,
#      then --lora 4 (base, merged, unmerged adapters, 4 rewards per item) at GPU_CHECK_LORA_PRESETS
#      (and with --lora-vision, adapters on the ViT and mlp1 too, at the first of them)
#   4. rewarddance serve in the background + rewarddance bench --target (many concurrent clients)
#   5. optional: tools/gpu/baseline.py, transformers at the same shapes on the same card
#   6. a summary table, printed last (also summary.md)
# Outputs go to $OUT (the device tool's folder) or target/gpu-check: check.log, summary.md,
# parity-<dtype>.json, bench-model.md, server-bench.txt, server.log, baseline.json (8 files at
# most, the device tool's limit).
#
# Environment (defaults for the GPU; the CPU dry run in the README overrides them):
#   RD_BIN                    binary, if no argument (default target-cuda/release/rewarddance);
#                             a .gz / .zst / .xz is unpacked to $TMPDIR first
#   GPU_CHECK_DEVICE          cuda:0                  device for every step
#   GPU_CHECK_PARITY_DTYPES   "f32 bf16"
#   GPU_CHECK_PRESETS         "1b 2b 8b"              bench-model presets (mini: CPU dry run)
#   GPU_CHECK_BATCHES         1,16,64
#   GPU_CHECK_GRAD_PRESETS    "1b 8b"                 bench-model --grad presets (ScoreGrad)
#   GPU_CHECK_GRAD_BATCHES    1,8
#   GPU_CHECK_LORA_PRESETS    "1b 8b"                 bench-model --lora 4 presets (named rewards)
#   GPU_CHECK_LORA_BATCHES    16
#   GPU_CHECK_MODES           pointwise,pairwise
#   GPU_CHECK_ITERS           2                       timed runs per bench-model row
#   GPU_CHECK_BENCH_DTYPE     (binary's default: bf16 on CUDA, f32 on CPU)
#   GPU_CHECK_SERVER_MODEL    random:1b               model of the server bench (bundled: tiny)
#   GPU_CHECK_SERVER_ITEMS    4096   GPU_CHECK_CONCURRENCY 64   GPU_CHECK_ROUNDS 2
#   GPU_CHECK_BASELINE        auto (run if python3 imports torch + transformers), 1, 0
#   GPU_CHECK_BASELINE_DEVICE cuda (torch's name for the device)
#   GPU_CHECK_BUDGET_S        480                     whole-run budget; steps are cut to fit
#   GPU_CHECK_TIMEOUT_SCALE   1                       multiplies every step's timeout (CPU: 20)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

BIN=${1:-${RD_BIN:-target-cuda/release/rewarddance}}
DEVICE=${GPU_CHECK_DEVICE:-cuda:0}
PARITY_DTYPES=${GPU_CHECK_PARITY_DTYPES:-f32 bf16}
PRESETS=${GPU_CHECK_PRESETS:-1b 2b 8b}
BATCHES=${GPU_CHECK_BATCHES:-1,16,64}
GRAD_PRESETS=${GPU_CHECK_GRAD_PRESETS:-1b 8b}
GRAD_BATCHES=${GPU_CHECK_GRAD_BATCHES:-1,8}
LORA_PRESETS=${GPU_CHECK_LORA_PRESETS:-1b 8b}
LORA_BATCHES=${GPU_CHECK_LORA_BATCHES:-16}
MODES=${GPU_CHECK_MODES:-pointwise,pairwise}
ITERS=${GPU_CHECK_ITERS:-2}
BENCH_DTYPE=${GPU_CHECK_BENCH_DTYPE:-}
SERVER_MODEL=${GPU_CHECK_SERVER_MODEL:-random:1b}
SERVER_ITEMS=${GPU_CHECK_SERVER_ITEMS:-4096}
CONCURRENCY=${GPU_CHECK_CONCURRENCY:-64}
ROUNDS=${GPU_CHECK_ROUNDS:-2}
BASELINE=${GPU_CHECK_BASELINE:-auto}
BASELINE_DEVICE=${GPU_CHECK_BASELINE_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
SCALE=${GPU_CHECK_TIMEOUT_SCALE:-1}
OUTDIR=${OUT:-target/gpu-check}

# The binary links cudart/cublas/curand/nvrtc dynamically; on the GPU machine they live here.
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=0 PYTHONUNBUFFERED=1
# Nothing from the caller's environment may change what the binary runs.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^REWARDDANCE_' || true)

mkdir -p "$OUTDIR" || exit 2
rm -f "$OUTDIR"/{check.log,summary.md,parity-*.json,bench-model.md,server-bench.txt,server.log,baseline.json}
exec > >(tee -a "$OUTDIR/check.log") 2>&1

STARTED=$SECONDS
STEPS=()      # "name|status|seconds"
FAILED=0

# step NAME TIMEOUT_S [--tee FILE] COMMAND...: runs COMMAND under `timeout` (cut to the remaining
# budget), its output also appended to FILE.
step() {
  local name=$1 limit=$2 file=/dev/null
  shift 2
  if [[ ${1:-} == --tee ]]; then file=$2; shift 2; fi
  limit=$(( limit * SCALE ))
  local left=$(( BUDGET - (SECONDS - STARTED) - 15 ))
  if (( left < 20 )); then
    echo "== $name: SKIPPED (budget of ${BUDGET}s spent)"
    STEPS+=("$name|SKIPPED (budget)|0")
    FAILED=1
    return 0
  fi
  (( limit > left )) && limit=$left
  echo
  echo "== $name (timeout ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" | tee -a "$file"
  rc=${PIPESTATUS[0]}
  local status=ok
  if (( rc == 124 || rc == 137 )); then status="TIMEOUT (${limit}s)"; FAILED=1
  elif (( rc != 0 )); then status="FAILED (exit $rc)"; FAILED=1; fi
  STEPS+=("$name|$status|$(( SECONDS - t0 ))")
  echo "== $name: $status in $(( SECONDS - t0 ))s"
  return 0
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $(( 40000 + RANDOM % 20000 ))
}

echo "== rewarddance GPU check  $(date -u +%FT%TZ)  binary $BIN  device $DEVICE  budget ${BUDGET}s  out $OUTDIR"
# A compressed binary (the device tool carries 64 MiB at most, the CUDA binary is ~61 MB).
case $BIN in
  *.gz|*.zst|*.xz)
    unpacked="${TMPDIR:-/tmp}/rewarddance-gpu-check/rewarddance"
    mkdir -p "$(dirname "$unpacked")"
    case $BIN in
      *.gz) gzip -dc "$BIN" > "$unpacked" ;;
      *.zst) zstd -qdc "$BIN" > "$unpacked" ;;
      *.xz) xz -dc "$BIN" > "$unpacked" ;;
    esac || { echo "FATAL: cannot decompress $BIN"; exit 2; }
    chmod 0755 "$unpacked"
    echo "== unpacked $BIN -> $unpacked"
    BIN=$unpacked
    ;;
esac
if [[ ! -x "$BIN" ]]; then
  echo "FATAL: no executable $BIN (build it: see tools/gpu/README.md, and carry it)"
  exit 2
fi
"$BIN" --version

# 1. The card.
if command -v nvidia-smi >/dev/null 2>&1; then
  step nvidia-smi 30 nvidia-smi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
else
  echo "== nvidia-smi: not found (CPU dry run?)"
fi

# 2. Parity against the transformers reference fixtures, on the device.
for dtype in $PARITY_DTYPES; do
  step "parity $dtype" 90 "$BIN" parity --fixtures fixtures --device "$DEVICE" --dtype "$dtype" \
    --json "$OUTDIR/parity-$dtype.json"
done

# 3. Model throughput at real shapes, random weights.
bench_dtype=()
[[ -n $BENCH_DTYPE ]] && bench_dtype=(--dtype "$BENCH_DTYPE")
for preset in $PRESETS; do
  limit=90
  [[ $preset == 8b ]] && limit=150
  echo "### bench-model --preset $preset" >> "$OUTDIR/bench-model.md"
  step "bench-model $preset" "$limit" --tee "$OUTDIR/bench-model.md" \
    "$BIN" bench-model --preset "$preset" --random-weights --device "$DEVICE" "${bench_dtype[@]}" \
    --batch "$BATCHES" --mode "$MODES" --iters "$ITERS"
done
# 3b. ScoreGrad against Score at the same shapes (the gradient of p_yes w.r.t. the pixels).
for preset in $GRAD_PRESETS; do
  echo "### bench-model --grad --preset $preset" >> "$OUTDIR/bench-model.md"
  step "bench-model --grad $preset" 120 --tee "$OUTDIR/bench-model.md" \
    "$BIN" bench-model --preset "$preset" --random-weights --grad --device "$DEVICE" \
    "${bench_dtype[@]}" --batch "$GRAD_BATCHES" --mode "$MODES" --iters "$ITERS"
done
# 3c. Named rewards: random LoRA adapters merged and unmerged, several rewards per item.
for preset in $LORA_PRESETS; do
  echo "### bench-model --lora 4 --preset $preset" >> "$OUTDIR/bench-model.md"
  step "bench-model --lora $preset" 120 --tee "$OUTDIR/bench-model.md" \
    "$BIN" bench-model --preset "$preset" --random-weights --lora 4 --device "$DEVICE" \
    "${bench_dtype[@]}" --batch "$LORA_BATCHES" --iters "$ITERS"
done
# ... and adapters on the vision tower and mlp1 too (unmerged per image-side slot), first preset.
for preset in ${LORA_PRESETS%% *}; do
  echo "### bench-model --lora 4 --lora-vision --preset $preset" >> "$OUTDIR/bench-model.md"
  step "bench-model --lora-vision $preset" 120 --tee "$OUTDIR/bench-model.md" \
    "$BIN" bench-model --preset "$preset" --random-weights --lora 4 --lora-vision \
    --device "$DEVICE" "${bench_dtype[@]}" --batch "$LORA_BATCHES" --iters "$ITERS"
done

# 4. Server: `serve` in the background on free ports, then many concurrent clients.
port=$(free_port)
metrics_port=$(free_port)
url="http://127.0.0.1:$port"
echo
echo "== serve on $url (metrics :$metrics_port), device $DEVICE"
"$BIN" serve --model "$SERVER_MODEL" --addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$metrics_port" \
  --device "$DEVICE" > "$OUTDIR/server.log" 2>&1 &
server_pid=$!
ready=0
for _ in $(seq 1 $(( 120 * SCALE ))); do
  if grep -q "warm-up done: SERVING" "$OUTDIR/server.log"; then ready=1; break; fi
  if ! kill -0 "$server_pid" 2>/dev/null || grep -q "warm-up failed" "$OUTDIR/server.log"; then break; fi
  sleep 0.5
done
if (( ready )); then
  step "server bench" 120 --tee "$OUTDIR/server-bench.txt" \
    "$BIN" bench --target "$url" --model "$SERVER_MODEL" --device "$DEVICE" --concurrency "$CONCURRENCY" \
    --items "$SERVER_ITEMS" --rounds "$ROUNDS"
  if command -v curl >/dev/null 2>&1; then
    { echo "--- /metrics after the bench (batching)"
      curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep -E '^rewarddance_batch_(size|tokens)_(sum|count)' ; } \
      >> "$OUTDIR/server-bench.txt" 2>&1
  fi
else
  echo "== serve did not reach SERVING:"; tail -20 "$OUTDIR/server.log"
  STEPS+=("server bench|FAILED (serve not SERVING)|0"); FAILED=1
fi
kill -TERM "$server_pid" 2>/dev/null
for _ in $(seq 1 40); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
kill -KILL "$server_pid" 2>/dev/null
wait "$server_pid" 2>/dev/null

# 5. transformers on the same card (optional).
if [[ $BASELINE == auto ]]; then
  if python3 -c 'import torch, transformers' 2>/dev/null; then BASELINE=1; else BASELINE=0; fi
fi
if [[ $BASELINE == 1 ]]; then
  for preset in $PRESETS; do
    step "baseline $preset" 120 python3 tools/gpu/baseline.py --preset "$preset" \
      --device "$BASELINE_DEVICE" --batch "$BATCHES" --mode "$MODES" --iters "$ITERS" \
      --json "$OUTDIR/baseline.json"
  done
else
  echo "== baseline: skipped (GPU_CHECK_BASELINE=$BASELINE, or no torch + transformers)"
fi

# 6. Summary, last.
echo
{
  echo "## GPU check summary ($(date -u +%FT%TZ), $(( SECONDS - STARTED ))s, device $DEVICE)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/card: /'
  echo
  echo "| step | status | s |"
  echo "|---|---|---:|"
  for s in "${STEPS[@]}"; do IFS='|' read -r n st t <<<"$s"; echo "| $n | $st | $t |"; done
  echo
  python3 tools/gpu/summary.py "$OUTDIR" 2>&1 || echo "(python3 summary failed; raw results in $OUTDIR)"
  echo
  echo "gpu check: $( ((FAILED)) && echo FAIL || echo PASS )"
} | tee "$OUTDIR/summary.md"
exit "$FAILED"
