#!/usr/bin/env bash
# Run the same prompt-transfer subcommand on every host of a Cloud TPU VM pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE checkpoint-info gs://bucket/model/checkpoint_1000
# The repository must already be cloned and installed (`make install`) at the same path on
# every worker; each host reads only its own shards of the checkpoint. A TPU VM joins its slice by
# itself; PROMPT_TRANSFER_DISTRIBUTED=1 only says so explicitly.
set -euo pipefail
tpu=$1 zone=$2; shift 2
repo=${REPO_DIR:-'~/prompt_transfer'}
args=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd $repo && TF_CPP_MIN_LOG_LEVEL=3 PROMPT_TRANSFER_DISTRIBUTED=1 .venv/bin/prompt-transfer $args"
