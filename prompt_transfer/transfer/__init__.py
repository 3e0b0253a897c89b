"""Prompt transfer, data flowing down this list:

initial.py     how a target prompt starts (SPoT's strategies), given the sources
retrieval.py   which sources are eligible for a target and their ranking
projector.py   cross-model transfer: a trained map between two models' prompt spaces
similarity.py  task-similarity metrics between prompts (and activation signatures)
library.py     the prompt library store
views.py       the views of a prompt that similarities compare (tokens, average, per layer)
peft_io.py     a prompt as a PEFT adapter folder, and back

The kinds of prompt themselves (attention, multi-task) are prompt/'s.

May import: base, network, data, prompt, configure, model.
"""
