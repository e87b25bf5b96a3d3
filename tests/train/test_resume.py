"""resume=true continues the saved run exactly: a config that would change the trajectory is refused
(every differing key named), the allowed changes are recorded; the first train record after a resume
averages the same steps as an uninterrupted run and no step is logged twice; a finished run has nothing
to do; a corrupt newest checkpoint is skipped (named, kept) for the newest one that restores, by resume
and by generate. Exactness as in test_train.py: the same compiled step on the same inputs, ``==``."""

import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.train.run_helpers import snapshot, truncate_checkpoint
from tests.train.test_train import CHEAP
from xlstm_flax import distributed, memory
from xlstm_flax.cli import main
from xlstm_flax.config import ConfigError
from xlstm_flax.inference import load_run_config, load_trained_model
from xlstm_flax.kernels import registry
from xlstm_flax.train import OutOfMemoryError, load_recipe, loop, train
from xlstm_flax.train.checkpoint import Checkpointer, CheckpointRestoreError
from xlstm_flax.train.metrics import read_metrics
from xlstm_flax.train.run_dir import CHANGES_FILE, UNRESTORABLE_DIR
from xlstm_flax.train.state import init_train_state

LOG_EVERY_3 = [*CHEAP, "train.log_every=3"]  # 8 steps: train records at 3, 6, 8; checkpoints at 4, 8


def run(recipe, run_dir, *overrides, **kwargs):
    return train(load_recipe(recipe, [f"run_dir={run_dir}", *overrides]), **kwargs)


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    """An uninterrupted 8-step run and its metric records."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run(recipe, run_dir, *LOG_EVERY_3)
    return run_dir, read_metrics(run_dir / "metrics.jsonl")


@pytest.fixture
def finished(reference, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(reference[0], copy)
    return copy


def test_resume_refuses_trajectory_changes_and_names_every_key(recipe, finished):
    before = snapshot(finished)
    with pytest.raises(ConfigError) as err:
        run(recipe, finished, *LOG_EVERY_3, "resume=true", "optim.lr=0.5", "seed=3", "train.batch_size=2")
    message = str(err.value)
    for change in ("optim.lr: 0.01 -> 0.5", "seed: 0 -> 3", "train.batch_size: 4 -> 2"):
        assert change in message, message
    assert f"--config {finished / 'config.yaml'} resume=true" in message
    assert snapshot(finished) == before


def test_more_steps_are_refused_when_the_schedule_depends_on_them(recipe, finished):
    with pytest.raises(ConfigError, match=r"train\.steps: 8 -> 12 \(the cosine learning-rate schedule decays"):
        run(recipe, finished, *LOG_EVERY_3, "resume=true", "train.steps=12")


def test_more_steps_are_allowed_under_a_constant_schedule(recipe, tmp_path):
    constant = [*LOG_EVERY_3, "optim.decay=constant", "train.steps=4", "train.eval_every=4"]
    run(recipe, tmp_path, *constant)
    resumed = run(recipe, tmp_path, *constant, "resume=true", "train.steps=6")
    assert resumed.start_step == 4 and resumed.step == 6
    record = json.loads((tmp_path / CHANGES_FILE).read_text())
    assert record == {"resumed_after_step": 4, "changes": {"train.steps": [4, 6]}}
    assert load_recipe(tmp_path / "config.yaml").train.steps == 6


def test_a_saved_triton_kernel_this_machine_cannot_run_resumes_as_auto_and_is_recorded(recipe, tmp_path, monkeypatch):
    """A run that named chunkwise--triton (trained on a GPU) resumes here with "auto" in its place; the change
    is recorded like any other, and the saved config then says "auto"."""
    monkeypatch.setattr(registry, "triton_usable", lambda: False)
    constant = [*LOG_EVERY_3, "optim.decay=constant", "train.steps=4", "train.eval_every=4"]
    run(recipe, tmp_path, *constant)
    config = tmp_path / "config.yaml"
    mlstm, slstm = config.read_text().split("  slstm:\n")
    config.write_text(mlstm.replace("    kernel: auto\n", "    kernel: chunkwise--triton\n") + "  slstm:\n" + slstm)
    resumed = run(recipe, tmp_path, *constant, "resume=true", "train.steps=6")
    assert resumed.start_step == 4 and resumed.step == 6
    changes = {"train.steps": [4, 6], "model.mlstm.kernel": ["chunkwise--triton", "auto"]}
    assert json.loads((tmp_path / CHANGES_FILE).read_text()) == {"resumed_after_step": 4, "changes": changes}
    assert load_recipe(config).model.mlstm.kernel == "auto"


def test_a_run_saved_with_an_ignored_remat_policy_still_loads(finished, caplog):
    """Before session 22 a remat_policy without remat was accepted (and had no effect); such a run's saved
    config loads with 'full' and a warning, for generate, resume and init_from."""
    config = finished / "config.yaml"
    text = config.read_text()
    assert "  remat: false\n  remat_policy: full\n" in text
    config.write_text(text.replace("  remat_policy: full\n", "  remat_policy: save_matmuls\n"))
    with caplog.at_level(logging.WARNING):
        model, saved, step = load_trained_model(finished)
    assert saved.model.remat_policy == "full" and step == 8
    assert "model.remat_policy 'save_matmuls' without remat had no effect" in caplog.text


def test_allowed_changes_are_recorded_and_saved(recipe, reference, tmp_path):
    run(recipe, tmp_path, *LOG_EVERY_3, stop_at=5)
    resumed = run(
        recipe,
        tmp_path,
        *LOG_EVERY_3,
        "resume=true",
        "train.log_every=2",
        "checkpoint.every=3",
        "model.mlstm.kernel=parallel--jax",
    )
    assert resumed.start_step == 5 and resumed.step == 8
    changes = {"train.log_every": [3, 2], "checkpoint.every": [4, 3], "model.mlstm.kernel": ["auto", "parallel--jax"]}
    assert json.loads((tmp_path / CHANGES_FILE).read_text()) == {"resumed_after_step": 5, "changes": changes}
    saved = load_recipe(tmp_path / "config.yaml")
    assert (saved.train.log_every, saved.checkpoint.every) == (2, 3)


def test_resume_after_a_crash_logs_each_step_once_with_the_uninterrupted_windows(
    recipe, reference, tmp_path, monkeypatch
):
    """A crash in step 7 (after the step-6 record, with the last checkpoint at step 4): the resumed run
    replays steps 5..8; its step-6 record averages steps 4..6 (step 4's loss came with the checkpoint)
    and replaces the crashed run's record instead of repeating it."""
    sample = loop.sample_windows

    def crash_at_step_7(streams, length, num, key, rows=slice(None)):
        if key[1] == loop.TRAIN_SPLIT and key[2] == 7:
            raise RuntimeError("crash")
        return sample(streams, length, num, key, rows)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "sample_windows", crash_at_step_7)
        with pytest.raises(RuntimeError, match="crash"):
            run(recipe, tmp_path, *LOG_EVERY_3)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [3, 6]
    resumed = run(recipe, tmp_path, *LOG_EVERY_3, "resume=true")
    assert resumed.start_step == 4
    records = without_speed(read_metrics(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["split"]) for r in records] == [(3, "train"), (6, "train"), (8, "train"), (8, "val")]
    assert records == without_speed(reference[1])


def without_speed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def test_resuming_a_finished_run_has_nothing_to_do(recipe, finished):
    logged = []
    result = run(recipe, finished, *LOG_EVERY_3, "resume=true", log=logged.append)
    assert result.start_step == result.step == 8 and not result.train_losses
    assert logged[-1] == f"nothing to do: the run in {finished} has finished step 8 (train.steps=8)"
    assert not any("nan" in line for line in logged), logged


def test_resume_skips_a_corrupt_newest_checkpoint_and_keeps_it(recipe, reference, finished):
    damaged = truncate_checkpoint(finished / "checkpoints" / "8")
    logged = []
    resumed = run(recipe, finished, *LOG_EVERY_3, "resume=true", log=logged.append)
    skipped = [line for line in logged if line.startswith("skipped checkpoint")]
    assert len(skipped) == 1 and f"{finished / 'checkpoints' / '8'} does not restore (" in skipped[0], logged
    assert resumed.start_step == 4 and resumed.step == 8
    for path in damaged:  # moved out of the way, never deleted
        assert (finished / UNRESTORABLE_DIR / "8" / path.relative_to(finished / "checkpoints" / "8")).is_file()
    assert without_speed(read_metrics(finished / "metrics.jsonl")) == without_speed(reference[1])
    assert load_trained_model(finished)[2] == 8  # the replayed step 8 was saved again


def test_generate_falls_back_to_the_newest_checkpoint_that_restores(finished, caplog, capsys):
    truncate_checkpoint(finished / "checkpoints" / "8")
    before = snapshot(finished)
    with caplog.at_level(logging.WARNING, logger="xlstm_flax.inference"):
        _, _, step = load_trained_model(finished)
    assert step == 4
    assert any(f"{finished / 'checkpoints' / '8'} does not restore" in r.message for r in caplog.records)
    assert main(["generate", "--run-dir", str(finished), "--tokens", "3"]) == 0
    assert "step 4" in capsys.readouterr().err
    assert snapshot(finished) == before  # generate only reads


def test_a_trained_model_loads_with_memory_for_its_parameters_alone(finished, monkeypatch):
    """generate, export and init_from restore the parameters, never the AdamW moments (twice their
    bytes): with free memory for 1.5x the parameters the model loads, bit-equal to a full restore's
    parameters, where the training state is refused before anything is allocated."""
    config = load_run_config(finished)
    mesh = distributed.make_mesh(distributed.DistributedConfig(), jax.local_devices()[:1])
    reader = Checkpointer(finished / "checkpoints", keep=2, read_only=True)
    full, _, _ = reader.restore(init_train_state(config, mesh)[2])
    reader.close()
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(full["params"]))
    monkeypatch.setattr(memory, "free_bytes", lambda device: params_bytes * 3 // 2)
    with pytest.raises(OutOfMemoryError, match="the parameters and optimiser state need"):
        init_train_state(config, mesh)
    model, _, step = load_trained_model(finished)
    loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert step == 8 and jax.tree.structure(loaded) == jax.tree.structure(full["params"])
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(full["params"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_trained_model_loads_in_bfloat16_for_half_the_memory(finished, monkeypatch, capsys):
    """``dtype="bfloat16"`` (``generate --dtype``) casts the parameters as they are read: with free memory
    for 0.75x the float32 parameters they load, equal to the float32 ones rounded to bfloat16, where the
    float32 load is refused; the CLI generates from them."""
    full, _, _ = load_trained_model(finished)
    fp32 = nnx.to_pure_dict(nnx.state(full, nnx.Param))
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(fp32))
    monkeypatch.setattr(memory, "free_bytes", lambda device: params_bytes * 3 // 4)
    with pytest.raises(OutOfMemoryError, match="the parameters in float32 need .* or in bfloat16 for half"):
        load_trained_model(finished)
    model, config, _ = load_trained_model(finished, dtype="bfloat16")
    assert (config.model.param_dtype, config.model.compute_dtype) == ("bfloat16", "bfloat16")
    loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(fp32), strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jnp.bfloat16)))
    assert main(["generate", "--run-dir", str(finished), "--dtype", "bfloat16", "--tokens", "3"]) == 0
    assert "step 8" in capsys.readouterr().err


def test_no_restorable_checkpoint_names_each_one(recipe, finished, capsys):
    for step in (4, 8):
        truncate_checkpoint(finished / "checkpoints" / str(step))
    before = snapshot(finished)
    with pytest.raises(CheckpointRestoreError) as err:
        load_trained_model(finished)
    for step in (4, 8):
        assert f"checkpoint {finished / 'checkpoints' / str(step)} does not restore (" in str(err.value)
    assert main(["train", "--config", str(recipe), f"run_dir={finished}", *LOG_EVERY_3, "resume=true"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no checkpoint restores" in errors[0]
    assert snapshot(finished) == before
