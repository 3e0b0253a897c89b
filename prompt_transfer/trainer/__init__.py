"""The trainer, one concept per module, in the order of a run:

config.py         RunSpec / TrainConfig (what a run is, how it trains) and their checks
train.py          train and train_together: open runs, start them, fit, finish (library entry)
start.py          the prompt a run starts from: an initialiser, or a transfer strategy
fit.py            one fit for K >= 1 runs on one frozen network (K > 1: one stacked step)
loop.py           the loop and its hooks (log, save, evaluate), pre-emption and divergence stops
weights.py        the frozen network, the prompt joined to it, what trains, a trained run restored
train_state.py    optimizer, TrainState, split/merge by TRAINABLE, the pure jitted train step
run_dir.py        MODEL_DIR: its checks and lock, evaluations, logs, summaries
saving.py         a run's orbax checkpoints, its best one, prompt exports, data iterator states
evaluate.py       evaluate and infer of a trained run
forget.py         what a run that changed the network forgets of the library's tasks
phases.py         prompt then model: the phases of one run
run_record.py     what a run records of itself (model.json, the run's settings)
plan.py           what fits on the devices: memory and step time, before a run
remote.py         every remote read of a run checked before any work

The command lines (`prompt-transfer train`, `eval`, `infer`) live in cli/jobs.py.

May import: base, network, data, prompt, configure, model, transfer.
"""
