#!/usr/bin/env bash
# Paper scale on a SLURM cluster, as three dependent submissions: the parent; one array task per stage-0
# expert, all at once after the parent (they share no state); stages 1-3 and the evaluation on a GPU after
# every expert. Edit the #SBATCH lines of slurm/job.sh (partition, account, times) for your cluster.
#   SUITE=cheetah-vel bash slurm/submit.sh         # 35 experts + 5 oracles
#   SUITE=metaworld SEED=2 bash slurm/submit.sh    # 16 experts
set -euo pipefail
cd "$(dirname "$0")/.."
N=$(bash slurm/job.sh count)
PARENT=$(sbatch --parsable slurm/job.sh parent)
SHARDS=$(sbatch --parsable --dependency="afterok:$PARENT" --array="0-$((N - 1))" slurm/job.sh shard)
sbatch --dependency="afterok:$SHARDS" --gres=gpu:1 --cpus-per-task=8 --mem=48G slurm/job.sh chain
