"""SeqIO task and mixture registrations (source and target tasks).

Importing this package registers the project's tasks with `seqio.TaskRegistry` and
`seqio.MixtureRegistry`; helpers the registrations use live in the `prompt_transfer` library.
"""
