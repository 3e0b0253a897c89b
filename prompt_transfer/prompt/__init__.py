"""The prompts: each kind's parameters, initialisers and model-side math.

prompts.py     a plain prompt [P, E] and a deep one (keys and values per layer): init, shapes
attention.py   attention over frozen source prompts (ATTEMPT): the per-input mix
multitask.py   related prompts trained together: a shared prompt and each task's part

Where a prompt enters the network is network/prompt_slots.py.

May import: base, network, data.
"""
