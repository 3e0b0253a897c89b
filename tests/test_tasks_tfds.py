"""Every TFDS-backed task yields encoder-decoder batches (tfds.testing.mock_data, offline)."""

import re

import numpy as np
import pytest

from prompt_transfer.base.tf_import import import_seqio
from prompt_transfer.data import batches, registry

LENGTHS = {"inputs": 64, "targets": 8}


def _tfds_tasks():
    seqio = import_seqio()
    batches.load_registrations()
    return sorted(
        n
        for n in seqio.TaskRegistry.names()
        if isinstance(seqio.get_mixture_or_task(n).source, seqio.TfdsDataSource)
        and not n.endswith(T5X_NAMES)  # the same tasks under T5's and prompt-tuning's names
    )


T5X_NAMES = ("_v002", "_v102", "_v200", "_v200_examples")


@pytest.fixture(scope="module", autouse=True)
def mock_tfds(anchors, tmp_path_factory):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4, data_dir=str(tmp_path_factory.mktemp("tfds"))):
        yield


def test_glue_and_super_glue_are_registered():
    names = set(_tfds_tasks())
    assert {"glue_rte", "glue_mnli_matched", "glue_mnli_mismatched", "glue_stsb"} <= names
    assert {
        f"super_glue_{t}" for t in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
    } <= names


SPAN_CORRUPTION = {"spot_source_c4"}


@pytest.mark.parametrize("name", [n for n in _tfds_tasks() if n not in SPAN_CORRUPTION])
def test_task_yields_encoder_decoder_batches(name):
    ds = batches.batched_dataset(
        name, "validation", LENGTHS, batch_size=2, seed=0, shuffle=False, num_epochs=1
    )
    batch = next(ds.as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (2, 64)
    assert batch["decoder_target_tokens"].shape == (2, 8)
    np.testing.assert_array_equal(
        batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1]
    )
    assert (batch["encoder_input_tokens"][:, 0] > 0).all()
    task = import_seqio().get_mixture_or_task(name)
    example = next(
        task.get_dataset(
            None, "validation", shuffle=False, try_in_mem_cache=False
        ).as_numpy_iterator()
    )
    # T5's format: the task's name, then "field: value" pairs.
    assert re.match(r"^[a-z0-9]+ [a-z0-9_]+: ", example["inputs_pretokenized"].decode())
    labels = registry.class_labels(name)
    if labels:
        assert example["targets_pretokenized"].decode() in (*labels, "<unk>")


def test_t5_and_prompt_tunings_names_read_the_same_examples():
    """glue_sst2_v002 and super_glue_rte_v102 (T5's names) are this project's tasks;
    taskless_glue_sst2_v200_examples (prompt-tuning's) the same examples without the task's
    name opening the input."""
    seqio = import_seqio()
    batches.load_registrations()

    def first(name):
        ds = seqio.get_mixture_or_task(name).get_dataset(
            None, "validation", shuffle=False, try_in_mem_cache=False
        )
        return next(ds.as_numpy_iterator())

    ours, t5s, taskless = (
        first("glue_sst2"),
        first("glue_sst2_v002"),
        first("taskless_glue_sst2_v200_examples"),
    )
    assert t5s["inputs_pretokenized"] == ours["inputs_pretokenized"]
    text = ours["inputs_pretokenized"].decode()
    assert text.startswith("sst2 sentence: ")
    assert taskless["inputs_pretokenized"].decode() == text.removeprefix("sst2 ")
    assert taskless["targets_pretokenized"] == ours["targets_pretokenized"]
    assert registry.class_labels("taskless_glue_sst2_v200_examples") == ("negative", "positive")
    rte = first("super_glue_rte_v102")["inputs_pretokenized"]
    assert rte == first("super_glue_rte")["inputs_pretokenized"]


def test_glue_format_matches_t5():
    seqio = import_seqio()
    example = next(
        seqio.get_mixture_or_task("glue_rte")
        .get_dataset(None, "train", shuffle=False, try_in_mem_cache=False)
        .as_numpy_iterator()
    )
    text = example["inputs_pretokenized"].decode()
    assert text.startswith("rte sentence1: ") and " sentence2: " in text


def test_mixtures_are_examples_proportional_with_a_cap(monkeypatch):
    seqio = import_seqio()
    # Mock data has no split sizes; give every task 2^20 examples except RTE's 2,490.
    sizes = lambda source, split: 2_490 if "rte" in source.tfds_dataset.name else 2**20
    monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", sizes)
    mixture = seqio.get_mixture_or_task("glue_and_super_glue")
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates["glue_rte"] == 2_490 and rates["glue_qqp"] == 2**19  # capped at K = 2^19
    assert len(rates) == 9 + 8
    stream = batches.BatchStream("glue_and_super_glue", LENGTHS, batch_size=4, seed=0)
    assert next(stream)["encoder_input_tokens"].shape == (4, 64) and stream.position == 1


def test_spot_sources_and_targets_have_stable_names():
    from prompt_transfer_tasks import spot

    seqio = import_seqio()
    names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    file_based = {"docnli", "cxc", "cr"}  # registered when their data directory is set
    assert len(spot.SOURCES) == 16 and len(spot.TARGETS) == 10
    assert {f"spot_source_{s}" for s in spot.SOURCES if s not in file_based} <= names
    assert {f"spot_target_{t}" for t in spot.TARGETS if t not in file_based} <= names
    mixture = seqio.get_mixture_or_task("spot_sources")
    assert {t.name for t in mixture.tasks} >= {"glue_mnli_matched", "spot_source_squad"}


def test_c4_span_corruption_yields_full_batches(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=300, data_dir=str(tmp_path)):
        ds = batches.batched_dataset(
            "spot_source_c4",
            "validation",
            LENGTHS,
            batch_size=2,
            seed=0,
            shuffle=False,
            num_epochs=1,
        )
        batch = next(ds.as_numpy_iterator())
    inputs = batch["encoder_input_tokens"]
    assert inputs.shape == (2, 64) and (inputs > 0).all()  # pieces fill the input exactly
    assert (inputs >= 32000).any() and (batch["decoder_target_tokens"][:, 0] >= 32000).all()
