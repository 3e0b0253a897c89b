#!/usr/bin/env bash
# The GPU rows of benchmarks/ and a cached pre-training run, on a GPU host that has JAX,
# PyTorch, transformers and PEFT but no TensorFlow (nothing on this path imports it).
#
#   launch/gpu_checks.sh OUT [CACHE.npz]
#
# OUT receives each benchmark's table and JSON lines; with CACHE (from `prompt-transfer
# cache-examples offline_pretraining --output CACHE.npz`, written on a host with TensorFlow),
# two pre-training runs of the shipped size follow side by side on the GPU (dropout 0 and 0.1,
# PRETRAIN_SECONDS each), exported as OUT/pre_d0 and OUT/pre_d1 with their logs. Each part has
# its own time limit, so one that fails leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: launch/gpu_checks.sh OUT [CACHE.npz]}
cache=${2:-}
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
python=${PYTHON:-python3}
part() {  # part NAME SECONDS COMMAND...: run, keep its output, report its time
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" 2>&1 | grep -v Warning | tee "$out/$name.txt"
  echo "[gpu_checks] $name: $((SECONDS - start)) s"
}
nvidia-smi -L
$python -c "import jax, flax, peft, torch; print(jax.__version__, flax.__version__, peft.__version__, torch.__version__, jax.devices())" || exit 3
part peers_base 150 $python benchmarks/peers.py --size base --batch 32 --inputs 512 \
  --targets 8 --dtype bfloat16 --steps 30 --warmup 3
part many_prompts_base 100 $python benchmarks/many_prompts.py --size base --batch 8 \
  --inputs 256 --targets 8 --dtype bfloat16 --ks 1 4 8 --steps 20
part peers_small 60 $python benchmarks/peers.py --size small --batch 32 --inputs 512 \
  --targets 8 --dtype bfloat16 --steps 30 --warmup 3
cp benchmarks/peers.jsonl benchmarks/many_prompts.jsonl "$out/" 2>/dev/null
if [ -n "$cache" ]; then
  seconds=${PRETRAIN_SECONDS:-150}
  run="$python launch/pretrain_cached.py --cache $cache --batch-size 256 --seconds $seconds --log-period 2000"
  timeout $((seconds + 70)) $run --output "$out/pre_d0" > "$out/pre_d0.log" 2>&1 &
  timeout $((seconds + 70)) $run --output "$out/pre_d1" --dropout-rate 0.1 > "$out/pre_d1.log" 2>&1 &
  wait
  tail -n 3 "$out/pre_d0.log" "$out/pre_d1.log"
fi
