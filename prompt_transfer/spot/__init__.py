"""The SPoT flow: flow.py runs it (sources, library, task embeddings, retrieval, strategies and
baselines), report.py writes its report, plots.py its PNG figures."""
