"""Every bad command-line argument gets one ``error:`` line and exit code 2 (usage) or 1 (config, data,
run directory), before anything is loaded and without writing a file; ``--help`` shows the whole
description; an interrupted training run exits with 128 + the signal number."""

import os
import signal
import subprocess
import sys

import jax
import pytest

from tests.train.test_train import CHEAP, RECIPE
from xlstm_flax import cli, inference
from xlstm_flax.cli import DESCRIPTION, main
from xlstm_flax.config import save_config
from xlstm_flax.train import load_recipe, loop


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working directory with a recipe, a run directory holding only its config, a binary file and a
    text file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(RECIPE)
    save_config(load_recipe(tmp_path / "small.yaml"), tmp_path / "run" / "config.yaml")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "note.txt").write_text("not a run\n")
    return tmp_path


def files_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_cli(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's usage errors and --help
        return exit_.code


GENERATE = ["generate", "--run-dir", "run"]
TRAIN = ["train", "--config", "small.yaml", *CHEAP]
BAD_ARGUMENTS = {
    "no command": ([], 2, "the following arguments are required: command"),
    "unknown command": (["fly"], 2, "invalid choice: 'fly'"),
    "unknown option": ([*TRAIN, "--steps=3"], 2, "xlstm-flax train: unrecognized arguments: --steps=3"),
    "top-k 0": ([*GENERATE, "--top-k", "0"], 2, "--top-k: must be >= 1, got 0"),
    "top-k over vocab": ([*GENERATE, "--top-k", "1000"], 1, "--top-k 1000 exceeds the model's vocabulary of 258"),
    "tokens -5": ([*GENERATE, "--tokens", "-5"], 2, "--tokens: must be >= 0, got -5"),
    "tokens text": ([*GENERATE, "--tokens", "many"], 2, "--tokens: invalid int value: 'many'"),
    "tokens over int32": ([*GENERATE, "--tokens", "2147483648"], 1, "--tokens 2147483648 exceeds 2147483647"),
    "temperature -1": ([*GENERATE, "--temperature", "-1"], 2, "--temperature: must be a finite number >= 0"),
    "temperature nan": ([*GENERATE, "--temperature", "nan"], 2, "--temperature: must be a finite number >= 0"),
    "seed -1": ([*GENERATE, "--seed", "-1"], 2, "--seed: must be >= 0, got -1"),
    "step -1": ([*GENERATE, "--step", "-1"], 2, "--step: must be >= 0, got -1"),
    "prompt not UTF-8": ([*GENERATE, "--prompt", "caf\udce9"], 2, "--prompt: is not valid UTF-8 text"),
    "no run dir": (["generate"], 2, "the following arguments are required: --run-dir"),
    "run dir missing": (["generate", "--run-dir", "nowhere"], 1, "nowhere is not a run directory"),
    "run dir is a file": (["generate", "--run-dir", "note.txt"], 1, "note.txt is not a run directory"),
    "missing step": ([*GENERATE, "--step", "7"], 1, "no checkpoint of step 7 in"),
    "config binary": (["train", "--config", "binary.bin"], 1, "binary.bin: not a YAML text file"),
    "config missing": (["train", "--config", "nope.yaml"], 1, "config file not found: nope.yaml"),
    "config directory": (["train", "--config", "run"], 1, "config run is not a file"),
    "config not a recipe": (["train", "--config", "note.txt"], 1, "the top level must be a mapping"),
    "seed=-1": ([*TRAIN, "seed=-1"], 1, "seed must be in [0, 2**63), got -1"),
    "seed=1.5": ([*TRAIN, "seed=1.5"], 1, "seed: expected int, got float 1.5"),
    "lr nan": ([*TRAIN, "optim.lr=.nan"], 1, "optim.lr: expected a finite float, got float nan"),
    "lr inf": ([*TRAIN, "optim.lr=.inf"], 1, "optim.lr: expected a finite float, got float inf"),
    "steps 0": ([*TRAIN, "train.steps=0"], 1, "steps must be >= 1, got 0"),
    "override without =": ([*TRAIN, "train.steps"], 1, "bad override 'train.steps'"),
    "override bad YAML": ([*TRAIN, "seed=[1"], 1, "value is not valid YAML"),
    "override not UTF-8": ([*TRAIN, "run_dir=r\udcff"], 2, "is not valid UTF-8 text"),
    "unknown key": ([*TRAIN, "train.setps=3"], 1, "unknown key 'train.setps'; did you mean 'steps'?"),
    "sample top-k over vocab": ([*TRAIN, "train.sample_top_k=1000"], 1, "train.sample_top_k=1000 exceeds model"),
    "resume and overwrite": ([*TRAIN, "resume=true", "overwrite=true"], 1, "contradict each other"),
    "triton on CPU": ([*TRAIN, "model.mlstm.kernel=chunkwise--triton"], 1, "needs a CUDA GPU"),
    "run_dir a file": ([*TRAIN, "run_dir=note.txt"], 1, "run_dir='note.txt' is a file, not a directory"),
    "data missing": ([*TRAIN, "data.path=missing.txt"], 1, "data.path='missing.txt': no such file"),
    "vocab mismatch": ([*TRAIN, "model.vocab_size=100"], 1, "tokenizer has 258 ids but model.vocab_size is 100"),
    "tokenizer not JSON": ([*TRAIN, "data.tokenizer=note.txt"], 1, "data.tokenizer"),
    "batch 0": ([*TRAIN, "train.batch_size=0"], 1, "batch_size must be >= 1, got 0"),
}


@pytest.mark.parametrize("argv, code, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_argument_gives_one_error_line_and_writes_nothing(workspace, capsys, argv, code, message):
    before = files_under(workspace)
    assert run_cli(argv) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert files_under(workspace) == before


@pytest.mark.parametrize("command", ["train", "generate"])
def test_an_allocation_that_fails_is_one_error_line(workspace, capsys, monkeypatch, command):
    def out_of_memory(args):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 30064772952 bytes.\ndetails")

    monkeypatch.setattr(cli, f"run_{command}", out_of_memory)
    assert run_cli(TRAIN if command == "train" else GENERATE) == 1
    err = capsys.readouterr().err
    assert err == "error: out of memory: RESOURCE_EXHAUSTED: Out of memory allocating 30064772952 bytes.\n", err


def test_an_error_while_text_streams_starts_its_own_line(workspace, capsys, monkeypatch):
    def half_a_sample(model, tokenizer, prompt, tokens, *, on_text, **options):
        on_text("half a sam")
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes.")

    monkeypatch.setattr(cli, "_generation_model", lambda args, run_config: (None, "tokenizer"))
    monkeypatch.setattr(inference, "sample_text", half_a_sample)
    assert run_cli([*GENERATE, "--prompt", "def "]) == 1
    captured = capsys.readouterr()
    assert captured.out == "def half a sam\n"
    assert captured.err == "error: out of memory: RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes.\n"


def test_other_runtime_errors_keep_their_traceback(workspace, monkeypatch):
    def fails(args):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(cli, "run_train", fails)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        run_cli(TRAIN)


@pytest.mark.parametrize("flags, message", [([], "no checkpoint in"), (["--step", "7"], "no checkpoint of step 7")])
def test_generate_without_the_checkpoint_fails_before_building_the_model(
    workspace, capsys, monkeypatch, flags, message
):
    """A 7B run's model takes half a minute and 15 GB to build: the checkpoint is looked up first."""
    monkeypatch.setattr(inference, "params_target", lambda *a: pytest.fail("model built before the check"))
    assert run_cli([*GENERATE, *flags]) == 1
    assert message in capsys.readouterr().err


def test_undecodable_prompt_bytes_from_the_shell(workspace):
    """The real thing: a byte that is not UTF-8 in argv (Python hands it over as a lone surrogate)."""
    child = subprocess.run(
        [sys.executable, "-m", "xlstm_flax", *GENERATE, "--prompt", b"caf\xe9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 2
    assert child.stderr.splitlines() == [
        "error: xlstm-flax generate: argument --prompt: is not valid UTF-8 text: 'caf\\udce9' "
        "(see xlstm-flax generate --help)"
    ]


def test_help_shows_the_whole_description(capsys):
    assert run_cli(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert DESCRIPTION in help_text and DESCRIPTION.endswith("trained run.")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_training_with_128_plus_its_number(workspace, capsys, monkeypatch, sig, code):
    """The signal arrives while step 2's batch goes to the device; the run saves step 2 and exits 128 + signum."""
    global_batch, train_batches = loop.distributed.global_batch, []

    def signal_at_step_2(batch, *args):
        if batch.ndim == 3:  # a train batch (grad_accum, B, S + 1), in step order
            train_batches.append(batch)
            if len(train_batches) == 2:
                os.kill(os.getpid(), sig)
        return global_batch(batch, *args)

    monkeypatch.setattr(loop.distributed, "global_batch", signal_at_step_2)
    assert run_cli([*TRAIN, "run_dir=signalled"]) == code
    assert "stopped after step 2" in capsys.readouterr().out
    assert sorted(p.name for p in (workspace / "signalled" / "checkpoints").iterdir()) == ["2"]
