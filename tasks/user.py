"""Tasks a user recorded with `prompt-transfer add-task` (local TSV/JSONL files)."""

from prompt_transfer.data import file_tasks

USER_TASKS = file_tasks.load_user_tasks()
