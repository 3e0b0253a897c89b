"""The SPoT flow: sources trained, their prompts as task embeddings, retrieval, target runs.

config.py         what a flow does (FlowConfig)
runs.py           its runs from runs/prompt_tuning.gin's RunSpec and TrainConfig, trained once
strategies.py     each target row: where its prompt starts, what trains, its phases
flow.py           the stages: sources, task embeddings, retrieval, targets, report
kept.py           what the target runs that changed the network forget of the sources
report.py         the report (plots.py: its PNG figures); against_study.py: the study's verdict

May import: base, network, data, prompt, configure, model, transfer, trainer.
"""
