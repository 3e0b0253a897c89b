"""SeqIO task and mixture registrations (source and target tasks).

This folder is installed as the package `prompt_transfer_tasks` (so it cannot collide with a
`tasks` module of yours); importing it registers everything with `seqio.TaskRegistry` and
`seqio.MixtureRegistry`. The helpers the registrations use live in the `prompt_transfer`
library. Tasks are registered with T5's standard vocabulary, or with the local SentencePiece
file named by $PROMPT_TRANSFER_VOCAB.
"""

from . import glue, offline, spot, super_glue, user  # noqa: F401
