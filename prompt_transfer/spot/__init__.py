"""The SPoT flow: sources trained, their prompts as task embeddings, retrieval, target runs.

config.py         what a flow does (FlowConfig)
strategies.py     each target row: where its prompt starts, what trains, its phases
flow.py           the stages: the shared ones (stages/), the multi-task source, the targets,
                  what the runs that trained the network forget, the report
report.py         the report; against_study.py: the study's verdict beside it

May import: base, network, data, prompt, configure, model, transfer, trainer, stages.
"""
