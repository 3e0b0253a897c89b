#!/usr/bin/env bash
# The same prompt-transfer command on several hosts with T5X's explicit flags: process i runs
# on the i-th host, process 0's host is the coordinator.
#   launch/multihost.sh HOST0,HOST1 -- train --gin_file=... --gin.MODEL_DIR="'gs://bucket/run'"
# Hosts named `localhost` run here (several local processes share this host's devices; with
# JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=2 each gets 2 CPU
# devices: a whole multi-host run on one machine). Others are reached with ssh, and need the
# repository installed (`make install`) at the same path. PORT (default 12355) is the
# coordinator's port. Every process's output goes to multihost.<i>.log here; process 0's also
# to the terminal. The exit status is the first failing process's.
set -euo pipefail
hosts=(${1//,/ }); shift
[ "${1:-}" = "--" ] && shift
repo=$(cd "$(dirname "$0")/.." && pwd)
flags=(--coordinator_address="${hosts[0]}:${PORT:-12355}" --process_count=${#hosts[@]})
pids=()
for i in "${!hosts[@]}"; do
  command=("$repo/.venv/bin/prompt-transfer" "$@" "${flags[@]}" --process_index="$i")
  if [ "${hosts[$i]}" = localhost ]; then
    (cd "$repo" && TF_CPP_MIN_LOG_LEVEL=3 "${command[@]}") > "multihost.$i.log" 2>&1 &
  else
    ssh "${hosts[$i]}" "cd $repo && TF_CPP_MIN_LOG_LEVEL=3 $(printf '%q ' "${command[@]}")" \
      > "multihost.$i.log" 2>&1 &
  fi
  pids+=($!)
done
tail -f multihost.0.log --pid="${pids[0]}" &
status=0
for pid in "${pids[@]}"; do wait "$pid" || { code=$?; [ "$status" = 0 ] && status=$code; }; done
exit "$status"
