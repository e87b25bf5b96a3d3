"""Training beyond one device, on 8 fake CPU devices (``--xla_force_host_platform_device_count=8``,
which must be set before JAX starts: each check runs in its own Python process).

- DP, FSDP, TP and DP x TP give the loss and gradients of one device (fp32; relative error of the
  loss and of every gradient array's norm <= 1e-5) for both mLSTM variants and sLSTM, and the logits
  of two decode steps (step kernel; max error / max logit <= 1e-5).
- A kernel XLA cannot partition (a custom call) receives per-device shards: no all-gather of q/k/v
  or (B, S, D) activations in the compiled HLO; without the shard_map wrapper it would (the control).
  The same for an sLSTM kernel (its gate inputs, R, h).
- Two processes x 4 devices (JAX CPU collectives, a localhost coordinator) train as one process x 8
  devices does (losses rtol 1e-5); their checkpoint resumes under a 1 x 8 mesh of another layout and
  continues with the losses of the uninterrupted run (rtol 1e-5).
- When process 0 refuses the run directory, process 1 stops too (no wait at the next sync) and the
  directory is untouched.
"""

import json
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from xlstm_flax.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 600  # seconds per process (a loaded 2-core machine): a hung collective fails instead of blocking


def fake_devices_env(count: int, **extra: str) -> dict:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
        "JAX_PLATFORMS": "cpu",
        **extra,
    }


def run_json(*args: str) -> dict:
    """Run ``python -m tests.distributed.<args>`` on 8 fake devices; its last stdout line as JSON."""
    child = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=fake_devices_env(8),
        cwd=ROOT,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variant", ["xlstm7b", "paper"])  # xlstm7b: an mLSTM and an sLSTM block
def test_parallel_layouts_give_the_loss_and_gradients_of_one_device(variant):
    report = run_json("tests.distributed.layouts", variant)
    assert set(report) == {"dp", "fsdp", "tp", "dp_tp"}
    for layout, result in report.items():
        assert result["loss_rel_err"] <= 1e-5, (layout, result)
        assert result["grad_rel_err"] <= 1e-5, (layout, result)
        assert result["step_rel_err"] <= 1e-5, (layout, result)
    # the layouts really split the parameters: along the width under FSDP, heads / FFN hidden under TP
    assert any("fsdp" in spec for spec in report["fsdp"]["specs"])
    assert any("tensor" in spec for spec in report["tp"]["specs"])
    assert not any("fsdp" in spec or "tensor" in spec for spec in report["dp"]["specs"])


def test_custom_call_kernel_receives_per_device_shards_without_gathers():
    wrapped = run_json("tests.distributed.hlo")
    q = wrapped["global_shapes"]["q"]
    assert wrapped["kernel_q_shapes"] == [[q[0] // 2, q[1] // 4, *q[2:]]]  # data 2, tensor 4
    assert not set(map(tuple, wrapped["all_gather_shapes"])) & set(map(tuple, wrapped["global_shapes"].values()))
    control = run_json("tests.distributed.hlo", "--unwrapped")
    assert control["kernel_q_shapes"] == [q] and q in control["all_gather_shapes"]
    np.testing.assert_allclose(wrapped["loss"], control["loss"], rtol=1e-6)


def test_slstm_custom_call_kernel_receives_per_device_shards_without_gathers():
    wrapped = run_json("tests.distributed.slstm_hlo")
    gate = wrapped["global_shapes"]["gate"]
    assert wrapped["kernel_gate_shapes"] == [[gate[0] // 2, gate[1], gate[2] // 4, gate[3]]]  # data 2, tensor 4
    assert not set(map(tuple, wrapped["all_gather_shapes"])) & set(map(tuple, wrapped["global_shapes"].values()))
    control = run_json("tests.distributed.slstm_hlo", "--unwrapped")
    assert control["kernel_gate_shapes"] == [gate] and gate in control["all_gather_shapes"]
    np.testing.assert_allclose(wrapped["loss"], control["loss"], rtol=1e-6)


RECIPE = f"""
model:
  preset: tiny
  embedding_dim: 32
  num_blocks: 1
  slstm_at: []
  mlstm: {{num_heads: 4, dim_round_to: 16, chunk_size: 8, kernel: chunkwise--jax}}
data: {{path: "{sysconfig.get_paths()["stdlib"]}/json/*.py", val_fraction: 0.2}}
optim: {{lr: 1.0e-2, warmup_steps: 0, decay: constant}}
train: {{steps: 5, batch_size: 8, seq_len: 16, eval_every: 100, eval_batches: 1, log_every: 1,
         sample_tokens: 0, tensorboard: false}}
checkpoint: {{every: 3, keep: 2}}
"""
TRAIN = ("import sys; from xlstm_flax.cli import main; sys.exit(main(sys.argv[1:]))",)


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch_two_processes(*args: str) -> list[tuple[int, str, str]]:
    """Run the CLI with ``args`` as 2 processes x 4 fake devices; (returncode, stdout, stderr) of each."""
    port = free_port()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", *TRAIN, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=fake_devices_env(
                4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank)
            ),
        )
        for rank in range(2)
    ]
    outputs = [child.communicate(timeout=TIMEOUT) for child in children]
    return [(child.returncode, out, err) for child, (out, err) in zip(children, outputs)]


def test_two_processes_train_like_one_and_their_checkpoint_restores_under_another_mesh(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    train = [sys.executable, "-c", *TRAIN, "train", "--config", str(recipe)]
    two, one = tmp_path / "two", tmp_path / "one"
    outputs = launch_two_processes(
        "train", "--config", str(recipe), f"run_dir={two}", "train.steps=3", "distributed.data=2", "distributed.fsdp=4"
    )
    for returncode, _, err in outputs:
        assert returncode == 0, err[-3000:]
    assert "in 2 process(es)" in outputs[0][1] and "model:" not in outputs[1][1]  # process 0 alone logs

    def train_here(*overrides):
        child = subprocess.run(
            [*train, *overrides], capture_output=True, text=True, timeout=TIMEOUT, env=fake_devices_env(8), cwd=ROOT
        )
        assert child.returncode == 0, child.stderr[-3000:]

    train_here(f"run_dir={one}", "distributed.data=2", "distributed.fsdp=4")
    train_here(f"run_dir={two}", "resume=true", "distributed.data=1", "distributed.fsdp=2", "distributed.tensor=4")
    reference, resumed = train_losses(one), train_losses(two)
    assert sorted(resumed) == sorted(reference) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([resumed[s] for s in range(1, 6)], [reference[s] for s in range(1, 6)], rtol=1e-5)


def test_a_run_directory_refused_by_process_0_stops_every_process(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "metrics.jsonl").write_text("a run that is already here\n")
    outputs = launch_two_processes("train", "--config", str(recipe), f"run_dir={taken}", "distributed.data=-1")
    (code0, _, err0), (code1, _, err1) = outputs
    assert code0 != 0 and "already holds a run" in err0, err0[-3000:]
    assert code1 != 0 and f"another process failed to open run directory {taken}" in err1, err1[-3000:]
    assert sorted(p.name for p in taken.iterdir()) == ["metrics.jsonl"]
    assert (taken / "metrics.jsonl").read_text() == "a run that is already here\n"
