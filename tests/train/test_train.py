"""End-to-end training on CPU with a very small model: the CLI run learns and writes its artifacts
(the resolved mLSTM kernel in the log and the saved config), the train step compiles once, resume
(after stop_at, SIGTERM, or a save killed midway) reproduces an uninterrupted run's losses bit for bit, and a
NaN stops the run keeping the last good checkpoint.

Exactness: on CPU the same compiled step on the same inputs is deterministic, so resumed losses are
compared with ``==`` (no tolerance)."""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xlstm_flax import distributed
from xlstm_flax.cli import main
from xlstm_flax.inference import load_trained_model
from xlstm_flax.kernels import registry
from xlstm_flax.train import NonFiniteLossError, load_recipe, loop, train
from xlstm_flax.train.checkpoint import Checkpointer
from xlstm_flax.train.loop import make_steps
from xlstm_flax.train.metrics import latest_records, read_metrics
from xlstm_flax.train.state import init_train_state

STEPS = 16
STDLIB_JSON = f"{sysconfig.get_paths()['stdlib']}/json/*.py"
# two blocks (mLSTM + sLSTM) of width 32: the reference run, resume and SIGTERM tests
RECIPE = f"""
model:
  preset: tiny
  embedding_dim: 32
  num_blocks: 2
  slstm_at: [1]
  mlstm: {{num_heads: 2, dim_round_to: 16, chunk_size: 16}}
  slstm: {{num_heads: 2}}
data: {{path: "{STDLIB_JSON}", val_fraction: 0.2}}
optim: {{lr: 1.0e-2, warmup_steps: 2, min_lr_ratio: 0.1}}
train: {{steps: {STEPS}, batch_size: 4, seq_len: 32, eval_every: {STEPS}, eval_batches: 2, log_every: 1,
         sample_tokens: 0, tensorboard: false}}
checkpoint: {{every: 4, keep: 2}}
"""
# one mLSTM block: cheaper to compile, for the killed-save and NaN tests
CHEAP = ["model.num_blocks=1", "model.slstm_at=[]", "train.steps=8", "train.eval_every=8"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "small.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    """An uninterrupted run through the CLI; its per-step losses come from metrics.jsonl."""
    run_dir = tmp_path_factory.mktemp("reference")
    with contextlib.redirect_stdout(io.StringIO()) as stdout:  # the run's log lines
        assert main(["train", "--config", str(recipe), f"run_dir={run_dir}"]) == 0
    return run_dir, train_losses(run_dir), stdout.getvalue().splitlines()


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in latest_records(read_metrics(Path(run_dir) / "metrics.jsonl"), "train")}


def run(recipe, run_dir, *overrides, **kwargs):
    return train(load_recipe(recipe, [f"run_dir={run_dir}", *overrides]), **kwargs)


def test_cli_run_learns_and_writes_its_artifacts(recipe, reference):
    run_dir, losses, logged = reference
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = losses[1], np.mean([losses[s] for s in range(STEPS - 3, STEPS + 1)])
    assert first > 5.0 and last < first - 1.5, (first, last)  # ln(258) = 5.55 at init
    val = latest_records(read_metrics(run_dir / "metrics.jsonl"), "val")
    assert [r["step"] for r in val] == [STEPS] and val[0]["loss"] < first - 1.5
    assert np.isclose(val[0]["bits_per_byte"], val[0]["loss"] / np.log(2))
    assert (run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_recipe(run_dir / "config.yaml") == load_recipe(recipe, [f"run_dir={run_dir}"])
    kernel = (  # what "auto" picks without a GPU
        "mLSTM kernel: chunkwise--jax (model.mlstm.kernel: auto); "
        "sLSTM kernel: recurrent--jax (model.slstm.kernel: auto)"
    )
    assert (run_dir / "config.yaml").read_text().startswith(f"# {kernel}\n")
    assert any(line.startswith("model: ") and line.endswith(kernel) for line in logged), logged
    assert Checkpointer(run_dir / "checkpoints", keep=2).all_steps() == [12, 16]  # keep the last 2


def test_resume_after_stop_reproduces_losses_and_compiles_once(recipe, reference, tmp_path, monkeypatch):
    """Both sessions reuse the reference run's compiled steps: the loss function is never traced again."""
    _, expected, _ = reference
    traced = []

    def counted_cross_entropy(head, features, *args):
        traced.append(features.shape)
        return loop_cross_entropy(head, features, *args)

    loop_cross_entropy = loop.chunked_cross_entropy
    monkeypatch.setattr(loop, "chunked_cross_entropy", counted_cross_entropy)
    first = run(recipe, tmp_path, stop_at=6)
    assert first.interrupted and first.step == 6
    second = run(recipe, tmp_path, "resume=true")
    assert second.start_step == 6 and second.step == STEPS
    assert first.train_losses == {s: expected[s] for s in range(1, 7)}
    assert second.train_losses == {s: expected[s] for s in range(7, STEPS + 1)}
    assert traced == []  # same cached steps for both sessions and the CLI run


def test_sigterm_saves_then_resume_continues_exactly(recipe, reference, tmp_path):
    """SIGTERM arrives during the step-4 evaluation; the run finishes step 4, saves and stops."""
    _, expected, _ = reference

    def log(message):
        if message.startswith("step 4: val"):
            os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    stopped = run(recipe, tmp_path, "train.eval_every=4", log=log)
    assert stopped.interrupted and stopped.step == 4
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the run restored it
    assert Checkpointer(tmp_path / "checkpoints", keep=2).all_steps() == [4]
    resumed = run(recipe, tmp_path, "resume=true")
    assert resumed.train_losses == {s: expected[s] for s in range(5, STEPS + 1)}


def test_resume_with_document_packing_reproduces_losses(recipe, tmp_path):
    """With data.pack_documents (and the first-target mask) a resumed run repeats an uninterrupted one."""
    packing = [*CHEAP, "data.pack_documents=true", "data.mask_first_target=true"]
    whole = run(recipe, tmp_path / "whole", *packing)
    first = run(recipe, tmp_path / "split", *packing, stop_at=3)
    second = run(recipe, tmp_path / "split", *packing, "resume=true")
    assert second.start_step == 3
    assert {**first.train_losses, **second.train_losses} == whole.train_losses


KILLED_SAVE = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
from xlstm_flax.train import load_recipe, train

finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def die_before_commit(self):
    # every file of the step-8 checkpoint is written under its temporary name: die before the rename
    if self.get_final().name == "8":
        os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self)

atomicity.AtomicRenameTemporaryPath.finalize = die_before_commit
train(load_recipe(sys.argv[1], sys.argv[2:]))
"""


def test_save_killed_midway_keeps_last_good_checkpoint(recipe, tmp_path):
    """A process killed while saving step 8 leaves step 4 intact; resuming from it replays steps
    5..8 with exactly the losses the killed process logged."""
    child = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(recipe), f"run_dir={tmp_path}", *CHEAP],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    entries = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "4" in entries and "8" not in entries
    assert any(name.startswith("8.orbax-checkpoint-tmp") for name in entries), entries
    logged_by_killed_run = train_losses(tmp_path)
    assert sorted(logged_by_killed_run) == list(range(1, 9))
    resumed = run(recipe, tmp_path, *CHEAP, "resume=true")
    assert resumed.start_step == 4
    assert resumed.train_losses == {s: logged_by_killed_run[s] for s in range(5, 9)}
    assert not any("tmp" in p.name for p in (tmp_path / "checkpoints").iterdir())


def poison_step(monkeypatch, at_step: int) -> None:
    """From then on, the update at step ``at_step`` returns a NaN loss and NaN parameters: the step is
    recognised by its train batch, whose sampling key names it (the compiled step is untouched)."""
    make, sample = loop.make_steps, loop.sample_windows
    step_of_batch = {}

    def sample_spy(streams, length, batch_size, key, rows=slice(None)):
        windows = sample(streams, length, batch_size, key, rows)
        if key[1] == loop.TRAIN_SPLIT:  # (seed, split, step, micro-batch)
            step_of_batch[windows.tobytes()] = key[2]
        return windows

    def make_poisoned(*args):
        train_step, eval_step = make(*args)

        def poisoned(state, rest, batches):
            state, metrics = train_step(state, rest, batches)
            if step_of_batch.get(np.asarray(batches)[0].tobytes()) == at_step:
                state = jax.tree.map(lambda x: x * jnp.nan, state)
                metrics = {**metrics, "loss": metrics["loss"] * jnp.nan}
            return state, metrics

        poisoned.lower = train_step.lower  # the memory check before the first step compiles the real step
        return poisoned, eval_step

    monkeypatch.setattr(loop, "sample_windows", sample_spy)
    monkeypatch.setattr(loop, "make_steps", make_poisoned)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(recipe, tmp_path, capsys, monkeypatch):
    poison_step(monkeypatch, at_step=6)
    rc = main(["train", "--config", str(recipe), f"run_dir={tmp_path}", *CHEAP])
    assert rc == 1
    message = capsys.readouterr().err
    assert "loss is nan" in message and "at step 6" in message and "after step 4" in message, message
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=2)
    assert checkpointer.all_steps() == [4]
    with pytest.raises(NonFiniteLossError):
        run(recipe, tmp_path, *CHEAP, "resume=true")
    assert checkpointer.all_steps() == [4]
    model, _, step = load_trained_model(tmp_path)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert step == 4 and all(np.isfinite(np.asarray(x)).all() for x in params)


def test_two_cpu_devices_give_the_same_losses_as_one(recipe, tmp_path):
    """FSDP over 2 fake CPU devices (batch split in halves; params and optimiser state split along
    the model width) matches one device up to fp32 reduction order (rtol 1e-5)."""
    two = tmp_path / "two"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    code = (
        "import sys, jax; assert jax.device_count() == 2; from xlstm_flax.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, "train", "--config", str(recipe), f"run_dir={two}", *CHEAP, "distributed.fsdp=2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "on 2 cpu device(s)" in child.stdout and "state arrays sharded" in child.stdout
    one = run(recipe, tmp_path / "one", *CHEAP)
    two_losses = train_losses(two)
    np.testing.assert_allclose(
        [two_losses[s] for s in range(1, 9)], [one.train_losses[s] for s in range(1, 9)], rtol=1e-5
    )


def test_generate_command_samples_from_the_checkpoint(reference, capsys):
    run_dir, _, _ = reference
    assert main(["generate", "--run-dir", str(run_dir), "--prompt", "import ", "--tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("import ") and len(captured.out.encode()) > len("import ")
    assert f"step {STEPS}" in captured.err


def copy_run_naming_kernels(run_dir: Path, dest: Path, mlstm: str, slstm: str) -> Path:
    """A copy of ``run_dir`` whose saved config names these mLSTM and sLSTM kernels; returns its config path."""
    shutil.copytree(run_dir, dest)
    config = dest / "config.yaml"
    text = config.read_text()
    for kind, kernel in (("mlstm", mlstm), ("slstm", slstm)):
        line = text.index("    kernel: auto\n", text.index(f"  {kind}:\n"))
        text = text[:line] + f"    kernel: {kernel}\n" + text[line + len("    kernel: auto\n") :]
    config.write_text(text)
    return config


def test_a_run_that_named_triton_kernels_samples_here_with_auto(reference, tmp_path, capsys, caplog, monkeypatch):
    """A run trained on a GPU with both Triton kernels named samples on a machine without them, with "auto" in
    their place and one warning per key, and leaves the run's config as it was (resume: test_resume.py)."""
    monkeypatch.setattr(registry, "triton_usable", lambda: False)
    run_dir = tmp_path / "gpu_run"
    config = copy_run_naming_kernels(reference[0], run_dir, "chunkwise--triton", "recurrent--triton")
    saved = config.read_text()
    assert main(["generate", "--run-dir", str(run_dir), "--prompt", "import ", "--tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("import ")
    warned = [
        r.getMessage() for r in caplog.records if "cannot run here; loading the run with 'auto'" in r.getMessage()
    ]
    assert len(warned) == 2 and "model.mlstm.kernel" in warned[0] and "model.slstm.kernel" in warned[1], warned
    assert config.read_text() == saved


def test_a_run_naming_an_unknown_kernel_is_refused(reference, tmp_path, capsys):
    """Only kernels that exist but cannot run here are replaced; an unknown name is the config's error."""
    run_dir = tmp_path / "renamed"
    copy_run_naming_kernels(reference[0], run_dir, "chunkwise--nope", "auto")
    assert main(["generate", "--run-dir", str(run_dir), "--prompt", "import "]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown kernel 'chunkwise--nope'" in err, err


def test_gradient_accumulation_equals_one_big_batch(recipe):
    """Two accumulated micro-batches of 4 give the gradient of one batch of 8: same loss and
    gradient norm at step 1 (rtol 1e-5, fp32 sums in another order) and the same loss after the
    update (rtol 1e-4)."""
    config = load_recipe(recipe, [*CHEAP, "optim.warmup_steps=0"])
    mesh = distributed.make_mesh(config.distributed)
    graphdef, rest, state = init_train_state(config, mesh)
    train_step, _ = make_steps(graphdef, config.optim, config.train.steps, mesh)
    tokens = np.random.default_rng(0).integers(0, 256, size=(8, config.train.seq_len + 1), dtype=np.int32)
    outs = {}
    for accum in (1, 2):
        current = jax.tree.map(jnp.copy, state)
        batches = tokens.reshape(accum, 8 // accum, -1)
        outs[accum] = []
        for _ in range(2):
            current, out = train_step(current, rest, batches)
            outs[accum].append({k: float(v) for k, v in out.items()})
    np.testing.assert_allclose(outs[2][0]["loss"], outs[1][0]["loss"], rtol=1e-5)
    np.testing.assert_allclose(outs[2][0]["grad_norm"], outs[1][0]["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(outs[2][1]["loss"], outs[1][1]["loss"], rtol=1e-4)
    assert outs[1][1]["loss"] < outs[1][0]["loss"]


def test_bf16_compute_keeps_fp32_params_and_optimiser_state(recipe):
    """With model.compute_dtype=bfloat16 the step's matmuls run in bf16 while params, optimiser
    moments and the loss stay fp32 (checked on the traced step, nothing compiled)."""
    config = load_recipe(recipe, [*CHEAP, "model.compute_dtype=bfloat16"])
    mesh = distributed.make_mesh(config.distributed)
    graphdef, rest, state = init_train_state(config, mesh)
    train_step, _ = make_steps(graphdef, config.optim, config.train.steps, mesh)
    batches = np.zeros((1, 4, config.train.seq_len + 1), np.int32)
    new_state, out = jax.eval_shape(train_step, state, rest, batches)
    float_dtypes = {x.dtype for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert float_dtypes == {jnp.dtype(jnp.float32)} and out["loss"].dtype == jnp.float32
    jaxpr = str(jax.make_jaxpr(train_step)(state, rest, batches))
    assert "dot_general" in jaxpr and "bf16[" in jaxpr
