#!/usr/bin/env bash
#SBATCH --job-name=amt-hyp
#SBATCH --cpus-per-task=1
#SBATCH --mem=8G
#SBATCH --time=72:00:00
# One job of the paper-scale chain on a SLURM cluster; slurm/submit.sh submits all three with dependencies.
#   bash slurm/job.sh parent   the shared parent (stage 0 --parent-only)
#   bash slurm/job.sh shard    one stage-0 expert, number $SLURM_ARRAY_TASK_ID: the training tasks first, then
#                              (Cheetah-Vel) the oracle experts at the test velocities
#   bash slurm/job.sh chain    stages 1-3 and the evaluation (give this job a GPU)
#   bash slurm/job.sh count    how many array tasks `shard` has
# SUITE (cheetah-vel | metaworld), SCALE (default paper), SEED (default 1) and RUN_DIR as in pipeline.sh.
# Expects the environment of pipeline.sh (.venv made, or AMT_NO_VENV=1 with the packages installed).
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
if [ -z "${AMT_NO_VENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
SUITE=${SUITE:-cheetah-vel} SCALE=${SCALE:-paper} SEED=${SEED:-1}
RUN=${RUN_DIR:-runs/$SUITE-$SCALE-seed$SEED}
C=(--suite "$SUITE" --scale "$SCALE" --run-dir "$RUN" --seed "$SEED" --no-progress --jobs 1)
case "$SUITE:$SCALE" in
  cheetah-vel:smoke | cheetah-vel:quick | cheetah-vel:paper | metaworld:smoke | metaworld:quick | metaworld:paper) ;;
  *) echo "error: SUITE=$SUITE SCALE=$SCALE: SUITE is cheetah-vel or metaworld, SCALE smoke, quick or paper" >&2; exit 2 ;;
esac
tasks=$(python -c 'import sys, common, stage0_collect_sac as s0
a = common.scale_defaults(s0.Args, s0.SCALES, sys.argv[1], sys.argv[2])
print(*(a.velocities if sys.argv[1] == "cheetah-vel" else a.tasks))' "$SUITE" "$SCALE")  # fails the job if python does
read -ra TASKS <<< "$tasks"
ORACLES=()
if [ "$SUITE" = cheetah-vel ]; then oracles=$(python -c 'import common; print(*common.CHEETAH_TEST)'); read -ra ORACLES <<< "$oracles"; fi

case "${1:-}" in
  count) echo $(( ${#TASKS[@]} + ${#ORACLES[@]} )) ;;
  parent) python stage0_collect_sac.py "${C[@]}" --parent-only ;;
  shard)
    i=${SLURM_ARRAY_TASK_ID:?set by the job array (or by hand: SLURM_ARRAY_TASK_ID=0 bash slurm/job.sh shard)}
    if [ "$i" -lt "${#TASKS[@]}" ]; then
      flag=$([ "$SUITE" = cheetah-vel ] && echo --velocities || echo --tasks)
      python stage0_collect_sac.py "${C[@]}" "$flag" "${TASKS[$i]}"
    else
      python stage0_collect_sac.py "${C[@]}" --shard-dir oracle --velocities "${ORACLES[$((i - ${#TASKS[@]}))]}"
    fi ;;
  chain) THREADS=${THREADS:-${SLURM_CPUS_PER_TASK:-1}} STAGE0_DONE=1 SEED=$SEED RUN_DIR=$RUN AMT_NO_VENV=1 bash pipeline.sh "$([ "$SUITE" = metaworld ] && echo mw-)$SCALE" ;;
  *) echo "usage: bash slurm/job.sh parent|shard|chain|count" >&2; exit 2 ;;
esac
