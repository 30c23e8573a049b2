#!/usr/bin/env bash
# CI: objkit as a user installs it. Builds the sdist and the wheel (python -m build makes the
# wheel from the sdist, so both must be complete), checks their metadata (twine check --strict),
# prints the wheel's file list, installs the wheel into a fresh virtual environment (torch
# first: the same pinned CPU build as `make install`), and from a directory outside the checkout
# runs `objkit list-plugins`, `objkit recipes`, a few steps of the packaged recipe `quickstart`
# by name, the dry run of `infoxlm_large`, and a retrieval evaluation of the export. Catches a
# package left out of the wheel and a file read from the source tree. Any failure fails CI. A few minutes (pip's cache warm).
#   make wheel-check          (or: bash .ci/wheel_check.sh; PYTHON=..., TORCH=... to override)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}        # has build and twine (the dev extras)
BASE_PYTHON=${PYTHON:-python3}          # makes the fresh virtual environment
TORCH=${TORCH:-torch==2.13.0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/objkit-wheel-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { echo; echo "== wheel-check: $* ($(date -u +%T))"; }
unset PYTHONPATH

step "python -m build (sdist, then the wheel from it)"
"$PY" -m build --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
ls -l "$WORK/dist"
SDIST=$(ls "$WORK"/dist/objkit-*.tar.gz)
WHEEL=$(ls "$WORK"/dist/objkit-*.whl)

step "twine check --strict"
"$PY" -m twine --no-color check --strict "$SDIST" "$WHEEL"

step "the wheel's files"
"$PY" - "$WHEEL" "$ROOT" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, root = sys.argv[1], Path(sys.argv[2])
names = zipfile.ZipFile(wheel).namelist()
for name in names:
    print(" ", name)
print(f"  ({len(names)} files)")
expected = [f"objkit/{p.relative_to(root / 'objkit').as_posix()}" for p in (root / "objkit").rglob("*.py")
            if "__pycache__" not in p.parts]
expected += [f"objkit_plugins/{p.name}" for p in (root / "plugins").glob("*.py")]
expected += [f"objkit_recipes/{p.name}" for p in (root / "recipes").glob("*.toml")]
missing = [n for n in expected if n not in names]
licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
if missing or not licence:
    sys.exit(f"wheel-check: missing from the wheel: {missing or 'LICENSE'}")
print(f"  every module of objkit/ and plugins/, every recipe, and the LICENSE are in it ({len(expected)} files checked)")
PY

step "fresh virtual environment: $TORCH, then the wheel"
"$BASE_PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
pip_install() {  # quiet unless it fails (then its last lines, and CI fails)
  "$VPY" -m pip install --quiet "$@" > "$WORK/pip.log" 2>&1 || { grep -v "^WARNING: Location" "$WORK/pip.log" | tail -30; exit 1; }
}
pip_install --upgrade pip
# --no-compile: no .pyc for every file of torch and the others up front (minutes on 2 cores);
# what the commands import is compiled as they import it
pip_install --no-compile "$TORCH"
pip_install --no-compile "$WHEEL"
"$VPY" -m pip check
OBJKIT="$WORK/venv/bin/objkit"

mkdir "$WORK/outside"
cd "$WORK/outside"   # nothing of the checkout on sys.path or under the working directory
export OBJKIT_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME="$WORK/hf"

step "imported from the virtual environment"
"$VPY" -c "
import objkit, objkit_plugins, objkit_recipes, objkit.distributed, sys
for m in (objkit, objkit_plugins, objkit_recipes, objkit.distributed):
    assert m.__file__.startswith(sys.prefix), (m.__name__, m.__file__)
    print(' ', m.__name__, m.__file__)
"
"$OBJKIT" --version

step "objkit list-plugins"
"$OBJKIT" list-plugins

step "objkit recipes"
"$OBJKIT" recipes

step "objkit run quickstart (the packaged recipe by name, 4 steps)"
"$OBJKIT" run quickstart -o run --no-progress --set train.steps=4 --set train.batch_size=8 \
  --set train.warmup_steps=0 --set train.log_every=2 --set train.checkpoint_every=4
test -f run/export/config.json
ls run run/export

step "objkit run infoxlm_large --dry-run (a full-size packaged recipe through extends, data unset)"
"$OBJKIT" run infoxlm_large --dry-run | grep -E "^plan for|encoder  |memory: total"

step "objkit eval retrieval on the export"
"$VPY" - <<'PY'
pairs = [("hello", "hallo"), ("good morning", "guten Morgen"), ("thank you", "danke"),
         ("the house", "das Haus"), ("a red car", "ein rotes Auto"), ("water", "Wasser")]
open("src.txt", "w", encoding="utf-8").write("".join(s + "\n" for s, _ in pairs))
open("tgt.txt", "w", encoding="utf-8").write("".join(t + "\n" for _, t in pairs))
PY
"$OBJKIT" eval retrieval run/export --src src.txt --tgt tgt.txt --device cpu --json | tee eval.json
"$VPY" -c "import json; r = json.load(open('eval.json')); assert r['n'] == 6 and 0 <= r['mean'] <= 100, r"

step "passed"
