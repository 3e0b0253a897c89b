"""The machinery every layer stands on; it imports no other folder of the package.

errors.py      UserError (exit 2), Diverged (3), Preempted (4); what a refusal looks like
paths.py       the one path layer (local and gs://), what a folder or file path must not be
files.py       the one atomic write, .npy and JSON files read back, process 0's writes
environment.py the environment variables that change defaults
settings.py    the one schema of every setting (macro): type, range, the line that refuses it
runtime.py     how a process starts and ends: multi-host join, barriers, compile cache, exits
tf_import.py   TensorFlow and SeqIO, imported on first use and quietly
assets.py      the shipped vocabulary and model (prompt_transfer/assets/), hash-checked
moved.py       the flat package's old module names, still importable

May import: nothing of the package.
"""
