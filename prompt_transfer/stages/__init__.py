"""The stages a SPoT flow (spot/) and a transferability study (study/) share, typed on one
protocol both their configs satisfy (`plan.Plan`), so that neither is built on the other.

plan.py      the Plan protocol: sources, targets, steps, metrics, seeds, WORK_DIR
runs.py      the runs of a stage: each the base RunSpec and TrainConfig with its own folder,
             task and steps, trained only if its folder does not hold it yet
sources.py   sources, task embeddings, retrieval (similarities), the zero-shot matrix
checks.py    the tasks checked, the macros set per run refused, what --check prints
figures.py   the reports' figures and numbers

May import: base, network, data, prompt, configure, model, transfer, trainer.
"""
