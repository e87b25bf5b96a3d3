"""A start that fails never deletes or changes the run already in run_dir: every failing stage (config,
data, tokenizer, model build, a step too large for memory, Ctrl-C during start-up, a NaN before the new
run's first checkpoint) leaves it byte for byte as it was; overwrite=true replaces it only once the new
run has a complete checkpoint; a start killed in between is undone by the next one; files that are not a
run's are never replaced, and a run_dir that cannot be written is refused before any work. The CLI prints
one ``error:`` line for each failure."""

import os
import shutil
import signal

import pytest

from tests.train.run_helpers import snapshot
from tests.train.test_train import CHEAP, poison_step
from xlstm_flax.cli import main
from xlstm_flax.train import load_recipe, loop, train
from xlstm_flax.train import run_dir as run_dir_module
from xlstm_flax.train.checkpoint import Checkpointer
from xlstm_flax.train.metrics import read_metrics
from xlstm_flax.train.run_dir import ASIDE_DIR, open_run_dir


@pytest.fixture(scope="module")
def previous_run(recipe, tmp_path_factory):
    """A finished 8-step run (checkpoints 4 and 8, metrics, config, loss curve)."""
    run_dir = tmp_path_factory.mktemp("previous") / "run"
    train(load_recipe(recipe, [f"run_dir={run_dir}", *CHEAP]))
    return run_dir


@pytest.fixture
def run_dir(previous_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(previous_run, copy)
    return copy


def start(recipe, run_dir, *overrides) -> int:
    return main(["train", "--config", str(recipe), f"run_dir={run_dir}", *CHEAP, *overrides])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.path=missing.txt"], "data.path='missing.txt': no such file"),
        (["model.vocab_size=100"], "tokenizer has 258 ids but model.vocab_size is 100"),
        (["seed=-1"], "seed must be in [0, 2**63), got -1"),
        (["train.seq_len=50000"], "the train split of data.path="),
        (["train.seq_len=4000"], "the validation split of data.path="),  # 3,340 validation tokens
        (["data.tokenizer=missing.json"], "data.tokenizer"),
        (["model.slstm_at=[5]"], "slstm_at"),
        # 1 TiB of hidden states: refused before compiling (test_memory.py: both checks)
        (["train.batch_size=268435456"], "GiB per device and cpu:0 has"),
    ],
    ids=["data-path", "vocab", "seed", "train-too-short", "validation-too-short", "tokenizer", "model", "memory"],
)
def test_failed_start_leaves_previous_run_unchanged(recipe, run_dir, capsys, overrides, message):
    before = snapshot(run_dir)
    assert start(recipe, run_dir, "overwrite=true", *overrides) == 1
    assert message in one_error_line(capsys)
    assert snapshot(run_dir) == before


def test_data_too_short_error_names_split_and_sizes(recipe, run_dir, capsys):
    assert start(recipe, run_dir, "overwrite=true", "train.seq_len=4000") == 1
    line = one_error_line(capsys)
    assert "its longest stream holds 3340 tokens, a training window needs 4001 (train.seq_len + 1)" in line, line


def test_ctrl_c_while_loading_leaves_previous_run_unchanged(recipe, run_dir, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "init_train_state", interrupted)
    before = snapshot(run_dir)
    assert start(recipe, run_dir, "overwrite=true") == 130
    assert one_error_line(capsys) == "error: interrupted"
    assert snapshot(run_dir) == before


def interrupt_first_step(monkeypatch, seen: list) -> None:
    """The first train step raises KeyboardInterrupt, once the run directory is prepared for the new run."""

    def interrupted(state, rest, batches):
        seen.append(sorted(p.name for p in run_dirs[0].iterdir()))
        raise KeyboardInterrupt

    run_dirs = []
    original = loop.open_run_dir

    def spy(config, log):
        run = original(config, log)
        run_dirs.append(run.path)
        return run

    monkeypatch.setattr(loop, "open_run_dir", spy)
    monkeypatch.setattr(loop, "make_steps", lambda *args: (interrupted, None))
    monkeypatch.setattr(loop, "_check_step_memory", lambda *args: None)  # it compiles the real step


def test_ctrl_c_in_first_step_moves_previous_run_back(recipe, run_dir, capsys, monkeypatch):
    seen = []
    interrupt_first_step(monkeypatch, seen)
    before = snapshot(run_dir)
    assert start(recipe, run_dir, "overwrite=true") == 130
    assert seen == [[ASIDE_DIR, "checkpoints", "config.yaml", "metrics.jsonl"]]  # old run aside, new one begun
    assert snapshot(run_dir) == before


def test_ctrl_c_before_the_first_step_finishes_moves_previous_run_back(recipe, run_dir, capsys, monkeypatch):
    """SIGINT while the first step's batch is sampled (during start-up, as during its compilation): the
    step finishes, but the start is undone and the CLI exits with 130."""
    sample = loop.sample_windows

    def sigint_at_step_1(streams, length, num, key, rows=slice(None)):
        if key[1] == loop.TRAIN_SPLIT and key[2] == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return sample(streams, length, num, key, rows)

    monkeypatch.setattr(loop, "sample_windows", sigint_at_step_1)
    before = snapshot(run_dir)
    assert start(recipe, run_dir, "overwrite=true") == 130
    assert f"stopped before the first step finished (SIGINT); {run_dir} is as it was" in capsys.readouterr().out
    assert snapshot(run_dir) == before


def test_failed_fresh_start_leaves_no_files(recipe, tmp_path, capsys, monkeypatch):
    interrupt_first_step(monkeypatch, [])
    assert start(recipe, tmp_path / "runs" / "new") == 130
    assert list(tmp_path.iterdir()) == []


def test_nan_in_first_step_moves_previous_run_back(recipe, run_dir, capsys, monkeypatch):
    poison_step(monkeypatch, at_step=1)
    before = snapshot(run_dir)
    assert start(recipe, run_dir, "overwrite=true") == 1
    line = one_error_line(capsys)
    assert "loss is nan" in line and f"{run_dir} was left as it was before this start" in line, line
    assert snapshot(run_dir) == before


def test_nan_before_the_first_checkpoint_moves_previous_run_back(recipe, run_dir, capsys, monkeypatch):
    """Step 1 is finite (the run commits), step 3 is NaN, the first checkpoint would be step 4."""
    poison_step(monkeypatch, at_step=3)
    before = snapshot(run_dir)
    assert start(recipe, run_dir, "overwrite=true", "checkpoint.every=4") == 1
    line = one_error_line(capsys)
    assert "loss is nan" in line and "at step 3" in line and f"{run_dir} was left as it was" in line, line
    assert snapshot(run_dir) == before


def test_overwrite_replaces_the_run_once_it_has_a_checkpoint(recipe, run_dir):
    result = train(load_recipe(recipe, [f"run_dir={run_dir}", *CHEAP, "overwrite=true"]), stop_at=2)
    assert result.interrupted and result.step == 2
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl"]
    assert Checkpointer(run_dir / "checkpoints", keep=2).all_steps() == [2]
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]


def test_run_without_resume_or_overwrite_is_refused(recipe, run_dir, capsys, tmp_path):
    before = snapshot(run_dir)
    cache = tmp_path / "new" / "cache"
    assert start(recipe, run_dir, f"train.compile_cache={cache}") == 1
    line = one_error_line(capsys)
    assert "already holds a run" in line and "resume=true" in line and "overwrite=true" in line
    assert snapshot(run_dir) == before
    assert not (tmp_path / "new").exists(), "the compilation cache's folder was made for a refused start"


def test_next_start_moves_back_a_run_that_a_killed_overwrite_set_aside(recipe, run_dir):
    """A process killed after moving the old run aside (and writing some of the new run) never
    committed: opening the directory again restores the old run exactly."""
    before = snapshot(run_dir)
    aside = run_dir / ASIDE_DIR
    aside.mkdir()
    for path in list(run_dir.iterdir()):
        if path != aside:
            path.rename(aside / path.name)
    (run_dir / "config.yaml").write_text("# the killed start's config\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 5.0}\n')
    logged = []
    run = open_run_dir(load_recipe(recipe, [f"run_dir={run_dir}", *CHEAP, "resume=true"]), logged.append)
    assert run.mode == "resume" and "interrupted overwrite=true" in logged[0]
    assert snapshot(run_dir) == before


def test_generate_on_a_run_left_aside_says_where_it_is(run_dir, capsys):
    """After a killed overwrite (the new run without a checkpoint yet), generate names the folder the
    previous run waits in, instead of only "no checkpoint"."""
    aside = run_dir / ASIDE_DIR
    aside.mkdir()
    for path in list(run_dir.iterdir()):
        if path != aside:
            path.rename(aside / path.name)
    (run_dir / "config.yaml").write_text((aside / "config.yaml").read_text())  # the killed start's config
    before = snapshot(run_dir)
    assert main(["generate", "--run-dir", str(run_dir), "--tokens", "2"]) == 1
    line = one_error_line(capsys)
    assert "no checkpoint in" in line and f"left the previous run in {aside}" in line, line
    assert snapshot(run_dir) == before


def test_next_start_deletes_the_replaced_run_once_the_new_one_had_a_checkpoint(recipe, run_dir):
    """A process killed after the new run completed a checkpoint (before it deleted the replaced run): the
    next start keeps the new run and deletes the one set aside."""
    aside = run_dir / ASIDE_DIR
    aside.mkdir()
    for path in list(run_dir.iterdir()):
        if path != aside:
            path.rename(aside / path.name)
    shutil.copytree(aside / "checkpoints", run_dir / "checkpoints")  # the new run's (complete) checkpoints
    (run_dir / "config.yaml").write_text((aside / "config.yaml").read_text())
    new_run = snapshot(run_dir)
    new_run = {name: data for name, data in new_run.items() if not name.startswith(ASIDE_DIR)}
    logged = []
    run = open_run_dir(load_recipe(recipe, [f"run_dir={run_dir}", *CHEAP, "resume=true"]), logged.append)
    assert run.mode == "resume" and "the new run has a checkpoint" in logged[0]
    assert snapshot(run_dir) == new_run


def test_a_second_ctrl_c_during_the_last_save_leaves_the_replaced_run_to_the_next_start(recipe, run_dir, monkeypatch):
    """A KeyboardInterrupt while the new run's first checkpoint may still be written: nothing is rolled back
    under the writer's feet; the next start keeps the new run once its checkpoint is complete."""
    closers = []

    def interrupted_close(self):
        closers.append(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Checkpointer, "close", interrupted_close)
    monkeypatch.setattr(run_dir_module, "saved_steps", lambda directory: [])  # the save not finished yet
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(recipe, [f"run_dir={run_dir}", *CHEAP, "overwrite=true"]), stop_at=2)
    assert (run_dir / ASIDE_DIR).is_dir()
    monkeypatch.undo()
    closers[0].close()  # the save in flight completes
    logged = []
    open_run_dir(load_recipe(recipe, [f"run_dir={run_dir}", *CHEAP, "resume=true"]), logged.append)
    assert not (run_dir / ASIDE_DIR).exists() and "the new run has a checkpoint" in logged[0]
    assert Checkpointer(run_dir / "checkpoints", keep=2).all_steps() == [2]


def test_files_that_are_not_a_run_are_never_replaced(recipe, tmp_path, capsys):
    """A directory with the user's own config.yaml and profile/ (names a run also uses) is no run:
    refused with and without overwrite=true, every file kept."""
    folder = tmp_path / "project"
    (folder / "profile").mkdir(parents=True)
    (folder / "profile" / "notes.txt").write_text("mine\n")
    (folder / "config.yaml").write_text("model: {preset: tiny}\n")
    before = snapshot(folder)
    for flags in ([], ["overwrite=true"]):
        assert start(recipe, folder, *flags) == 1
        line = one_error_line(capsys)
        assert "holds config.yaml, profile but no xlstm-flax run" in line and "nothing there is replaced" in line
        assert snapshot(folder) == before


@pytest.mark.parametrize("blocked_by", ["file", "unwritable"])
def test_run_dir_that_cannot_be_written_is_refused_before_loading(recipe, tmp_path, capsys, monkeypatch, blocked_by):
    """A run_dir below a plain file, or in a folder this process cannot write (patched here: root writes
    anywhere), gets its error before the data is read or the model built."""
    parent = tmp_path / "parent"
    if blocked_by == "file":
        parent.write_text("a file\n")
        expected = f"{parent} is a file, not a directory"
    else:
        parent.mkdir()

        def refused(**kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(run_dir_module.tempfile, "TemporaryDirectory", refused)
        expected = f"cannot write in {parent} (Permission denied)"
    monkeypatch.setattr(loop, "load_corpus", lambda *a: pytest.fail("data read before the run_dir check"))
    assert start(recipe, parent / "run") == 1
    assert expected in one_error_line(capsys)
