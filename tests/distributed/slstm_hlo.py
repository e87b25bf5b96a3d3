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

from tests.distributed.hlo import BATCH, HEADS, SEQ, WIDTH, loss_and_gathers
from xlstm_flax.kernels import slstm
from xlstm_flax.kernels.slstm.reference import slstm_scan
from xlstm_flax.layers import slstm as slstm_layer
from xlstm_flax.layers.config import sLSTMLayerConfig
from xlstm_flax.model import xLSTMLMConfig

KERNEL = "recurrent--hostcallback"
seen_shapes = []


def host_kernel(gates, bias, recurrent_kernel, initial):
    """The scan backend on the host, behind a custom call."""

    def on_host(i, f, z, o, bias, recurrent_kernel, *state):
        seen_shapes.append(i.shape)
        gates = slstm.GateInputs(*map(jnp.asarray, (i, f, z, o)))
        h, last = slstm_scan(gates, jnp.asarray(bias), jnp.asarray(recurrent_kernel), slstm.States(*state))
        return [np.asarray(x) for x in (h, *last)]

    B, S, NH, DH = gates[0].shape
    state = jax.ShapeDtypeStruct((B, NH, DH), jnp.float32)
    h, *last = jax.pure_callback(
        on_host,
        [jax.ShapeDtypeStruct((B, S, NH, DH), jnp.float32), *[state] * 4],
        *gates,
        bias,
        recurrent_kernel,
        *initial,
    )
    return h, slstm.States(*last)


def main() -> dict:
    layer = sLSTMLayerConfig(num_heads=HEADS, kernel=KERNEL)
    loss, gathers = loss_and_gathers(
        xLSTMLMConfig(vocab_size=64, embedding_dim=WIDTH, num_blocks=1, slstm_at=(0,), slstm=layer)
    )
    dh = WIDTH // HEADS
    return {
        "loss": loss,
        "kernel_gate_shapes": [list(s) for s in sorted(set(seen_shapes))],
        "all_gather_shapes": gathers,
        "global_shapes": {
            "gate": [BATCH, SEQ, HEADS, dh],  # each gate input, and h
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
