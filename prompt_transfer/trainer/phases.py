"""Prompt, then model: one run in two phases (ProMoT, Wang et al. 2022, arXiv 2211.00635).

Phase 1 tunes the prompt on the frozen network, from any initialiser or transfer strategy, as
a run of its own in MODEL_DIR/phase1/ (its checkpoints, evaluations and log there). Phase 2 then
tunes the network (MODEL_TRAINABLE: all of it, or a part) with phase 1's final prompt attached,
frozen (MODEL_PROMPT='frozen', ProMoT) or still training ('trains'), with its own learning rate,
optimizer and MODEL_STEPS, in MODEL_DIR itself: MODEL_DIR's checkpoints are phase 2's, holding
what it trained and the prompt, and `eval`, `infer`, `score` and `forget` load them as they load
a model-tuning run. Phase 2 counts on from phase 1's last step (its first checkpoint is
checkpoint_{N1 + SAVE_PERIOD ...}) and reads the data on from where phase 1 stopped, so the run
is one run of N1 + MODEL_STEPS steps.

The boundary is one atomic step: phase 1's final prompt is written (phase1/final_prompt.npy),
then MODEL_DIR/phases.json, whose presence says that phase 1 is done and how phase 2 trains. A
kill before it resumes phase 1 (finished, it only writes the boundary again); a kill after it
resumes phase 2 from its latest checkpoint, or starts it from the boundary's prompt. There is
never a phase-2 checkpoint without the finished phase-1 prompt.
"""

from __future__ import annotations

import dataclasses
import json

from prompt_transfer.base import files, runtime
from prompt_transfer.prompt import prompts
from prompt_transfer.trainer import run_dir
from prompt_transfer.trainer.config import ModelPhase, RunSpec, TrainConfig


def phase1_run(spec: RunSpec, config: TrainConfig) -> tuple[RunSpec, TrainConfig]:
    """Phase 1 as a run of its own: the prompt, in MODEL_DIR/phase1/."""
    return (
        dataclasses.replace(spec, model_dir=str(_phase1_dir(spec)), phase=1),
        dataclasses.replace(config, then_model=ModelPhase()),
    )


def phase2_run(spec: RunSpec, config: TrainConfig, boundary: dict) -> tuple[RunSpec, TrainConfig]:
    """Phase 2 as a run of its own in MODEL_DIR: N1 + MODEL_STEPS steps, of which it trains the
    last MODEL_STEPS (a relaunch with more extends it, as TRAIN_STEPS extends a run), what the
    boundary says trains, phase 2's optimizer; no library entry (its
    prompt belongs to a changed network)."""
    phase = config.then_model
    optimizer = dataclasses.replace(phase.optimizer, learning_rate=phase.learning_rate)
    if not phase.learning_rate:  # optax's Adafactor decays weights apart from the rate
        optimizer = dataclasses.replace(optimizer, weight_decay=0.0)
    return (
        dataclasses.replace(spec, trainable_regex=boundary["trainable"], phase=2),
        dataclasses.replace(
            config,
            steps=boundary["phase1_step"] + phase.steps,  # MODEL_STEPS may extend a run
            relative_steps=None,
            optimizer=optimizer,
            prompt_init=prompts.PromptInit(),
            library_dir=None,
            then_model=ModelPhase(),
        ),
    )


def _phase1_dir(spec: RunSpec):
    return spec.run_dir.file(run_dir.PHASE1)


def write_boundary(spec: RunSpec, config: TrainConfig, summary: dict, final) -> dict:
    """Phase 1 is done: its final prompt, then phases.json (the commit)."""
    phase = config.then_model
    # Phase 2's steps and learning rate stay the config's (MODEL_STEPS may extend it); what
    # its checkpoints hold (what trains) is fixed here.
    boundary = {"phase1_step": summary["step"], "trainable": phase.regex(), "prompt": phase.prompt}

    def write():
        files.save_npy(spec.run_dir.file(run_dir.PHASE1, run_dir.FINAL_PROMPT), final)
        files.atomic_write_text(
            spec.run_dir.file(run_dir.PHASES_FILE), json.dumps(boundary, indent=1)
        )
        return boundary

    return runtime.chief_first("phase boundary", write)
