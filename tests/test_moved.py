"""What was written with the flat package's module names still reads after the move into layer
folders (prompt_transfer/base/moved.py, issue 36): a user's gin file or a `convert`ed model's
model.gin that imports `prompt_transfer.t5`, and a run folder whose config.gin names the old
modules, which a relaunch compares line by line."""

import importlib

import gin
import pytest

from prompt_transfer.base import moved
from prompt_transfer.trainer import run_dir


@pytest.mark.parametrize("old", sorted(moved.NEW_NAME))
def test_an_old_module_name_is_the_new_module(old):
    assert importlib.import_module(old) is importlib.import_module(moved.NEW_NAME[old])


def test_a_size_file_with_the_old_import_binds_the_network():
    """What `convert` and `export` wrote beside a model before the move."""
    from prompt_transfer.network import t5

    text = "\n".join(
        [
            "from __gin__ import dynamic_registration",
            "from prompt_transfer import t5",
            "t5.T5Config.emb_dim = 24",
            "t5.T5Config.num_heads = 3",
        ]
    )
    with gin.config_scope(None):
        gin.clear_config()
        try:
            gin.parse_config(text)
            config = gin.get_configurable(t5.T5Config)()
        finally:
            gin.clear_config()
    assert (config.emb_dim, config.num_heads) == (24, 3)


OLD_CONFIG = """from __gin__ import dynamic_registration
from prompt_transfer import decoding
from prompt_transfer import prompts
from prompt_transfer import t5
from prompt_transfer.t5x import partitioning
from prompt_transfer.trainer import config as trainer
from prompt_transfer.transfer import multitask

# Macros:
LEARNING_RATE = 0.3
PROMPT_LENGTH = 4
"""
NEW_CONFIG = """from __gin__ import dynamic_registration
from prompt_transfer.network import decoding
from prompt_transfer.network import t5
from prompt_transfer.prompt import multitask
from prompt_transfer.prompt import prompts
from prompt_transfer.t5x import partitioning
from prompt_transfer.trainer import config as trainer

# Macros:
LEARNING_RATE = 0.3
PROMPT_LENGTH = 4
"""


def test_a_run_folder_from_before_the_move_takes_the_same_config(tmp_path):
    (tmp_path / run_dir.CONFIG_FILE).write_text(OLD_CONFIG)
    run_dir.RunDir(tmp_path).check_config(NEW_CONFIG, overwrite=False, resume=False)  # no refusal
    other = NEW_CONFIG.replace("LEARNING_RATE = 0.3", "LEARNING_RATE = 0.1")
    with pytest.raises(run_dir.RunDirError, match="LEARNING_RATE = 0.3"):
        run_dir.RunDir(tmp_path).check_config(other, overwrite=False, resume=False)
    renamed = NEW_CONFIG.replace("import prompts", "import prompts as p")
    with pytest.raises(run_dir.RunDirError, match="different config"):
        run_dir.RunDir(tmp_path).check_config(renamed, overwrite=False, resume=False)
