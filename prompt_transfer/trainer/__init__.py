"""The trainer, one concept per module, data flowing down this list:

entry.py    RunSpec / TrainConfig and the gin-bound train, evaluate and infer
loop.py     the loop and its hooks (log, save, evaluate), pre-emption and divergence stops
weights.py  the frozen network, the prompt joined to it, what trains, a trained run restored
state.py    optimizer, TrainState, split/merge by TRAINABLE, the pure jitted train step
run_dir.py  MODEL_DIR: config checks, checkpoints, best, prompt exports, logs, summaries
"""
