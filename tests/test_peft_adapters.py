"""Prompts out to and in from Hugging Face PEFT prompt-tuning adapters, proven by logits: the
same HF T5 run by PEFT with the adapter and by this project with the prompt."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import T5_VOCAB, small_hf_t5
from prompt_transfer import cli
from prompt_transfer.configure import gin_files
from prompt_transfer.data import vocab
from prompt_transfer.model.encoder_decoder import shift_right
from prompt_transfer.network import checkpoints, t5
from prompt_transfer.prompt import prompts
from prompt_transfer.transfer import library

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VIRTUAL_TOKENS = 5


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A small flan-t5-like HF T5 saved with save_pretrained, and its `convert`ed checkpoint."""
    root = tmp_path_factory.mktemp("peft")
    small_hf_t5(root / "hf", "pretrained")
    assert cli.main(["convert", "--hf", str(root / "hf"), "--output", str(root / "ours")]) == 0
    config = gin_files.read_model_config(str(root / "ours" / "model.gin"))
    module = t5.T5(config)
    params = checkpoints.restore_params(root / "ours" / "checkpoint_0", t5.abstract_params(module))
    return root, module, params


def _fresh_hf(root):
    return transformers.T5ForConditionalGeneration.from_pretrained(root / "hf").eval()


def _batch():
    rng = np.random.default_rng(3)
    inputs = rng.integers(3, 32128, size=(2, 9))
    inputs[1, 6:] = 0  # padding on one row
    targets = rng.integers(3, 32128, size=(2, 4))
    return inputs, targets


def _peft_logits(peft_model, inputs, targets):
    with torch.no_grad():
        return peft_model(
            input_ids=torch.tensor(inputs),
            attention_mask=torch.tensor(inputs > 0),
            labels=torch.tensor(targets),
        ).logits.numpy()


def _our_logits(module, params, prompt, inputs, targets):
    network, prompt = prompts.split_prompt(prompts.join(params, module.config, prompt))
    x, y = jnp.asarray(inputs), shift_right(jnp.asarray(targets))
    return np.asarray(module.apply({"params": network}, x, y, prompt=prompt))


def test_an_exported_adapter_gives_peft_our_logits(hf, tmp_path, capsys):
    root, module, params = hf
    prompt = np.random.default_rng(0).normal(size=(VIRTUAL_TOKENS, 16)).astype(np.float32)
    lib = library.Library(tmp_path / "library")
    entry = lib.add(prompt, task="made_here", model="my-org/t5-small-test", model_fingerprint="")
    out = tmp_path / "adapter"
    argv = ["library", "export", entry.id, "--library", str(lib.root), "--format", "peft"]
    assert cli.main([*argv, "--output", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"]) == ("PROMPT_TUNING", "SEQ_2_SEQ_LM")
    assert (config["num_virtual_tokens"], config["token_dim"]) == (VIRTUAL_TOKENS, 16)
    assert config["base_model_name_or_path"] == "my-org/t5-small-test"

    loaded = peft.PeftModel.from_pretrained(_fresh_hf(root), out).eval()
    inputs, targets = _batch()
    expected = _peft_logits(loaded, inputs, targets)
    ours = _our_logits(module, params, prompt, inputs, targets)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # The prompt matters to both: without it the logits are other ones.
    plain = np.asarray(module.apply({"params": params}, jnp.asarray(inputs), shift_right(targets)))
    assert np.abs(plain - expected).max() > 1e-2
    print(f"\nexport: max |ours - PEFT| = {np.abs(ours - expected).max():.3g}")


def _peft_adapter(root, path, **config):
    torch.manual_seed(1)
    model = peft.get_peft_model(
        _fresh_hf(root),
        peft.PromptTuningConfig(
            task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=VIRTUAL_TOKENS, **config
        ),
    )
    model.save_pretrained(path)
    return model.eval()


def test_a_peft_adapter_imports_and_scores_like_peft(hf, tmp_path, capsys):
    root, module, params = hf
    made = _peft_adapter(root, tmp_path / "adapter", num_transformer_submodules=1)
    lib_dir = tmp_path / "library"
    assert (
        cli.main(["library", "import", str(tmp_path / "adapter"), "--library", str(lib_dir)]) == 0
    )
    (entry,) = library.Library(lib_dir).entries()
    assert entry.kind == "peft" and (entry.prompt_length, entry.embed_dim) == (VIRTUAL_TOKENS, 16)
    prompt = np.asarray(library.Library(lib_dir).prompt(entry))
    inputs, targets = _batch()
    expected = _peft_logits(made, inputs, targets)
    ours = _our_logits(module, params, prompt, inputs, targets)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    difference = np.abs(ours - expected).max()

    # `score --prompt-entry` prints the log-likelihoods PEFT gives the same texts.
    v = vocab.get_vocabulary(str(T5_VOCAB))
    text, labels = "is this good?", ["yes", "no"]
    ids = np.asarray([v.encode(text) + [1]])
    want = []
    for label in labels:
        target = np.asarray([v.encode(label) + [1]])
        logits = torch.tensor(_peft_logits(made, ids, target))
        logp = torch.log_softmax(logits, -1)[0, np.arange(target.shape[1]), target[0]]
        want.append(float(logp.sum()))
    capsys.readouterr()
    score = ["score", "--checkpoint", str(root / "ours" / "checkpoint_0"), "--vocab", str(T5_VOCAB)]
    argv = [*score, "--inputs", text, "--targets", *labels, "--prompt-entry", entry.id]
    assert cli.main([*argv, "--library", str(lib_dir)]) == 0
    got = [float(line.split()[0]) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose(got, want, atol=2e-4)
    # The adapter directory itself works as --prompt too, with the same scores.
    assert (
        cli.main(
            [*score, "--inputs", text, "--targets", *labels, "--prompt", str(tmp_path / "adapter")]
        )
        == 0
    )
    again = [float(line.split()[0]) for line in capsys.readouterr().out.splitlines()]
    assert again == got
    print(f"\nimport: max |ours - PEFT| = {difference:.3g}")


def test_t5x_export_reads_back_as_the_same_prompt(tmp_path):
    lib = library.Library(tmp_path / "library")
    prompt = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    entry = lib.add(prompt, task="t", model="m", model_fingerprint="")
    out = tmp_path / "t5x"
    argv = ["library", "export", entry.id, "--library", str(lib.root), "--format", "t5x"]
    assert cli.main([*argv, "--output", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["encoder.prompt.prompt.prompt"]
    np.testing.assert_array_equal(library.read_t5x_prompt(out), prompt)


def _one_line_refusal(capsys, argv, message):
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_other_adapters_are_refused_in_one_line(hf, tmp_path, capsys):
    root, _, _ = hf
    lib = ["--library", str(tmp_path / "library"), "--model", "m"]
    lora = peft.get_peft_model(
        _fresh_hf(root), peft.LoraConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, r=2)
    )
    lora.save_pretrained(tmp_path / "lora")
    _one_line_refusal(
        capsys, ["library", "import", str(tmp_path / "lora"), *lib], "is a PEFT LORA adapter"
    )
    pickled = tmp_path / "pickled"
    made = _peft_adapter(root, tmp_path / "unused", num_transformer_submodules=1)
    made.save_pretrained(pickled, safe_serialization=False)
    assert not (pickled / "adapter_model.safetensors").exists()
    _one_line_refusal(
        capsys, ["library", "import", str(pickled), *lib], "only a pickled adapter_model.bin"
    )
    _peft_adapter(root, tmp_path / "both")  # PEFT's seq2seq default: the decoder is prompted too
    _one_line_refusal(
        capsys,
        ["library", "import", str(tmp_path / "both"), *lib],
        "prompts the decoder too (num_transformer_submodules=2)",
    )
    assert (
        not (tmp_path / "library").exists() or not library.Library(tmp_path / "library").entries()
    )
    # A prompt of another width than the model's is refused before any scoring.
    np.save(tmp_path / "wide.npy", np.zeros((VIRTUAL_TOKENS, 12), np.float32))
    _one_line_refusal(
        capsys,
        [
            "score",
            "--checkpoint",
            str(root / "ours" / "checkpoint_0"),
            "--vocab",
            str(T5_VOCAB),
            "--inputs",
            "x",
            "--targets",
            "y",
            "--prompt",
            str(tmp_path / "wide.npy"),
        ],
        "a prompt of width 12 fits neither this model's input prompt (16)",
    )


def test_a_run_exports_from_its_checkpoints_not_its_prompt_files(tmp_path, capsys):
    """The prompt files beside a run's checkpoints hold its input prompt only (a deep prompt's
    layers are in the checkpoint): a folder of prompt files without checkpoints is refused.
    Exports of real runs: tests/test_read_back.py."""
    run = tmp_path / "run"
    (run / "prompts").mkdir(parents=True)
    np.save(run / "prompts" / "checkpoint_4.npy", np.ones((2, 3), np.float32))
    (run / "config.gin").write_text("")
    argv = ["library", "export", "--run", str(run), "--checkpoint", "latest"]
    _one_line_refusal(capsys, [*argv, "--output", str(tmp_path / "out.npy")], "no latest prompt in")
    assert not (tmp_path / "out.npy").exists()


def test_a_deep_prompt_is_not_exported_as_a_peft_adapter(tmp_path, capsys):
    lib = library.Library(tmp_path / "library")
    prompt = np.ones((2, 4), np.float32)
    entry = lib.add(
        prompt, deep=np.ones((2, 8), np.float32), task="t", model="m", model_fingerprint=""
    )
    base = ["library", "export", entry.id, "--library", str(lib.root)]
    _one_line_refusal(
        capsys, [*base, "--format", "peft", "--output", str(tmp_path / "a")], "is a deep prompt"
    )
    assert not (tmp_path / "a").exists()
    assert cli.main([*base, "--output", str(tmp_path / "a.npy")]) == 0
    assert "holds its input prompt only" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), prompt)
