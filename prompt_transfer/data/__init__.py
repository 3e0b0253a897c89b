"""The data: SeqIO tasks and their registries, vocabularies, formats and the offline suite.

batches.py          a task's batches: deterministic, sharded per host, resumable
registry.py         what tasks/ uses to register SeqIO tasks and their label sets
file_tasks.py       tasks from a user's TSV or JSONL files
seqio_cache.py      SeqIO's offline cache of a task, read and written
vocab.py            SentencePiece vocabularies (T5's, the shipped one)
text_formats.py     T5's and SPoT's text-to-text formats as SeqIO pre/postprocessors
span_corruption.py  T5's span corruption and prefix LM objectives
ppt.py              PPT's self-supervised pre-training tasks and verbalisers
metrics.py          metric functions, as T5 defines them
offline_data.py     the offline suite built from text on this machine (wordnet.py: its WordNet)

May import: base.
"""
