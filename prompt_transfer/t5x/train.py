"""T5X's `train` entry point (`train_script.train` in its gin files), as a gin name
(t5x_habits.fold): total_steps is TRAIN_STEPS, relative_steps TRAIN_STEPS_RELATIVE, and so on."""

from __future__ import annotations


def train(
    *,
    model=None,
    train_dataset_cfg=None,
    train_eval_dataset_cfg=None,
    infer_eval_dataset_cfg=None,
    checkpoint_cfg=None,
    partitioner=None,
    trainer_cls=None,
    model_dir=None,
    total_steps=None,
    eval_steps=None,
    eval_period=None,
    stats_period=None,
    random_seed=None,
    use_hardware_rng=False,
    summarize_config_fn=None,
    inference_evaluator_cls=None,
    get_dataset_fn=None,
    concurrent_metrics=True,
    actions=None,
    train_eval_get_dataset_fn=None,
    run_eval_before_training=False,
    train_state_initializer_cls=None,
    use_orbax=True,
    verify_matching_vocabs_fn=None,
    gc_period=0,
    relative_steps=None,
):
    """Here only its bindings count (t5x_habits.fold)."""
    return None
