"""Run as a script on 8 fake CPU devices (see test_distributed.py): compile a tiny xLSTM-7B-style model's
loss under a DP x TP mesh (data 2, tensor 4) with an mLSTM kernel that XLA cannot partition (a host
callback, a custom call like jax-triton's), run it, and print as JSON the shapes the kernel received
and the all-gathers of the compiled HLO.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/distributed/hlo.py [--unwrapped]

``--unwrapped`` calls the kernel without the per-device shard_map (the control: XLA must then gather).
"""

import json
import re
import sys

import jax
import numpy as np
from flax import nnx

from tests.reference import mlstm_reference
from xlstm_flax import distributed
from xlstm_flax.kernels import registered_kernel
from xlstm_flax.layers import mlstm_cell
from xlstm_flax.layers.config import mLSTMLayerConfig
from xlstm_flax.model import xLSTMLMConfig
from xlstm_flax.train.loss import cross_entropy
from xlstm_flax.train.recipe import RunConfig, TrainConfig
from xlstm_flax.train.state import init_train_state

KERNEL = "chunkwise--hostcallback"
BATCH, SEQ, HEADS, WIDTH = 8, 16, 4, 32
GATHER = re.compile(r"= \w+\[([\d,]*)\]\S* all-gather(?:-start)?\(")
seen_shapes = []


def host_kernel(q, k, v, i, f, *, return_last_states=False, eps=1e-6, chunk_size=None):
    """The mLSTM forward (float64 reference) on the host, behind a custom call; h only."""
    del chunk_size
    assert not return_last_states

    def on_host(*arrays):
        seen_shapes.append(arrays[0].shape)
        with jax.enable_x64():
            return np.asarray(mlstm_reference(*arrays, eps=eps)[0], np.float32)

    out = jax.ShapeDtypeStruct((*q.shape[:3], v.shape[-1]), q.dtype)
    return jax.pure_callback(on_host, out, q, k, v, i, f)


def loss_and_gathers(model: xLSTMLMConfig) -> tuple[float, list[list[int]]]:
    """The loss of ``model`` compiled and run under the DP x TP mesh, and the shapes of the compiled
    HLO's all-gathers."""
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
    return loss, [[int(d) for d in dims.split(",") if d] for dims in GATHER.findall(compiled.as_text())]


def main() -> dict:
    mlstm = mLSTMLayerConfig(num_heads=HEADS, kernel=KERNEL)
    loss, gathers = loss_and_gathers(
        xLSTMLMConfig(vocab_size=64, embedding_dim=WIDTH, num_blocks=1, slstm_at=(), mlstm=mlstm)
    )
    global_shapes = {
        "q": [BATCH, HEADS, SEQ, mlstm.qk_dim(WIDTH) // HEADS],
        "v": [BATCH, HEADS, SEQ, mlstm.v_dim(WIDTH) // HEADS],
        "x": [BATCH, SEQ, WIDTH],
        "q_flat": [BATCH, SEQ, mlstm.qk_dim(WIDTH)],
        "v_flat": [BATCH, SEQ, mlstm.v_dim(WIDTH)],
    }
    return {
        "loss": loss,
        "kernel_q_shapes": [list(s) for s in sorted(set(seen_shapes))],
        "all_gather_shapes": gathers,
        "global_shapes": global_shapes,
    }


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    if "--unwrapped" in sys.argv:
        mlstm_cell.per_device_over_heads = lambda fn, name, batch_only=(): fn
    with registered_kernel(KERNEL, host_kernel):
        print(json.dumps(main()))
