#!/usr/bin/env bash
# The AMT-Hyp chain: every stage of one scale in order (DESIGN.md section 11). Each stage skips or
# resumes what an earlier run finished, so re-running after an interruption continues where it stopped.
#
#   bash pipeline.sh            # quick scale: Cheetah-Vel, 10 training velocities (2-core CPU)
#   bash pipeline.sh smoke      # the same chain at tiny settings
#   bash pipeline.sh test       # the test suite (extra arguments go to pytest)
#
# The first call creates .venv and installs requirements.txt into it (again whenever that file changes).
# The stage commands below can be copied out and run one by one (inside .venv).
set -euo pipefail
cd "$(dirname "$0")"
SCALE=${1:-quick}

if [ ! -f .venv/.installed ] || ! cmp -s requirements.txt .venv/.installed; then
  echo "== installing requirements.txt into .venv"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q -r requirements.txt
  cp requirements.txt .venv/.installed
fi
# shellcheck disable=SC1091
. .venv/bin/activate

if [ "$SCALE" = test ]; then
  shift
  exec python -m pytest "$@"
fi

case "$SCALE" in
  smoke | quick | paper) SUITE=cheetah-vel ;;
  mw-quick) SUITE=metaworld ;;
  *) echo "usage: bash pipeline.sh [smoke|quick|mw-quick|paper|test]" >&2; exit 2 ;;
esac

T0=$(date +%s)
stage() {  # stage NAME COMMAND...: run a stage, print its wall time
  local name=$1 t=$(date +%s)
  shift
  echo "== $name: $*"
  "$@"
  echo "== $name: done in $(( $(date +%s) - t ))s"
}

stage "stage 0 (SAC experts)" python stage0_collect_sac.py --suite "$SUITE" --scale "$SCALE"

echo "== $SCALE chain finished in $(( $(date +%s) - T0 ))s; artifacts in runs/$SUITE"
