"""T5X's configurables under T5X's names, so that a T5X user's bindings and gin files work here.

`--gin.utils.SaveCheckpointConfig.period=500`, `train/utils.DatasetConfig.batch_size = 8`,
`--gin.partitioning.PjitPartitioner.num_partitions=8`,
`--gin.trainer.Trainer.num_microbatches=4`: each module here (`utils`, `partitioning`,
`trainer`, `adafactor`, `train`, and Flaxformer's `relative_position_biases`) declares the
configurables of T5X's module of that name with their parameters, so gin parses a binding as T5X
does and refuses a misspelt parameter itself. They configure nothing on their own: after gin has
parsed a launch, `t5x_habits.fold` moves every value bound to them into the project's one schema
(SAVE_PERIOD, BATCH_SIZE, NUM_PARTITIONS, ...), where it is typed and range-checked like any
macro, or refuses it in one line that says what does the job here. `t5x_habits.HABITS` is the
table of what each parameter becomes; docs/t5x_users.md prints it for people.

Where T5X itself is not installed, `from t5x import utils` in a user's gin file reads these
modules (`t5x_habits.stand_in`), so the gin files a T5X job was launched with parse unchanged.

May import: every folder but cli.
"""
