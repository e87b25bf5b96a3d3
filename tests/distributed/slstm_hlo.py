"""Run as a script on 8 fake CPU devices (see test_distributed.py): the sLSTM counterpart of hlo.py. A
one-block sLSTM model's loss compiled under a DP x TP mesh (data 2, tensor 4) with an sLSTM kernel XLA
cannot partition (a host callback, a custom call like the Triton kernel's); prints as JSON the shapes
the kernel received and the all-gathers of the compiled HLO.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.distributed.slstm_hlo [--unwrapped]

``--unwrapped`` calls the kernel without the per-device shard_map (the control).
"""

import json
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests.distributed.hlo import GATHER
from xlstm_flax import distributed
from xlstm_flax.kernels import slstm
from xlstm_flax.kernels.slstm.reference import slstm_scan
from xlstm_flax.layers import slstm as slstm_layer
from xlstm_flax.layers.config import sLSTMLayerConfig
from xlstm_flax.model import xLSTMLMConfig
from xlstm_flax.train.loop import cross_entropy
from xlstm_flax.train.recipe import RunConfig, TrainConfig
from xlstm_flax.train.state import init_train_state

KERNEL = "recurrent--hostcallback"
BATCH, SEQ, HEADS, WIDTH = 8, 16, 4, 32
seen_shapes = []


def host_kernel(pre, recurrent_kernel, initial):
    """The scan backend on the host, behind a custom call."""

    def on_host(pre, recurrent_kernel, *state):
        seen_shapes.append(pre.shape)
        h, last = slstm_scan(jnp.asarray(pre), jnp.asarray(recurrent_kernel), slstm.States(*state))
        return [np.asarray(x) for x in (h, *last)]

    B, S, _, NH, DH = pre.shape
    state = jax.ShapeDtypeStruct((B, NH, DH), jnp.float32)
    h, *last = jax.pure_callback(
        on_host, [jax.ShapeDtypeStruct((B, S, NH, DH), jnp.float32), *[state] * 4], pre, recurrent_kernel, *initial
    )
    return h, slstm.States(*last)


def main() -> dict:
    layer = sLSTMLayerConfig(num_heads=HEADS, kernel=KERNEL)
    model = xLSTMLMConfig(vocab_size=64, embedding_dim=WIDTH, num_blocks=1, slstm_at=(0,), slstm=layer)
    config = RunConfig(model=model, train=TrainConfig(batch_size=BATCH, seq_len=SEQ))
    mesh = distributed.make_mesh(distributed.DistributedConfig(data=2, tensor=4))
    graphdef, rest, state = init_train_state(config, mesh)

    def loss_fn(params, tokens):
        return cross_entropy(nnx.merge(graphdef, params, rest)(tokens[:, :-1]), tokens[:, 1:])

    tokens = np.random.default_rng(0).integers(0, 64, (BATCH, SEQ + 1), dtype=np.int32)
    batch = distributed.global_batch(tokens, mesh, BATCH)
    with jax.set_mesh(mesh):
        compiled = jax.jit(loss_fn).lower(state["params"], batch).compile()
        loss = float(compiled(state["params"], batch))
    dh = WIDTH // HEADS
    return {
        "loss": loss,
        "kernel_pre_shapes": [list(s) for s in sorted(set(seen_shapes))],
        "all_gather_shapes": [[int(d) for d in dims.split(",") if d] for dims in GATHER.findall(compiled.as_text())],
        "global_shapes": {
            "pre": [BATCH, SEQ, 4, HEADS, dh],
            "h": [BATCH, SEQ, HEADS, dh],
            "x": [BATCH, SEQ, WIDTH],
            "recurrent_kernel": [4, HEADS, dh, dh],
        },
    }


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    with mock.patch.dict(slstm._KERNELS, {KERNEL: f"{__name__}:host_kernel"}):
        if "--unwrapped" in sys.argv:
            slstm_layer.per_device_at = lambda fn, *args: fn
        print(json.dumps(main()))
