#!/usr/bin/env bash
# The AMT-Hyp chain: every stage of one scale in order (DESIGN.md section 11), in that scale's own run
# directory, runs/<suite>-<scale>/. Stage 0 skips finished shards and resumes an interrupted one; a later
# stage is skipped only when its artifact was made with the same settings from the same inputs
# (--skip-done), else it is made again. Re-running after an interruption continues where it stopped.
#
#   bash pipeline.sh            # quick: Cheetah-Vel, 10 training velocities (2-core CPU)  -> runs/cheetah-vel-quick
#   bash pipeline.sh smoke      # the Cheetah-Vel chain at tiny settings                   -> runs/cheetah-vel-smoke
#   bash pipeline.sh paper      # Cheetah-Vel at the paper's settings (a GPU machine)      -> runs/cheetah-vel-paper
#   bash pipeline.sh mw-smoke   # MetaWorld at tiny settings (2 seen tasks, 1 unseen)      -> runs/metaworld-smoke
#   bash pipeline.sh mw-quick   # MetaWorld, 8 seen + 8 unseen tasks                       -> runs/metaworld-quick
#   bash pipeline.sh mw-paper   # MetaWorld at MAA's size                                  -> runs/metaworld-paper
#   bash pipeline.sh test       # the test suite (extra arguments go to pytest)
#   SEED=2 bash pipeline.sh     # any of the above with another seed (every stage)  -> runs/cheetah-vel-quick-seed2
#   bash pipeline.sh seeds      # the quick chain for SEEDS (default "1 2 3"), then aggregate.py over them
#
# The first call creates .venv and installs requirements.txt into it (again whenever that file changes);
# AMT_NO_VENV=1 uses the python on PATH instead. RUNS=DIR puts the run directories in DIR (default runs/).
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
if [ "$SCALE" = seeds ]; then  # one run directory per seed; each resumes like the chain
  DIRS=()
  for s in ${SEEDS:-1 2 3}; do
    SEED=$s AMT_NO_VENV=1 bash "$0" quick
    DIRS+=("$RUNS/cheetah-vel-quick-seed$s")
  done
  exec python aggregate.py "${DIRS[@]}" --out "$RUNS/cheetah-vel-quick-aggregate"
fi

TASKS=()
case "$SCALE" in
  smoke | quick | paper) SUITE=cheetah-vel ;;
  mw-smoke) SUITE=metaworld; SCALE=smoke; TASKS=(--tasks door-open-v3 drawer-open-v3 drawer-close-v3) ;;
  mw-quick) SUITE=metaworld; SCALE=quick ;;
  mw-paper) SUITE=metaworld; SCALE=paper ;;
  *) echo "usage: bash pipeline.sh [smoke|quick|paper|mw-smoke|mw-quick|mw-paper|test]" >&2; exit 2 ;;
esac
RUN="$RUNS/$SUITE-$SCALE${SEED:+-seed$SEED}"
COMMON=(--suite "$SUITE" --scale "$SCALE" --run-dir "$RUN" --seed "${SEED:-1}" --no-progress)

T0=$(date +%s)
stage() {  # stage NAME COMMAND...: run a stage and print its wall time
  local name=$1 t
  shift
  t=$(date +%s)
  echo "== $name: $*"
  "$@"
  echo "== $name: done in $(( $(date +%s) - t ))s"
}

stage "stage 0 (SAC experts)" python stage0_collect_sac.py "${COMMON[@]}" "${TASKS[@]}"
if [ "$SUITE" = cheetah-vel ]; then  # the upper bound of Table IV: experts at the test velocities (no stage trains on them)
  stage "stage 0 (oracle experts at the test velocities)" python stage0_collect_sac.py "${COMMON[@]}" \
    --shard-dir oracle --velocities $(python -c 'import common; print(*common.CHEETAH_TEST)')
fi
stage "stage 1 (autoencoder, Eq. 1)" python stage1_autoencoder.py "${COMMON[@]}" --skip-done
if [ "$SUITE" = metaworld ]; then
  stage "stage 1 (behaviour embedding, Eq. 2)" python stage1_behavior_embed.py "${COMMON[@]}" --skip-done
fi
stage "stage 2 (HypLatent, Eqs. 3-5)" python stage2_hyplatent.py "${COMMON[@]}" --skip-done
stage "stage 3 (HypFormer, Eqs. 6-9)" python stage3_hypformer.py "${COMMON[@]}" --skip-done
stage "evaluation (Table IV or Tables I-III)" python evaluate.py "${COMMON[@]}" --skip-done

echo "== $SUITE $SCALE chain finished in $(( $(date +%s) - T0 ))s; artifacts in $RUN"
cat "$RUN/results.md"
