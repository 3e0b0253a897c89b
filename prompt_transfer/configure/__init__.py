"""Configuration as T5X users write it: gin files, command-line bindings, T5X's habits.

gin_files.py    gin files found by name in gin/, model sizes read from them
gin_utils.py    --gin_file, --gin.MACRO=, --gin_bindings parsed and checked before any work
t5x_habits.py   what each T5X configurable's parameter becomes here (t5x/ declares them)

May import: base, network, data.
"""
