#!/usr/bin/env bash
# One paper row x one seed per SLURM array task; requeue-safe.
#
#   scripts/slurm/reaf_array.sh TABLE_OR_ROWS_FILE [SEEDS] [reaf-lightning flags...]
#
#   scripts/slurm/reaf_array.sh table3 3           # prints the sbatch line(s): 30 rows x 3 seeds
#   REAF_SUBMIT=1 scripts/slurm/reaf_array.sh table3 3   # ... and runs them
#   sbatch --array=0-89%8 ... scripts/slurm/reaf_array.sh table3 3   # at most 8 at a time
#
# TABLE_OR_ROWS_FILE: a paper table (table3 ... table7: its experiments, from the package's
# table data) or a file with one run per line: its --config files in order ("recipe row"),
# or only a paper row's config (configs/<table>/<row>.yaml), whose recipe then comes from the
# table data. Blank lines and # comments are skipped; paths may be quoted; CRLF line ends are
# fine. The runs are listed by `python -m reaf_lightning.paper runs` (nothing in the file is
# run). SEEDS (default 3): seeds 0 .. SEEDS-1 of every row, a decimal integer >= 1. Further
# arguments (they start with --) are passed to reaf-lightning, e.g. --trainer.precision
# bf16-mixed.
#
# Array task i runs row i / SEEDS with seed i % SEEDS:
#   reaf-lightning fit --config RECIPE --config ROW --seed_everything SEED --ckpt_path last
# Each seed has its own run directory (<row's default_root_dir>/seed<SEED>), and
# --ckpt_path last continues from that run's last.ckpt when the task runs again (requeued
# after preemption, resubmitted after a time limit or node failure), or starts fresh.
# When reaf-lightning exits with 143 (stopped by SIGTERM, last.ckpt saved), the task
# requeues itself with `scontrol requeue` (REAF_REQUEUE=0 turns this off).
#
# The submit lines ask, per run, for as many tasks and GPUs per node as the run's trainer
# has devices (the ImageNet recipe: 8; CIFAR-100: 1) and for its num_nodes; a table that
# mixes both (Tables 6, 7) gets one line per contiguous range of array indices. They create
# logs/slurm/, where SLURM writes each task's output (it does not create the folder).
#
# Environment: REAF_DRY_RUN=1 prints a task's command instead of running it; REAF_LAUNCHER
# is put before the command (default inside a SLURM job: srun --cpus-per-task=<the job's>,
# which Lightning needs to see one task per GPU and which srun no longer inherits from
# sbatch; empty outside SLURM); REAF_PYTHON is the Python with reaf-lightning installed
# (default: python). Run from the repository root.
#SBATCH --job-name=reaf
#SBATCH --gpus-per-node=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@120
#SBATCH --output=logs/slurm/%A_%a.out
set -euo pipefail

log_dir=logs/slurm
fail() {
    echo "$0: error: $*" >&2
    exit 2
}
# A decimal integer of at most 9 digits (bash would read 08 as octal, 1e3 or 0x10 not at all).
decimal() {
    [[ $2 =~ ^[0-9]{1,9}$ ]] || fail "$1 must be a decimal integer, got '$2'"
    echo $((10#$2))
}

[ $# -ge 1 ] || fail "usage: $0 TABLE_OR_ROWS_FILE [SEEDS] [reaf-lightning flags...]"
source_arg=$1
shift
seeds=3
if [ $# -ge 1 ] && [[ $1 != --* ]]; then
    seeds=$(decimal SEEDS "$1")
    shift
fi
[ "$seeds" -ge 1 ] || fail "SEEDS must be >= 1, got $seeds"

# One line per run: DEVICES, NODES, then its --config files, tab-separated.
listing=$("${REAF_PYTHON:-python}" -m reaf_lightning.paper runs "$source_arg") || exit $?
mapfile -t runs <<<"$listing"
[ -n "$listing" ] && [ ${#runs[@]} -gt 0 ] || fail "no runs in $source_arg"
total=$((${#runs[@]} * seeds))
mkdir -p "$log_dir"

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "${#runs[@]} rows x $seeds seeds = $total array tasks; submit with:"
    # One sbatch per contiguous range of tasks that need the same processes.
    start=0
    for ((i = 0; i < ${#runs[@]}; i++)); do
        IFS=$'\t' read -r devices nodes _ <<<"${runs[i]}"
        next=""
        [ $((i + 1)) -lt ${#runs[@]} ] && IFS=$'\t' read -r next_devices next_nodes _ \
            <<<"${runs[i + 1]}" && next="$next_devices $next_nodes"
        [ "$next" = "$devices $nodes" ] && continue
        submit=(sbatch "--array=$((start * seeds))-$(((i + 1) * seeds - 1))" "--nodes=$nodes"
            "--ntasks-per-node=$devices" "--gpus-per-node=$devices" "$0" "$source_arg" "$seeds"
            "$@")
        printf '  '
        printf '%q ' "${submit[@]}"
        echo
        [ "${REAF_SUBMIT:-0}" != 1 ] || "${submit[@]}"
        start=$((i + 1))
    done
    exit 0
fi
task=$(decimal SLURM_ARRAY_TASK_ID "$SLURM_ARRAY_TASK_ID")
[ "$task" -lt "$total" ] ||
    fail "array task $task is outside 0-$((total - 1)) ($source_arg, $seeds seeds)"
IFS=$'\t' read -r -a fields <<<"${runs[task / seeds]}"
seed=$((task % seeds))
cmd=(reaf-lightning fit)
for file in "${fields[@]:2}"; do cmd+=(--config "$file"); done
cmd+=(--seed_everything "$seed" --ckpt_path last "$@")
default_launcher=""
if [ -n "${SLURM_JOB_ID:-}" ]; then
    default_launcher=srun
    if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
        cpus=$(decimal SLURM_CPUS_PER_TASK "$SLURM_CPUS_PER_TASK")
        default_launcher="srun --cpus-per-task=$cpus"
    fi
fi
launcher=${REAF_LAUNCHER-$default_launcher}
# shellcheck disable=SC2206  # the launcher is words, e.g. "srun --cpus-per-task=8"
[ -z "$launcher" ] || cmd=($launcher "${cmd[@]}")

if [ "${REAF_DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
echo "task $task: ${cmd[*]}" >&2
# Run in the background so that this shell can pass SLURM's SIGTERM on and still see the
# command's exit status (a shell waiting in the foreground would die with the signal).
"${cmd[@]}" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM
status=0
wait "$child" || status=$?
if [ "$status" -gt 128 ] && kill -0 "$child" 2>/dev/null; then
    status=0
    wait "$child" || status=$?  # the first wait was interrupted by the signal
fi
if [ "$status" -eq 143 ] && [ "${REAF_REQUEUE:-1}" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    echo "task $task: preempted; requeueing ${job:-$SLURM_JOB_ID}" >&2
    scontrol requeue "${job:-$SLURM_JOB_ID}"
fi
exit "$status"
