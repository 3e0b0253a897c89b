"""The frozen network: T5 as T5X names it, how it is sharded, read, written and decoded.

t5.py            the T5 encoder-decoder (flax.linen), T5X parameter names and logical axes
prompt_slots.py  where a prompt enters: the encoder input, a deep prompt's keys and values
partitioning.py  logical axis rules, the (data, model) mesh, parameter shardings
checkpoints.py   T5X checkpoints (legacy msgpack, orbax) read, restored sharded, written
decoding.py      greedy, sampling and beam search over a cache
hf_t5.py         a Hugging Face T5 checkpoint converted to T5X's names

May import: base.
"""
