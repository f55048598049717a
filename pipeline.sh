#!/usr/bin/env bash
# The AMT-Hyp chain: every stage of one scale in order (DESIGN.md section 11). Stage 0 skips finished
# shards and resumes an interrupted one; a later stage is skipped when its artifact exists (delete the
# file to redo it). Re-running after an interruption continues where it stopped.
#
#   bash pipeline.sh            # quick: Cheetah-Vel, 10 training velocities (2-core CPU)
#   bash pipeline.sh smoke      # the Cheetah-Vel chain at tiny settings
#   bash pipeline.sh mw-smoke   # the MetaWorld chain at tiny settings (2 seen tasks, 1 unseen)
#   bash pipeline.sh mw-quick   # MetaWorld, 8 seen tasks
#   bash pipeline.sh test       # the test suite (extra arguments go to pytest)
#
# The first call creates .venv and installs requirements.txt into it (again whenever that file changes);
# AMT_NO_VENV=1 uses the python on PATH instead. RUNS=DIR puts artifacts in DIR/<suite> (default runs/).
# The stage commands below can be copied out and run one by one (inside .venv).
set -euo pipefail
cd "$(dirname "$0")"
SCALE=${1:-quick}
RUNS=${RUNS:-runs}

if [ -z "${AMT_NO_VENV:-}" ]; then
  if [ ! -f .venv/.installed ] || ! cmp -s requirements.txt .venv/.installed; then
    echo "== installing requirements.txt into .venv"
    python3 -m venv .venv
    .venv/bin/python -m pip install -q -r requirements.txt
    cp requirements.txt .venv/.installed
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

if [ "$SCALE" = test ]; then
  shift
  exec python -m pytest "$@"
fi

TASKS=()
case "$SCALE" in
  smoke | quick | paper) SUITE=cheetah-vel ;;
  mw-smoke) SUITE=metaworld; SCALE=smoke; TASKS=(--tasks door-open-v3 drawer-open-v3 drawer-close-v3) ;;
  mw-quick) SUITE=metaworld ;;
  mw-paper) SUITE=metaworld; SCALE=paper ;;
  *) echo "usage: bash pipeline.sh [smoke|quick|paper|mw-smoke|mw-quick|mw-paper|test]" >&2; exit 2 ;;
esac
RUN="$RUNS/$SUITE"
COMMON=(--suite "$SUITE" --scale "$SCALE" --run-dir "$RUN" --no-progress)

T0=$(date +%s)
stage() {  # stage NAME OUTPUT COMMAND...: run a stage unless OUTPUT exists; print its wall time
  local name=$1 out=$2 t
  shift 2
  if [ "$out" != - ] && [ -e "$out" ]; then
    echo "== $name: $out exists, skipped (delete it to redo)"
    return
  fi
  t=$(date +%s)
  echo "== $name: $*"
  "$@"
  echo "== $name: done in $(( $(date +%s) - t ))s"
}

stage "stage 0 (SAC experts)" - python stage0_collect_sac.py "${COMMON[@]}" "${TASKS[@]}"
stage "stage 1 (autoencoder, Eq. 1)" "$RUN/autoencoder.pt" python stage1_autoencoder.py "${COMMON[@]}"
if [ "$SUITE" = metaworld ]; then
  stage "stage 1 (behaviour embedding, Eq. 2)" "$RUN/behavior_embed.pt" python stage1_behavior_embed.py "${COMMON[@]}"
fi
stage "stage 2 (HypLatent, Eqs. 3-5)" "$RUN/hyplatent.pt" python stage2_hyplatent.py "${COMMON[@]}"
stage "stage 3 (HypFormer, Eqs. 6-9)" "$RUN/hypformer.pt" python stage3_hypformer.py "${COMMON[@]}"
stage "evaluation (Table IV or Tables I-III)" "$RUN/results.md" python evaluate.py --suite "$SUITE" --scale "$SCALE" --run-dir "$RUN"

echo "== $SCALE chain finished in $(( $(date +%s) - T0 ))s; artifacts in $RUN"
if [ -f "$RUN/results.md" ]; then echo; cat "$RUN/results.md"; fi
