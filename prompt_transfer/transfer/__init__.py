"""Prompt transfer, data flowing down this list:

initial.py     how a target prompt starts (SPoT's strategies), given the sources
attention.py   a prompt mixed per input from frozen sources (ATTEMPT): the trained module
retrieval.py   which sources are eligible for a target and their ranking
projector.py   cross-model transfer: a trained map between two models' prompt spaces
similarity.py  task-similarity metrics between prompts (and activation signatures)
library.py     the prompt library store
"""
