"""Data parallelism over a ``jax.sharding.Mesh``: batches split over the "data" axis, parameters and
optimiser state replicated. Works unchanged with a single (CPU) device."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Split dimension ``batch_axis`` over the "data" axis; other dimensions whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    devices = mesh.shape[DATA_AXIS]
    if batch_size % devices:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the {devices} devices "
                         f"of the '{DATA_AXIS}' mesh axis")


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` on all devices of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: np.ndarray, mesh: Mesh, batch_axis: int = 0) -> jax.Array:
    """Place a host batch on the mesh, split along ``batch_axis``."""
    return jax.device_put(batch, batch_sharding(mesh, batch_axis))
