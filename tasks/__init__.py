"""SeqIO task and mixture registrations (source and target tasks).

`import tasks` registers everything with `seqio.TaskRegistry` / `seqio.MixtureRegistry`; the
helpers the registrations use live in the `prompt_transfer` library. Tasks are registered with
T5's standard vocabulary, or with the local SentencePiece file named by $PROMPT_TRANSFER_VOCAB.
"""

from tasks import glue, offline, spot, super_glue, user  # noqa: F401
