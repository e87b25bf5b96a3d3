"""Run as a script on 8 fake CPU devices (see test_distributed.py): loss and gradients of a tiny model,
and the logits of two decode steps, under DP, FSDP, TP and DP x TP meshes against one device, printed
as JSON.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/distributed/layouts.py VARIANT

VARIANT: "xlstm7b" (an xLSTM-7B mLSTM block, then an sLSTM block) or "paper" (a paper mLSTM block).
The library's own kernels (chunkwise--jax for sequences, step--jax for decoding) run per device
inside shard_map.
"""

import json
import sys

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from xlstm_flax import distributed, sharding
from xlstm_flax.layers.config import mLSTMLayerConfig, sLSTMLayerConfig
from xlstm_flax.model import xLSTMLMConfig
from xlstm_flax.train.loss import cross_entropy
from xlstm_flax.train.optim import OptimConfig
from xlstm_flax.train.recipe import RunConfig, TrainConfig
from xlstm_flax.train.state import init_train_state

LAYOUTS = {  # name: (data, fsdp, tensor, devices)
    "dp": (8, 1, 1, 8),
    "fsdp": (1, 8, 1, 8),
    "tp": (1, 1, 4, 4),
    "dp_tp": (2, 1, 4, 8),
}
BATCH, SEQ = 8, 16


def run_config(variant: str) -> RunConfig:
    mlstm = mLSTMLayerConfig(variant=variant, num_heads=4, kernel="chunkwise--jax", chunk_size=8)
    model = xLSTMLMConfig(
        vocab_size=64,
        embedding_dim=32,
        num_blocks=2 if variant == "xlstm7b" else 1,
        slstm_at=(1,) if variant == "xlstm7b" else (),
        mlstm=mlstm,
        slstm=sLSTMLayerConfig(num_heads=4),
    )
    return RunConfig(
        model=model,
        optim=OptimConfig(lr=1e-2, warmup_steps=0),
        train=TrainConfig(steps=2, batch_size=BATCH, seq_len=SEQ),
    )


def loss_and_grads(config: RunConfig, layout: distributed.DistributedConfig, devices, tokens):
    """(loss, gradients, the set of parameter PartitionSpecs) of ``tokens`` (B, S + 1) on a mesh over
    ``devices``; the gradients come back laid out like the parameters."""
    mesh = distributed.make_mesh(layout, devices)
    graphdef, rest, state = init_train_state(config, mesh)
    shardings = sharding.state_shardings(graphdef, state, rest, mesh)["params"]

    def loss_fn(params, tokens):
        return cross_entropy(nnx.merge(graphdef, params, rest)(tokens[:, :-1]), tokens[:, 1:])

    batch = distributed.global_batch(tokens, mesh, BATCH)
    with jax.set_mesh(mesh):
        step = jax.jit(jax.value_and_grad(loss_fn), out_shardings=(NamedSharding(mesh, PartitionSpec()), shardings))
        loss, grads = step(state["params"], batch)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state["params"])}
    return float(loss), jax.device_get(grads), specs, decode_logits(graphdef, rest, state["params"], mesh, tokens)


def decode_logits(graphdef, rest, params, mesh, tokens) -> np.ndarray:
    """Logits (2, B, V) of two recurrent steps from the zero state on ``mesh`` (the step kernel)."""

    def two_steps(params, tokens):
        model = nnx.merge(graphdef, params, rest)
        state = model.init_state(BATCH)
        first, state = model.step(tokens[:, 0], state)
        second, _ = model.step(tokens[:, 1], state)
        return jax.numpy.stack([first, second])

    batch = distributed.global_batch(tokens[:, :2], mesh, BATCH)
    with jax.set_mesh(mesh):
        return np.asarray(jax.device_get(jax.jit(two_steps)(params, batch)))


def relative_error(tree, reference) -> float:
    """The largest ||x - ref|| / ||ref|| over the leaves."""
    errors = jax.tree.map(lambda x, r: float(np.linalg.norm(x - r) / max(np.linalg.norm(r), 1e-30)), tree, reference)
    return max(jax.tree.leaves(errors))


def main(variant: str) -> dict:
    config = run_config(variant)
    tokens = np.random.default_rng(1).integers(0, config.model.vocab_size, (BATCH, SEQ + 1), dtype=np.int32)
    devices = jax.devices()
    one = loss_and_grads(config, distributed.DistributedConfig(data=1), devices[:1], tokens)
    report = {}
    for name, (data, fsdp, tensor, count) in LAYOUTS.items():
        layout = distributed.DistributedConfig(data=data, fsdp=fsdp, tensor=tensor)
        loss, grads, specs, logits = loss_and_grads(config, layout, devices[:count], tokens)
        report[name] = {
            "loss_rel_err": abs(loss - one[0]) / abs(one[0]),
            "grad_rel_err": relative_error(grads, one[1]),
            "step_rel_err": float(np.abs(logits - one[3]).max() / np.abs(one[3]).max()),
            "specs": sorted(specs),
        }
    return report


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    print(json.dumps(main(sys.argv[1])))
