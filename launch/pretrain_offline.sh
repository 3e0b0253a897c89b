#!/usr/bin/env bash
# Pre-train the project's small T5 on the offline corpus and export it (the shipped model).
#   launch/pretrain_offline.sh [MODEL_DIR] [extra --gin.X=... overrides]
# Uses a GPU through JAX when one is present, the CPU otherwise; a CPU run can go in the
# background (it resumes from its latest checkpoint when started again with the same MODEL_DIR).
# On an accelerator host without TensorFlow, write example caches here and train there:
#   prompt-transfer cache-examples offline_span_corruption --inputs-length 64 \
#     --targets-length 16 --passes 20 --output sc.npz   (and the same for offline_prefix_lm)
#   python launch/pretrain_cached.py --cache sc.npz --cache lm.npz --output DIR --seconds 600
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/pretrain_offline}; shift || true
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/prompt-transfer prepare-offline
.venv/bin/prompt-transfer train --gin_file=experiments/pretrain_offline \
  --gin.MODEL_DIR="'$run'" "$@"
rm -rf "$run/export"
.venv/bin/prompt-transfer export "$run" --size offline_small --output "$run/export" \
  --dtype bfloat16
echo "to ship: replace prompt_transfer/assets/offline_t5/{checkpoint,model.gin} with those in"
echo "$run/export, then run: .venv/bin/python -m prompt_transfer.base.assets (rewrites SHA256SUMS)"
