"""The SPoT flow: config.py says what it does (FlowConfig), runs.py makes and trains its runs
from the RunSpec and TrainConfig of runs/prompt_tuning.gin, flow.py runs its stages (sources,
task embeddings, retrieval, targets, report), report.py writes its report, plots.py its PNG
figures."""
