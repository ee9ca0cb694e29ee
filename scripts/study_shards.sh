#!/usr/bin/env bash
# `make ablation STUDY_JOBS=n`: run a study command as n shards side by side, shard i with
# `ablation.shard=i/n` on nproc / n torch threads (progress bars off), and exit non-zero if any
# failed. Ctrl-C or SIGTERM stops every shard: a shell without job control starts background
# commands with SIGINT ignored, so without the trap they would train on after make is gone.
# usage: scripts/study_shards.sh N COMMAND [ARG ...]
set -u
n=$1
shift
threads=$(($(nproc 2>/dev/null || echo 1) / n))
((threads > 0)) || threads=1
echo "[ablation] $n shards side by side on $threads torch thread(s) each; progress bars off"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; exit 130' INT TERM
for ((i = 0; i < n; i++)); do
  "$@" "ablation.shard=$i/$n" "train.threads=$threads" train.progress_bar=false &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do
  wait "$p" || failed=1
done
exit $failed
