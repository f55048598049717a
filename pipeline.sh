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
#   bash pipeline.sh test       # the test suite (extra arguments go to pytest; -m "not slow": the fast tier)
#   bash pipeline.sh publish    # every result page under results/ from runs/ and the runs kept beside it
#                               # (MIXED_CODE=1: pool seeds made by different stage code, each page listing which)
#   SEED=2 bash pipeline.sh     # any of the above with another seed (every stage)  -> runs/cheetah-vel-quick-seed2
#   EXPERTS=independent bash pipeline.sh  # stage 0's experts each from its own initialisation, no parent (the
#                               # paper's data; DESIGN.md section 4)          -> runs/cheetah-vel-quick-independent
#   bash pipeline.sh regimes [quick|smoke|mw-quick|mw-smoke]  # per seed of SEEDS (default "1 2 3 4 5"): the chain
#                               # in both regimes, then aggregate.py --regimes -> runs/<suite>-<scale>-regimes
#   FROM_STAGE=2 bash pipeline.sh seeds  # after a change to stage 2: stages 0-1 taken as they are (not even
#                               # checked), stages 2.. made again for every seed where their settings, inputs or
#                               # code changed (a stage whose code fingerprint, settings and inputs are those of its
#                               # artifact is kept), then the aggregate (FROM_STAGE=1..4; the studies below too).
#                               # An interrupted run resumes with or without FROM_STAGE: nothing stale is kept
#   STAGE2_ARGS="--paired-weight 0" FROM_STAGE=2 bash pipeline.sh smoke  # extra flags for one stage of the chain
#                               # (STAGE0_ARGS, STAGE1_ARGS, STAGE2_ARGS, DIFFUSION_ARGS, STAGE3_ARGS, EVAL_ARGS; split
#                               # on spaces), made again in place; stages they do not reach are kept
#   FORK=hinge bash pipeline.sh fork [smoke]  # a fork beside the unchanged default, per seed of SEEDS (default "1 2
#                               # 3"; their default chains made first, before any code change): stages 2-3 and the
#                               # evaluation again with the code as it is now and the *_ARGS above, into
#                               # hyplatent-<FORK>.pt, hypformer-<FORK>.pt, results-<FORK>.json (FROM_STAGE=3: from the
#                               # default HypLatent); then aggregate.py --fork: fork - default, paired by seed
#   bash pipeline.sh seeds [smoke]  # the quick (or smoke) chain for SEEDS (default "1 2 3"), then aggregate.py
#   bash pipeline.sh ablation   # per seed of SEEDS: 10/20/25/35 nested training velocities and the dense
#                               # 40-velocity sweep (after `seeds`; DESIGN.md section 12; SIZES="20 25 35")
#   bash pipeline.sh components [quick]  # per seed of SEEDS (default "1 2 3 4 5"): the chain, then stage 2 with
#                               # parts of its loss removed, stage 3 and the evaluation for each (DESIGN.md section 12)
#   bash pipeline.sh mw-seeds [quick]   # MetaWorld: the mw-quick chain for each of MW_SEEDS (default "1 2 3"), each
#                               # with its own stage 0, then aggregate.py     -> runs/metaworld-quick-aggregate
#   bash pipeline.sh mw-tokens [quick]  # Fig. 5: stage 3 + evaluation (no baselines) for each L of TOKENS, per
#                               # seed of MW_SEEDS, then aggregate.py --tokens -> runs/metaworld-quick-tokens
#
# The first call creates .venv and installs requirements.txt into it (again whenever that file changes);
# AMT_NO_VENV=1 uses the python on PATH instead. RUNS=DIR puts the run directories in DIR (default runs/).
# THREADS=N gives every stage N torch threads, stage 0 and the MetaWorld evaluation N worker processes:
# THREADS=1 for each of two chains run side by side on 2 cores (two threads on cores another process keeps busy
# run several times slower, docs/speed.md; two MetaWorld evaluations with two workers each outgrow 24 GB).
# The stage commands below can be copied out and run one by one (inside .venv).
set -euo pipefail
if [ -n "${RUNS:-}" ]; then RUNS=$(realpath -m -- "$RUNS"); fi  # a relative RUNS is the caller's, not the repository's
SELF=$(realpath -- "$0")  # the targets that run chains call this script again, from the repository
cd "$(dirname "$SELF")"
SCALE=${1:-quick}
RUNS=${RUNS:-runs}

# refused in one line before anything runs or is written: a seed no stage takes, a thread count that is none,
# a RUNS that cannot be written
check_seeds() {  # check_seeds NAME VALUE...: each an integer in [0, 2**32), the seeds every stage takes
  local name=$1 s
  shift
  for s in "$@"; do
    if ! [[ $s =~ ^[0-9]{1,10}$ ]] || (( 10#$s >= 4294967296 )); then
      echo "error: $name=$s: a seed is an integer in [0, 2**32)" >&2; exit 2
    fi
  done
}
set -f  # the lists of seeds unquoted below: split into words, never globbed
check_seeds SEED ${SEED:+"$SEED"}
check_seeds SEEDS ${SEEDS:-}
check_seeds MW_SEEDS ${MW_SEEDS:-}
set +f
if [ -n "${THREADS:-}" ] && ! [[ $THREADS =~ ^[1-9][0-9]{0,4}$ ]]; then
  echo "error: THREADS=$THREADS: give a positive integer (threads and worker processes of each stage)" >&2; exit 2
fi
if [ "$SCALE" != test ] && ! { mkdir -p -- "$RUNS" && probe=$(mktemp -p "$RUNS" .write-test.XXXXXX) \
    && rm -f -- "$probe"; } 2> /dev/null; then
  echo "error: RUNS=$RUNS: cannot create or write to that directory" >&2; exit 2
fi

# A TERM, INT or HUP to this script stops the stage (or the chain of a study) it runs, which would otherwise
# run on, orphaned: each runs in the background (run_child), the trap passes the signal on as TERM (a
# background command ignores INT) and waits for it to end.
CHILD=
run_child() {  # run_child COMMAND...: run it and return its exit status, the traps below able to stop it
  local rc=0
  "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  return $rc
}
stop_child() {  # stop_child EXIT_STATUS
  trap - TERM INT HUP
  if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2> /dev/null || true; wait "$CHILD" 2> /dev/null || true; fi
  exit "$1"
}
trap 'stop_child 143' TERM
trap 'stop_child 130' INT
trap 'stop_child 129' HUP

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

COMMIT=$(python -c 'import provenance; print(provenance.git_commit())' 2>/dev/null || echo unknown)
stage_in() {  # stage_in RUN_DIR NAME COMMAND...: run a stage, print its wall time, log it in RUN_DIR/provenance.jsonl
  local run=$1 name=$2 t s rc=0 stamp resumed=0 remake=0
  shift 2
  mkdir -p "$run"
  stamp=$(mktemp "$run/.stage-start.XXXXXX")
  if compgen -G "$run/*.partial.pt" > /dev/null; then resumed=1; fi  # a stage 1-3 resuming its partial state
  t=$(date +%s)
  echo "== $name: $*"
  run_child "$@" || rc=$?
  s=$(( $(date +%s) - t ))
  # remake 1: the stage wrote its outputs afresh (not skipped as up to date, not resumed), so the times logged
  # for it before do not count
  # (stage 0's shards and partial states lie in stage0/ and oracle/, below this test: it adds up its invocations)
  if [ $resumed -eq 0 ] && [ -n "$(find "$run" -maxdepth 1 -type f -newer "$stamp" ! -name provenance.jsonl ! -name '.*' \
      ! -name '*_summary.md' -print -quit)" ]; then remake=1; fi
  rm -f "$stamp"
  echo "== $name: $([ $rc -eq 0 ] && echo done || echo "failed (exit $rc)") in ${s}s"
  python -c 'import json, sys; print(json.dumps({"event": "stage", "stage": sys.argv[1], "command": sys.argv[2],
    "seconds": int(sys.argv[3]), "exit": int(sys.argv[4]), "remake": int(sys.argv[5]), "commit": sys.argv[6],
    "date": sys.argv[7]}))' "$name" "$*" "$s" "$rc" "$remake" "$COMMIT" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    >> "$run/provenance.jsonl"
  return $rc
}

# FROM_STAGE=N (1-4): stages before N are taken as they are (not even checked); stages N.. run, each made again
# only where its settings, inputs or code changed (the up-to-date test of --skip-done, code fingerprints included)
FROM=${FROM_STAGE:-0}
case "$FROM" in
  [0-4]) ;;
  *) echo "error: FROM_STAGE=$FROM: give 1, 2, 3 or 4 (the first stage to make again), or leave it unset" >&2; exit 2 ;;
esac
study_in() {  # study_in N RUN NAME COMMAND...: a study's stage N (stage_in), unless FROM_STAGE is past it
  local n=$1
  shift
  if [ "$n" -lt "$FROM" ]; then echo "== $2: taken as it is (FROM_STAGE=$FROM)"; return; fi
  stage_in "$@"
}
DONE=(--skip-done)  # a stage is skipped when its artifact is up to date: same settings, inputs and code
# A fork in one command: extra flags for one stage of the chain (split on spaces), e.g.
# FROM_STAGE=2 STAGE2_ARGS="--paired-weight 0" bash pipeline.sh smoke
set -f
X0=(${STAGE0_ARGS:-}) X1=(${STAGE1_ARGS:-}) X2=(${STAGE2_ARGS:-}) XD=(${DIFFUSION_ARGS:-}) X3=(${STAGE3_ARGS:-})
XE=(${EVAL_ARGS:-})
set +f
TH=(${THREADS:+--threads "$THREADS"})  # stages 1-3 and the evaluation
JOBS=(${THREADS:+--jobs "$THREADS"})   # stage 0 and the MetaWorld evaluation: one worker process per thread

if [ "$SCALE" = test ]; then
  shift
  exec python -m pytest "$@"
fi
if [ "${EXPERTS:-one-parent}" != one-parent ] && [[ $SCALE =~ ^(seeds|ablation|components|fork|mw-seeds|mw-tokens)$ ]]; then
  echo "error: EXPERTS=$EXPERTS: the $SCALE study runs the one-parent chains; run each regime's chains with EXPERTS alone" >&2
  exit 2
fi
if [ "$SCALE" = seeds ]; then  # one run directory per seed; each resumes like the chain
  AB=${2:-quick}  # bash pipeline.sh seeds smoke: the same at smoke scale
  DIRS=()
  for s in ${SEEDS:-1 2 3}; do
    run_child env SEED="$s" AMT_NO_VENV=1 bash "$SELF" "$AB"
    DIRS+=("$RUNS/cheetah-vel-$AB-seed$s")
  done
  exec python aggregate.py "${DIRS[@]}" --out "$RUNS/cheetah-vel-$AB-aggregate"
fi
if [ "$SCALE" = regimes ]; then  # both stage-0 regimes per seed (DESIGN.md sections 4 and 12)
  AB=${2:-quick}
  case "$AB" in smoke|quick) P=cheetah-vel-$AB ;; mw-smoke|mw-quick) P=metaworld-${AB#mw-} ;;
    *) echo "error: bash pipeline.sh regimes $AB: give quick, smoke, mw-quick or mw-smoke" >&2; exit 2 ;; esac
  DIRS=()
  for s in ${SEEDS:-1 2 3 4 5}; do
    run_child env SEED="$s" EXPERTS=one-parent AMT_NO_VENV=1 bash "$SELF" "$AB"
    run_child env SEED="$s" EXPERTS=independent AMT_NO_VENV=1 bash "$SELF" "$AB"
    DIRS+=("$RUNS/$P-seed$s" "$RUNS/$P-independent-seed$s")
  done
  exec python aggregate.py "${DIRS[@]}" --regimes --out "$RUNS/$P-regimes"
fi
if [ "$SCALE" = publish ]; then  # every result page under results/ from the run directories that have results
  with() { local f=$1 d; shift; for d in "$@"; do [ -f "$d/$f" ] && echo "$d"; done; return 0; }  # dirs holding $f
  # publish PAGE DIRS... -- AGGREGATE FLAGS...: write PAGE from DIRS and the runs kept beside it in
  # results/data/<page>/ (a run directory of the same name replaces its kept copy), if there are any
  publish() {
    local page=$1 dirs=() flags=() names=" " d
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do dirs+=("$1"); shift; done
    shift || true
    flags=("$@")
    names+="$(python -c 'import sys, aggregate; print(*map(aggregate.archive_name, sys.argv[1:]))' "${dirs[@]}") "
    for d in "results/data/$(basename "$page" .md)"/*/; do  # runs kept with the page join, unless made again
      [ -d "$d" ] && [[ $names != *" $(basename "$d") "* ]] && dirs+=("${d%/}")
    done
    if [ ${#dirs[@]} -eq 0 ]; then echo "== $page: no run directory with results; skipped"; return 0; fi
    echo "== $page: ${dirs[*]}"
    python aggregate.py "${dirs[@]}" "${flags[@]}" ${MIXED_CODE:+--mixed-code} --out "$RUNS/aggregate-$(basename "$page" .md)" \
      --publish "$page"
  }
  without() { local f=$1 d; shift; for d in "$@"; do [ -f "$d/$f" ] || echo "$d"; done; return 0; }  # dirs lacking $f
  # Table IV: the runs made before the conditioned-policy baselines existed (no mt_bc.pt) on one page, those with
  # every row (generators, MAA, MT-BC, Prompt-DT, the experts) on another
  publish results/cheetah-vel.md $(without mt_bc.pt $(with results.json "$RUNS"/cheetah-vel-quick-seed*)) --
  publish results/cheetah-vel-baselines.md $(with mt_bc.pt $(with results.json "$RUNS"/cheetah-vel-quick-seed*)) \
    -- --title "Cheetah-Vel: AMT-Hyp against MAA, MT-BC and Prompt-DT on the same data"
  bases=$(for b in "$RUNS"/cheetah-vel-quick-seed*; do  # the seeds whose ablation finished: all three nested sets
    [ -n "$(with results.json "$b"/n20)" ] && [ -n "$(with results.json "$b"/n25)" ] && [ -n "$(with results.json "$b"/n35)" ] && echo "$b"
  done; true)
  # every training set of those seeds (and no other seed: each row over the same seeds); with none, the kept runs
  publish results/velocity-ablation.md $(for b in $bases; do with results.json "$b" "$b"/n*; done) \
    -- --title "Cheetah-Vel: 10, 20, 25 and 35 training velocities"
  publish results/components.md $(with results-regressor.json "$RUNS"/cheetah-vel-quick-seed*) -- --components
  publish results/dense-sweep.md $(with results-sweep.json "$RUNS"/cheetah-vel-quick-seed*) -- --tag sweep \
    --title "Cheetah-Vel: every velocity of the grid"
  publish results/metaworld.md $(without mt_bc.pt $(with results.json "$RUNS"/metaworld-quick-seed*)) --
  publish results/metaworld-baselines.md $(with mt_bc.pt $(with results.json "$RUNS"/metaworld-quick-seed*)) \
    -- --title "MetaWorld: AMT-Hyp against MAA, MT-BC and Prompt-DT on the same data"
  # the regimes page: both regimes' runs (made at one code); only once an independent-regime run has results
  for P in cheetah-vel metaworld; do
    ind=$(with results.json "$RUNS/$P"-quick-independent-seed*)  # and the one-parent runs of the same seeds
    one=$(for d in $ind; do with results.json "${d/-independent-seed/-seed}"; done; true)
    publish "results/$([ $P = cheetah-vel ] && echo regimes || echo metaworld-regimes).md" $ind $one -- --regimes
  done
  publish results/metaworld-tokens.md $(for d in "$RUNS"/metaworld-quick-seed*; do  # the seeds that ran the tokens
    ls "$d"/results-L*.json > /dev/null 2>&1 && echo "$d"; done; true) -- --tokens
  exit 0
fi
if [ "$SCALE" = ablation ]; then
  AB=${2:-quick}  # bash pipeline.sh ablation smoke: the same at smoke scale (a check of the plumbing)
  # Nested training sets (common.cheetah_nested_velocities): the seed's quick run holds the first 10 in
  # stage0/; the other 25 are trained once into its oracle/ (no stage of the 10-velocity run trains on
  # them); run directory <seed run>/n<N> links N shards into its stage0/ and the test velocities' shards
  # into its oracle/, then runs stages 1-3 and the evaluation there.
  nested() { python -c "import common; print(*common.cheetah_nested_velocities()[$1])"; }
  shard_files() { python -c "import common, sys; print(*(common.task_name('cheetah-vel', v) + '.pt' for v in sys.argv[1:]))" "$@"; }
  DIRS=() BASES=()
  for s in ${SEEDS:-1 2 3}; do
    BASE="$RUNS/cheetah-vel-$AB-seed$s"
    DIRS+=("$BASE") BASES+=("$BASE")
    run_child env SEED="$s" VELOCITIES="$(nested :10)" AMT_NO_VENV=1 bash "$SELF" "$AB"
    study_in 0 "$BASE" "stage 0 (the other 25 training velocities, into oracle/)" python stage0_collect_sac.py \
      --scale "$AB" --run-dir "$BASE" --seed "$s" --no-progress "${JOBS[@]}" --shard-dir oracle --velocities $(nested 10:)
    study_in 4 "$BASE" "evaluation (dense sweep)" python evaluate.py --scale "$AB" --run-dir "$BASE" --seed "$s" \
      --no-progress "${TH[@]}" "${DONE[@]}" --tag sweep --mt-bc "" --prompt-dt "" --macaw "" \
      --velocities $(python -c 'import common; print(*common.CHEETAH_GRID)')
    for n in ${SIZES:-20 25 35}; do  # SIZES=35: one nested set (another process or machine can take the others)
      mkdir -p "$BASE/n$n/stage0" "$BASE/n$n/oracle"
      ln -sfn ../parent.pt "$BASE/n$n/parent.pt"
      for f in $(shard_files $(nested ":$n")); do
        if [ -f "$BASE/stage0/$f" ]; then ln -sfn "../../stage0/$f" "$BASE/n$n/stage0/$f"; else ln -sfn "../../oracle/$f" "$BASE/n$n/stage0/$f"; fi
      done
      for f in $(shard_files $(python -c 'import common; print(*common.CHEETAH_TEST)')); do
        ln -sfn "../../oracle/$f" "$BASE/n$n/oracle/$f"
      done
      run_child env SEED="$s" RUN_DIR="$BASE/n$n" VELOCITIES="$(nested ":$n")" AMT_NO_VENV=1 bash "$SELF" "$AB"
      DIRS+=("$BASE/n$n")
    done
  done
  python aggregate.py "${DIRS[@]}" --out "$RUNS/cheetah-vel-$AB-ablation"
  exec python aggregate.py "${BASES[@]}" --tag sweep --out "$RUNS/cheetah-vel-$AB-sweep"
fi

if [ "$SCALE" = fork ]; then  # a fork against the unchanged default, per seed of SEEDS (the default chains made first)
  AB=${2:-quick}
  F=${FORK:-}
  if ! [[ $F =~ ^[A-Za-z0-9_-]+$ ]]; then
    echo "error: FORK=$F: name the fork (letters, digits, '_' and '-'), e.g. FORK=hinge bash pipeline.sh fork smoke" >&2
    exit 2
  fi
  HL="hyplatent-$F.pt"
  if [ "$FROM" -eq 3 ]; then HL=hyplatent.pt; fi  # FROM_STAGE=3: the fork starts at stage 3, from the default HypLatent
  DIRS=()
  for s in ${SEEDS:-1 2 3}; do
    RUN="$RUNS/cheetah-vel-$AB-seed$s"
    if [ ! -f "$RUN/results.json" ]; then  # the default is never made here: a code fork would make it with the fork's code
      echo "error: $RUN: no default chain to compare with; make it first, before any code change (SEEDS=\"${SEEDS:-1 2 3}\" bash pipeline.sh seeds${2:+ $2})" >&2
      exit 2
    fi
    python provenance.py chain "$RUN" "SEEDS=$s" "FORK=$F" bash pipeline.sh fork "$AB"
    C=(--suite cheetah-vel --scale "$AB" --run-dir "$RUN" --seed "$s" --no-progress "${TH[@]}" "${DONE[@]}")
    study_in 2 "$RUN" "stage 2 (fork $F)" python stage2_hyplatent.py "${C[@]}" --out "$HL" "${X2[@]}"
    study_in 3 "$RUN" "stage 3 (fork $F)" python stage3_hypformer.py "${C[@]}" --hyplatent "$HL" --out "hypformer-$F.pt" \
      "${X3[@]}"
    study_in 4 "$RUN" "evaluation (fork $F)" python evaluate.py "${C[@]}" --hyplatent "$HL" --hypformer "hypformer-$F.pt" \
      --tag "$F" --diffusion "" --mt-bc "" --prompt-dt "" --macaw "" "${XE[@]}"
    DIRS+=("$RUN")
  done
  exec python aggregate.py "${DIRS[@]}" --fork "$F" --out "$RUNS/cheetah-vel-$AB-fork-$F"
fi
if [ "$SCALE" = components ]; then
  AB=${2:-quick}
  # (a) the chain's own stage 2 (Eqs. 3-5 + the paired term); (b) the paired term alone, no discriminator;
  # (c) the paper's losses alone (paired weight 0); (d) a deterministic regressor (no noise, no discriminator)
  VARIANTS=("paired-only:--no-adversarial" "paper-losses:--paired-weight 0" "regressor:--no-adversarial --noise-dim 0")
  DIRS=()
  for s in ${SEEDS:-1 2 3 4 5}; do
    RUN="$RUNS/cheetah-vel-$AB-seed$s"
    run_child env SEED="$s" AMT_NO_VENV=1 bash "$SELF" "$AB"
    python provenance.py chain "$RUN" "SEEDS=$s" bash pipeline.sh components "$AB"  # the study, in the run's provenance
    C=(--suite cheetah-vel --scale "$AB" --run-dir "$RUN" --seed "$s" --no-progress "${TH[@]}" "${DONE[@]}")
    for v in "${VARIANTS[@]}"; do
      tag=${v%%:*}
      read -r -a flags <<< "${v#*:}"
      study_in 2 "$RUN" "stage 2 ($tag)" python stage2_hyplatent.py "${C[@]}" --out "hyplatent-$tag.pt" "${flags[@]}"
      study_in 3 "$RUN" "stage 3 ($tag)" python stage3_hypformer.py "${C[@]}" --hyplatent "hyplatent-$tag.pt" \
        --out "hypformer-$tag.pt"
      study_in 4 "$RUN" "evaluation ($tag)" python evaluate.py "${C[@]}" --hyplatent "hyplatent-$tag.pt" \
        --hypformer "hypformer-$tag.pt" --tag "$tag" --diffusion "" --mt-bc "" --prompt-dt "" --macaw ""  # the baselines: the same in every variant
    done
    DIRS+=("$RUN")
  done
  exec python aggregate.py "${DIRS[@]}" --components --out "$RUNS/cheetah-vel-$AB-components"
fi
if [ "$SCALE" = mw-seeds ] || [ "$SCALE" = mw-tokens ]; then
  AB=${2:-quick}
  DIRS=()
  for s in ${MW_SEEDS:-1 2 3}; do  # each seed a whole chain, stage 0 included (DESIGN.md section 13)
    DIR="$RUNS/metaworld-$AB-seed$s"
    run_child env SEED="$s" AMT_NO_VENV=1 bash "$SELF" "mw-$AB"
    DIRS+=("$DIR")
    if [ "$SCALE" = mw-tokens ]; then
      python provenance.py chain "$DIR" "MW_SEEDS=$s" bash pipeline.sh mw-tokens "$AB"
      # the paper's Fig. 5 list is 8 ... 512; L = 8 is the chain's own hypformer.pt (results.json). Quick: 2 and 32
      # (TOKENS="2 4 16 32" for more points)
      for L in ${TOKENS:-$([ "$AB" = paper ] && echo 16 32 64 128 256 512 || echo 2 32)}; do
        C=(--suite metaworld --scale "$AB" --run-dir "$DIR" --seed "$s" --no-progress "${TH[@]}" "${DONE[@]}")
        study_in 3 "$DIR" "stage 3 (HypFormer, L = $L)" python stage3_hypformer.py "${C[@]}" --num-tokens "$L" \
          --out "hypformer-L$L.pt"
        study_in 4 "$DIR" "evaluation (L = $L)" python evaluate.py "${C[@]}" "${JOBS[@]}" --hypformer "hypformer-L$L.pt" \
          --tag "L$L" --no-baselines --diffusion "" --mt-bc "" --prompt-dt "" --macaw ""
      done
    fi
  done
  if [ "$SCALE" = mw-tokens ]; then
    exec python aggregate.py "${DIRS[@]}" --tokens --out "$RUNS/metaworld-$AB-tokens"
  fi
  exec python aggregate.py "${DIRS[@]}" --out "$RUNS/metaworld-$AB-aggregate"
fi
TASKS=()
case "$SCALE" in
  smoke | quick | paper) SUITE=cheetah-vel ;;
  mw-smoke) SUITE=metaworld; SCALE=smoke; TASKS=(--tasks door-open-v3 drawer-open-v3 drawer-close-v3) ;;
  mw-quick) SUITE=metaworld; SCALE=quick ;;
  mw-paper) SUITE=metaworld; SCALE=paper ;;
  *) echo "usage: bash pipeline.sh [smoke|quick|paper|mw-smoke|mw-quick|mw-paper|test]" >&2; exit 2 ;;
esac
case "${EXPERTS:-one-parent}" in  # the regime of stage 0's experts (DESIGN.md section 4)
  one-parent) EXP=(); REGIME="" ;;
  independent) EXP=(--experts independent); REGIME=-independent ;;
  *) echo "error: EXPERTS=$EXPERTS: give one-parent or independent" >&2; exit 2 ;;
esac
RUN=${RUN_DIR:-"$RUNS/$SUITE-$SCALE$REGIME${SEED:+-seed$SEED}"}
if [ -n "${VELOCITIES:-}" ]; then TASKS=(--velocities $VELOCITIES); fi
COMMON=(--suite "$SUITE" --scale "$SCALE" --run-dir "$RUN" --seed "${SEED:-1}" --no-progress)

T0=$(date +%s)
python provenance.py chain "$RUN" bash pipeline.sh "$@"
run_from() { local n=$1; shift; study_in "$n" "$RUN" "$@"; }  # run_from N NAME COMMAND...: stage N of the chain
if [ -n "${STAGE0_DONE:-}" ]; then  # stage 0 made elsewhere, by a job array (slurm/)
  echo "== stage 0: already made (by a job array); using $RUN/stage0"
else
  run_from 0 "stage 0 (SAC experts)" python stage0_collect_sac.py "${COMMON[@]}" "${JOBS[@]}" "${TASKS[@]}" "${EXP[@]}" "${X0[@]}"
  if [ "$SUITE" = cheetah-vel ]; then  # the upper bound of Table IV: experts at the test velocities (no stage trains on them)
    run_from 0 "stage 0 (oracle experts at the test velocities)" python stage0_collect_sac.py "${COMMON[@]}" \
      "${JOBS[@]}" --shard-dir oracle --velocities $(python -c 'import common; print(*common.CHEETAH_TEST)') "${EXP[@]}" "${X0[@]}"
  fi
fi
run_from 1 "stage 1 (autoencoder, Eq. 1)" python stage1_autoencoder.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}" "${X1[@]}"
if [ "$SUITE" = metaworld ]; then
  run_from 1 "stage 1 (behaviour embedding, Eq. 2)" python stage1_behavior_embed.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}"
fi
run_from 2 "stage 2 (HypLatent, Eqs. 3-5)" python stage2_hyplatent.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}" "${X2[@]}"
run_from 2 "stage 2 (MAA's diffusion, the baseline)" python stage2_diffusion.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}" \
  "${XD[@]}"
run_from 3 "stage 3 (HypFormer, Eqs. 6-9)" python stage3_hypformer.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}" "${X3[@]}"
# the conditioned-policy baselines (DESIGN.md section 15): episodes of the training checkpoints, then one policy
# that takes the condition as input (MT-BC) and Prompt-DT, both trained on them; made again with the evaluation
# (FROM_STAGE=4), since no stage of the method reads them
run_from 4 "offline data (episodes of the training checkpoints)" python offline_data.py "${COMMON[@]}" "${DONE[@]}"
run_from 4 "MT-BC (the baseline)" python baselines/mt_bc.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}"
run_from 4 "Prompt-DT (the baseline)" python baselines/prompt_dt.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}"
if [ "$SUITE" = cheetah-vel ]; then  # offline meta-RL on the same data, adapted at test time (DESIGN.md section 16)
  run_from 4 "MACAW (the baseline)" python baselines/macaw.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}"
else  # online multi-task SAC on the seen tasks, with the experts' budget and demonstrations (DESIGN.md section 16)
  run_from 4 "CARE (the baseline)" python baselines/care.py "${COMMON[@]}" "${TH[@]}" "${DONE[@]}"
fi
run_from 4 "evaluation (Table IV or Tables I-III)" python evaluate.py "${COMMON[@]}" "${TH[@]}" "${JOBS[@]}" "${DONE[@]}" \
  "${XE[@]}"

echo "== $SUITE $SCALE chain finished in $(( $(date +%s) - T0 ))s; artifacts in $RUN"
cat "$RUN/results.md"
