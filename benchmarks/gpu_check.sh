#!/usr/bin/env bash
# The GPU check of issue 17, in one script: the GPU-marked tests and the GPU benchmark rows.
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh        # on a CUDA machine, from the repo root
#   GPU_CHECK_DRY=1 OUT=/tmp/gc bash benchmarks/gpu_check.sh  # rehearsal on CPU: no install, toy sizes
#
# Written for a rented H100/H200 box without network: Python 3.12, torch 2.11 (CUDA), transformers
# 5.17 and pytest installed; pydantic, datasets, babel, tomli-w, dill and multiprocess carried as
# wheels in .whl/ (repo root). Nothing is downloaded: models are built from random weights at the
# XLM-R shapes (presets), tokenizers are trained on babel's embedded CLDR names.
#
# Budget (one H100): under 6 minutes, about 10 with the sweep (its bf16-weight variants: not yet timed on a card). Each stage has its own timeout and the script goes on when
# a stage fails or times out (fail soft); the summary at the end says what passed. Files written
# to $OUT: env.txt, pytest.log, junit.xml, bench_gpu.log, bench_gpu.json,
# bench_compile.log, bench_compile.json, gpu_sweep.log, gpu_sweep.json, profile.txt, summary.txt.
set -u
OUT="${OUT:?set OUT to a directory for the logs and JSON}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-python3}"
DRY="${GPU_CHECK_DRY:-0}"
START=$(date +%s)
export OBJKIT_CACHE="${OBJKIT_CACHE:-/tmp/objkit-gpu-check-cache}"   # trained tokenizers, shared by the stages
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
declare -A STATUS

elapsed() { echo $(( $(date +%s) - START )); }
stage() {  # stage NAME TIMEOUT_S LOG COMMAND...: run with a timeout, record ok / failed (rc) / timed out
  local name=$1 limit=$2 log=$3; shift 3
  echo "== [$(elapsed) s] $name (at most ${limit} s) -> $log"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then STATUS[$name]="ok"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then STATUS[$name]="timed out after ${limit} s"
  else STATUS[$name]="failed (exit $rc)"; fi
  echo "   ${STATUS[$name]}; last lines:"; tail -n 5 "$log" | sed 's/^/   | /'
}

# ---------------------------------------------------------------- 1. install (no network)
{
  echo "date: $(date -u)"; echo "host: $(hostname)"; $PY --version
  nvidia-smi 2>&1 | head -15 || echo "no nvidia-smi"
} >"$OUT/env.txt" 2>&1
if [ "$DRY" = "1" ]; then
  echo "== GPU_CHECK_DRY=1: no install, CPU, toy sizes"
  DEVICE_ARGS=(--toy)
  STATUS[install]="skipped (dry run)"
else
  DEVICE_ARGS=(--device cuda)
  {
    if compgen -G ".whl/*.whl" >/dev/null; then
      $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    else
      echo "no .whl/ directory: assuming pydantic, datasets, babel, tomli-w, dill, multiprocess are installed"
    fi
  } >>"$OUT/env.txt" 2>&1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  # objkit itself, with its entry points (the built-in plugins register through them); editable
  # first, else a plain install into /tmp/site (on PYTHONPATH)
  if $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$OUT/env.txt" 2>&1; then
    STATUS[install]="ok (editable)"
  elif $PY -m pip install -q --no-deps --no-build-isolation --no-index --no-compile --target /tmp/site . \
      >>"$OUT/env.txt" 2>&1; then
    STATUS[install]="ok (--target /tmp/site)"
  else
    STATUS[install]="failed (see env.txt)"
  fi
fi
$PY - >>"$OUT/env.txt" 2>&1 <<'EOF'
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
print("transformers", transformers.__version__)
from objkit.contract.registry import default_registry
names = default_registry().names()
print("plugins", sorted(names))
assert {"mlm", "tlm", "xlco"} <= set(names), "the built-in plugins did not register (entry points)"
EOF
echo "== [$(elapsed) s] install: ${STATUS[install]}"; tail -n 4 "$OUT/env.txt" | sed 's/^/   | /'

# ---------------------------------------------------------------- 2. the GPU-marked tests
# (pyproject.toml adds -q) --continue-on-collection-errors: a test module needing a package this box lacks must not stop the rest
stage tests 130 "$OUT/pytest.log" \
  $PY -m pytest -m gpu -rs -p no:cacheprovider --continue-on-collection-errors --junitxml="$OUT/junit.xml" tests

# ---------------------------------------------------------------- 3. the GPU benchmark rows
# gpu_mfu (bf16 weights), checkpointing and chunked-head ratios, bf16 weights against fp32 weights under
# autocast, at the XLM-R-base shape (L = 512, bf16, B = 8)
stage bench_gpu 150 "$OUT/bench_gpu.log" \
  $PY benchmarks/run.py "${DEVICE_ARGS[@]}" \
  --only gpu_mfu,bf16_weights_step_speedup,checkpointing_step_ratio,chunked_head_time_ratio \
  --json "$OUT/bench_gpu.json"
# torch.compile against eager (compilation in untimed warm-up steps), quickstart and base shape
stage bench_compile 90 "$OUT/bench_compile.log" \
  $PY benchmarks/run.py "${DEVICE_ARGS[@]}" --only compile_speedup --json "$OUT/bench_compile.json"
# (run.py exits 1 when a goal is missed: the stage then reads "failed (exit 1)" but its JSON is complete)

# ---------------------------------------------------------------- 4. the sweep (CUDA only)
# MFU at B = 32 and 64 (eager, compile, checkpointing, bf16 weights), profiler tables with fp32 and bf16
# weights, the InfoXLM step ratio
if [ "$DRY" != "1" ]; then
  stage sweep 240 "$OUT/gpu_sweep.log" $PY benchmarks/gpu_sweep.py
fi

# ---------------------------------------------------------------- 5. summary
{
  echo "GPU check, $(date -u), $(elapsed) s in all"
  for name in install tests bench_gpu bench_compile sweep; do printf '  %-14s %s\n' "$name" "${STATUS[$name]:-not run}"; done
  grep -E "passed|failed|error|skipped" "$OUT/pytest.log" | tail -n 3 | sed 's/^/  pytest: /'
  $PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for name in ("bench_gpu.json", "bench_compile.json"):
    path = Path(sys.argv[1]) / name
    if not path.exists():
        print(f"  {name}: missing")
        continue
    doc = json.loads(path.read_text())
    for key, goal in doc.get("goals", {}).items():
        print(f"  {key:26s} {goal['value']:8.3f}  goal {goal['goal']:8s} {'pass' if goal['pass'] else 'MISS'}")
    mfu = doc.get("details", {}).get("gpu_mfu")
    if mfu:
        print(f"  gpu_mfu: {mfu['achieved_tflops']:.1f} TFLOP/s on {mfu['device_name']} (peak bf16 "
              f"{mfu['peak_bf16_tflops']} TFLOP/s), {mfu['step_s'] * 1000:.0f} ms per step, {mfu['model']}")
EOF
} | tee "$OUT/summary.txt"
exit 0
