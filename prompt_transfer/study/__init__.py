"""The transferability study: what each source prompt gives each target, and what predicts it.

config.py    what a study does (StudyConfig)
run.py       its stages: the shared ones (stages/), transfer from each source, scores
analysis.py  each predictor's correlation with the gain, top-1 and regret
report.py    the study's report and figures

May import: base, network, data, prompt, configure, model, transfer, trainer, stages.
"""
