#!/usr/bin/env bash
# One paper row x one seed per SLURM array task; requeue-safe.
#
#   scripts/slurm/reaf_array.sh TABLE_OR_ROWS_FILE [SEEDS] [reaf-lightning flags...]
#
#   scripts/slurm/reaf_array.sh table3 3            # prints the sbatch line: 30 rows x 3 seeds
#   sbatch --array=0-89 scripts/slurm/reaf_array.sh table3 3
#   sbatch --array=0-89%8 scripts/slurm/reaf_array.sh table3 3   # at most 8 at a time
#
# TABLE_OR_ROWS_FILE: a paper table (table3 ... table7: every configs/<table>/*.yaml) or a
# file with one run per line: its --config files in order ("recipe row"), or only the row
# file, whose recipe is then read from the "reaf-lightning fit --config configs/recipes/..."
# line every generated row config starts with. Blank lines and lines starting with # are
# skipped. SEEDS (default 3): seeds 0 .. SEEDS-1 of every row. Further arguments are passed
# to reaf-lightning (e.g. --trainer.precision bf16-mixed).
#
# Array task i runs row i / SEEDS with seed i % SEEDS:
#   reaf-lightning fit --config RECIPE --config ROW --seed_everything SEED --ckpt_path last
# Each seed has its own run directory (<row's default_root_dir>/seed<SEED>), and
# --ckpt_path last continues from that run's last.ckpt when the task runs again (requeued
# after preemption, resubmitted after a time limit or node failure), or starts fresh.
# When reaf-lightning exits with 143 (stopped by SIGTERM, last.ckpt saved), the task
# requeues itself with `scontrol requeue` (REAF_REQUEUE=0 turns this off).
#
# Environment: REAF_DRY_RUN=1 prints the command instead of running it; REAF_LAUNCHER is
# put before the command (default: srun inside a SLURM job, which Lightning needs to see
# one task per GPU; empty outside SLURM). Run from the repository root. Rows on several
# GPUs (the ImageNet recipe: 8) need matching --gpus-per-node / --ntasks-per-node.
#SBATCH --job-name=reaf
#SBATCH --gpus-per-node=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@120
#SBATCH --output=logs/slurm/%A_%a.out
set -euo pipefail

usage() {
    echo "usage: $0 TABLE_OR_ROWS_FILE [SEEDS] [reaf-lightning flags...]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
source_arg=$1
shift
seeds=3
if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    seeds=$1
    shift
fi
[ "$seeds" -ge 1 ] || { echo "$0: error: SEEDS must be >= 1, got $seeds" >&2; exit 2; }

# One line per run: its --config files.
runs=()
if [ -f "$source_arg" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        read -r -a files <<<"$line"
        [ ${#files[@]} -gt 0 ] || continue
        runs+=("${files[*]}")
    done <"$source_arg"
elif [ -d "configs/$source_arg" ]; then
    for row in configs/"$source_arg"/*.yaml; do runs+=("$row"); done
else
    echo "$0: error: $source_arg is neither a rows file nor a table (configs/<table>/)" >&2
    exit 2
fi
[ ${#runs[@]} -gt 0 ] || { echo "$0: error: no runs in $source_arg" >&2; exit 2; }
total=$((${#runs[@]} * seeds))

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "${#runs[@]} rows x $seeds seeds = $total array tasks; submit with:"
    echo "  sbatch --array=0-$((total - 1)) $0 $source_arg $seeds${*:+ $*}"
    exit 0
fi
task=$SLURM_ARRAY_TASK_ID
if [ "$task" -lt 0 ] || [ "$task" -ge "$total" ]; then
    echo "$0: error: array task $task is outside 0-$((total - 1)) ($source_arg, $seeds seeds)" >&2
    exit 2
fi
read -r -a files <<<"${runs[$((task / seeds))]}"
seed=$((task % seeds))
if [ ${#files[@]} -eq 1 ]; then  # a row file alone: its recipe from its own comment line
    recipe=$(grep -m1 -o 'configs/recipes/[A-Za-z0-9_.-]*\.yaml' "${files[0]}" || true)
    [ -n "$recipe" ] || { echo "$0: error: no recipe named in ${files[0]}" >&2; exit 2; }
    files=("$recipe" "${files[0]}")
fi
cmd=(reaf-lightning fit)
for file in "${files[@]}"; do cmd+=(--config "$file"); done
cmd+=(--seed_everything "$seed" --ckpt_path last "$@")
default_launcher=""
[ -z "${SLURM_JOB_ID:-}" ] || default_launcher=srun
launcher=${REAF_LAUNCHER-$default_launcher}
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
