"""The trainer, one concept per module, in the order of a run:

config.py         RunSpec / TrainConfig (what a run is, how it trains) and their checks
train.py          train and train_together: open runs, start them, fit, finish (library entry)
start.py          the prompt a run starts from: an initialiser, or a transfer strategy
fit.py            one fit for K >= 1 runs on one frozen network (K > 1: one stacked step)
loop.py           the loop and its hooks (log, save, evaluate), pre-emption and divergence stops
weights.py        the frozen network, the prompt joined to it, what trains, a trained run restored
train_state.py    optimizer, TrainState, split/merge by TRAINABLE, the pure jitted train step
run_dir.py        MODEL_DIR: its checks and lock, evaluations, logs, summaries
checkpointing.py  a run's orbax checkpoints, its best one, prompt exports, data iterator states
evaluate.py       evaluate and infer of a trained run

The command lines (`prompt-transfer train`, `eval`, `infer`) live in cli/jobs.py.
"""
