#!/usr/bin/env bash
# Run a prompt-transfer subcommand on this machine (CPU or the local GPUs), with TCMalloc where
# it is installed (launch/fast_malloc.sh).
#   launch/local.sh checkpoint-info gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
exec launch/fast_malloc.sh .venv/bin/prompt-transfer "$@"
