#!/usr/bin/env bash
# The GPU round (issue 21 item 5): on a CUDA machine, the parity suite on the GPU, then the decode, training and
# serving benchmarks in bf16 (SDPA on both sides) against transformers on the same weights. About 8 minutes at
# most: every step has a time limit (a step that runs out is reported as such and the next one runs).
#
#   benchmarks/gpu.sh                         # on the GPU machine (the venv active or .venv present)
#   benchmarks/gpu.sh --out results.txt       # where the numbers go (default below)
#   benchmarks/gpu.sh --cpu-dry-run           # every command on CPU at tiny sizes: checks the script here
#
# Writes everything it prints to the results file (default $OCELLUS_BENCH_DIR/gpu-results-<time>.txt) with the card's
# name, torch / transformers versions and each step's JSON beside it; prints the file's path at the end.
# Exit status: 0 when every step ran to its end, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi

dry=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) dry=1 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: benchmarks/gpu.sh [--cpu-dry-run] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
dir="${OCELLUS_BENCH_DIR:-/tmp/ocellus-bench}"
mkdir -p "$dir"
out="${out:-$dir/gpu-results-$(date +%Y%m%d-%H%M%S).txt}"
json="${out%.txt}"
: > "$out"

if [ $dry = 1 ]; then
  bench=(--device cpu --dtype bf16 --dry-run); serve=(--device cpu --dtype bf16 --quick)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  parity_env=cpu; parity_args=(--co -q)        # collect every parity file (imports, fixtures) without running them
  limit_parity=600; limit_decode=300; limit_train=300; limit_serve=300
else
  bench=(--device cuda --dtype bf16); serve=(--device cuda --dtype bf16 --per-client 1)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
  parity_env=cuda; parity_args=(-q)
  limit_parity=210; limit_decode=75; limit_train=60; limit_serve=120
  python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no GPU (use --cpu-dry-run)")' \
    || exit 2
fi

status=0
log() { echo "$@" | tee -a "$out"; }
step() {  # step NAME LIMIT_S COMMAND...: run it under a time limit, its output into the results file
  local name="$1" limit="$2"; shift 2
  log ""
  log "== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then log "== $name: TIMED OUT after ${limit} s"; status=1
  elif [ "$rc" != 0 ]; then log "== $name: FAILED (exit $rc)"; status=1
  else log "== $name: done in $((SECONDS - t0)) s"; fi
}

log "# benchmarks/gpu.sh $( [ $dry = 1 ] && echo '--cpu-dry-run' ) on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null)"
python - <<'EOF' 2>&1 | tee -a "$out"
import os, torch, transformers
card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"# card: {card}; torch {torch.__version__} (CUDA {torch.version.cuda}); transformers {transformers.__version__}; "
      f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
EOF

step "parity suite on $parity_env" "$limit_parity" env OCELLUS_DEVICE="$parity_env" scripts/gpu_parity.sh "${parity_args[@]}"
step "decode, bf16, batch 1 and 8" "$limit_decode" python benchmarks/gpu_bench.py decode "${bench[@]}" --json "$json-decode.json"
step "train, bf16 autocast" "$limit_train" python benchmarks/gpu_bench.py train "${bench[@]}" --json "$json-train.json"
step "serve, bf16: 1 and 16 clients, a 2k prompt mid-stream" "$limit_serve" \
  python benchmarks/serve.py "${serve[@]}" --json "$json-serve.json"

log ""
log "# results: $out (JSON: $json-*.json); every step ran to its end: $([ $status = 0 ] && echo yes || echo no)"
exit $status
