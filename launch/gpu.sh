#!/usr/bin/env bash
# Run a prompt-transfer subcommand on one host's GPUs. JAX preallocates 75% of GPU memory by
# default; the frozen model plus activations usually want more, and the prompt's optimizer state
# is tiny, so give XLA 90% and let it use the faster collective and latency-hiding options.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
exec .venv/bin/prompt-transfer "$@"
