#!/usr/bin/env bash
# submit-study.sh: submits a whole scaling study to Slurm: one job per point (P ranks x T threads,
# each through jobs/train.sbatch, one after another: they share a job name and
# --dependency=singleton, so points never compete for the node), a communication benchmark job per
# P > 1 (`hyperrnn bench --comm`), and an analysis job (--dependency=afterany on all of them) that
# writes the study's CSV, PNGs and the performance model's predictions into the study directory.
#
#   jobs/submit-study.sh [STUDY.ini] [--out DIR] [--dry-run]
#   jobs/submit-study.sh jobs/configs/study-weak-pilf.ini --out runs/weak-pilf
#
# Parameters
#   STUDY.ini   the study (default jobs/configs/study-weak-gauss-moe.ini): kind = weak | strong, config
#               (the model configuration), ranks (the P list), threads (the T list), steps, warmup,
#               batch-per-rank and shards-per-rank (weak), options (more hyperrnn train options);
#               see docs/scaling.md
#   --out DIR   the study directory (default runs/study-NAME); it must not exist or be empty
#   --dry-run   check everything and print the sbatch commands, submit nothing
# Environment: HYPERRNN_BIN (default `hyperrnn` on PATH), HYPERRNN_LAUNCHER and the rest of
# jobs/train.sbatch's; sbatch options for every job in HYPERRNN_SBATCH_OPTS (e.g. "-p batch").
# Before anything is submitted, every point is checked: the study file (an empty P list, a P that
# does not divide the shards, a P above the experts, an unknown model), `hyperrnn train --dry-run
# --ranks P` with the point's options, and `sbatch --test-only` for its resources. Any failure:
# one line, exit 2, nothing submitted.
# Outputs (DIR): study.json (the plan), points/P<P>-T<T>/ (run directories), comm/P<P>.csv,
# logs/ (Slurm output files), and from the analysis job study.csv, model.csv, model.md,
# study-scaling.png, study-phases.png, study-model.png (`analysis/hyperrnn-analysis scaling DIR`
# makes them again at any time). A point that fails is marked failed there.
# A comparison study (kind = compare: jobs/configs/study-compare*.ini, keys in
# analysis/hyperrnn_analysis/comparison.py, docs/results.md) is submitted the same way: one job per
# run (one rank, one thread; no singleton, Slurm packs them onto the free cores), then the analysis
# job (`hyperrnn-analysis comparison DIR`: study.csv, best.csv, marathon.csv, comparison-*.png,
# index.html); DIR/commands.sh holds every run's command. Refused before anything is submitted: a
# cell whose kv-pairs do not fit its seq-len, an unknown model, an empty learning-rate sweep.
# Leaves out: building binaries; more than one node per point on the development cluster.
set -uo pipefail
me=submit-study.sh
fail() { echo "$me: error: $*" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
tool=$repo/analysis/hyperrnn-analysis
study=$repo/jobs/configs/study-weak-gauss-moe.ini out="" dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || fail "--out needs a directory"; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) fail "unknown option '$1' (see $me --help)" ;;
    *) study=$1; shift ;;
  esac
done
[ -f "$study" ] || fail "study file '$study' not found"
name=$(basename "$study" .ini)
[ -n "$out" ] || out=runs/study-$name
out=$(realpath -m "$out")
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2> /dev/null)" ]; then fail "--out '$out' exists and is not empty (choose another)"; fi
bin=${HYPERRNN_BIN:-$(command -v hyperrnn || true)}
[ -n "$bin" ] && [ -x "$bin" ] || fail "hyperrnn not found: set HYPERRNN_BIN or put it on PATH"
command -v sbatch > /dev/null || fail "sbatch not found (is Slurm here? cluster/slurm-up.sh brings up a development one)"

# 1. the plan: a header ("# NAME: ...", "# analysis: scaling|comparison"), then one line per run,
#    "NAME P T CONFIG OPTIONS..." (the study file is checked here)
plan=$("$tool" study-plan "$study" --out "$out" 2>&1) || fail "$(sed 's/^hyperrnn-analysis: error: //' <<< "$plan" | tail -1)"
analysis=$(sed -n 's/^# analysis: \([a-z]*\)$/\1/p' <<< "$plan")
case "$analysis" in scaling|comparison) ;; *) fail "study-plan printed no '# analysis:' line (a toolkit older than this script?)" ;; esac
# 2. every run as hyperrnn and Slurm would see it (Slurm once per distinct P x T)
extra=()
read -r -a extra <<< "${HYPERRNN_SBATCH_OPTS:-}"
declare -a names ranks threads configs opts
declare -A slurm_ok=()
while read -r n P T config rest; do
  [ -z "$n" ] || [ "${n:0:1}" = "#" ] && continue
  eval "config=$config"
  eval "args=($rest)"
  msg=$("$bin" train --config "$config" "${args[@]}" --dry-run --ranks "$P" 2>&1) ||
    fail "run $n: $(grep -m1 error <<< "$msg" | sed 's/^hyperrnn: error: //')"
  if [ -z "${slurm_ok[$P-$T]:-}" ]; then
    msg=$(sbatch --test-only "${extra[@]}" -n "$P" --cpus-per-task "$T" --wrap true 2>&1) ||
      fail "run $n: Slurm cannot run $P rank(s) x $T thread(s) here: $(tail -1 <<< "$msg")"
    slurm_ok[$P-$T]=1
  fi
  names+=("$n"); ranks+=("$P"); threads+=("$T"); configs+=("$config"); opts+=("$rest")
done <<< "$plan"
[ "${#names[@]}" -gt 0 ] || fail "the study has no runs"

run() {  # prints the command; submits it unless --dry-run; echoes the job id
  if [ "$dry" = 1 ]; then printf '%q ' "$@" >&2; echo >&2; echo "DRYRUN"; return; fi
  "$@" | cut -d';' -f1
}
if [ "$dry" = 0 ]; then
  mkdir -p "$out"/logs && { [ "$analysis" = comparison ] || mkdir -p "$out"/{points,comm}; } && "$tool" study-plan "$study" --out "$out" --write > /dev/null ||
    fail "cannot write the study directory '$out'"
fi
job=study-$name-$$
# A scaling study's points run one after another (one job name, --dependency=singleton: a point
# never competes with another for the node, its times are its own); a comparison's runs are one
# rank and one thread each and Slurm packs them onto the free cores.
order=(--dependency=singleton)
[ "$analysis" = comparison ] && order=()
ids=()
for i in "${!names[@]}"; do
  eval "args=(${opts[i]})"
  log=$out/logs/${names[i]//\//-}-%j.out
  id=$(run sbatch --parsable "${extra[@]}" -J "$job" "${order[@]}" -n "${ranks[i]}" \
       --cpus-per-task "${threads[i]}" -o "$log" "$repo/jobs/train.sbatch" "${configs[i]}" "${args[@]}") ||
    fail "sbatch failed for run ${names[i]}"
  ids+=("$id")
  if [ "$analysis" = scaling ]; then echo "$me: point ${names[i]}: job $id"; else echo "$me: run ${names[i]}: job $id"; fi
done
for P in $(printf '%s\n' "${ranks[@]}" | sort -nu); do
  [ "$P" -gt 1 ] && [ "$analysis" = scaling ] || continue
  launch="mpirun"
  if [ "${HYPERRNN_LAUNCHER:-}" = srun ] || { [ -z "${HYPERRNN_LAUNCHER:-}" ] && srun --mpi=list 2>&1 | grep -qw pmix; }; then
    launch="srun --mpi=pmix"
  fi
  id=$(run sbatch --parsable "${extra[@]}" -J "$job" --dependency=singleton -n "$P" -o "$out/logs/comm-P$P-%j.out" \
       --wrap "$launch '$bin' bench --comm --threads 1 > '$out/comm/P$P.csv'") || fail "sbatch failed for the comm benchmark"
  ids+=("$id")
  echo "$me: communication benchmark on $P ranks: job $id"
done
dep=$(IFS=:; echo "${ids[*]}")
id=$(run sbatch --parsable "${extra[@]}" -J "$job-analysis" --dependency="afterany:$dep" -n 1 -o "$out/logs/analysis-%j.out" \
     --wrap "'$tool' $analysis '$out'") || fail "sbatch failed for the analysis job"
echo "$me: analysis: job $id (after every point); results in $out"
