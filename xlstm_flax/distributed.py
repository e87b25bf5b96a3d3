"""Data parallelism over a ``jax.sharding.Mesh`` with one axis, "data": batches are split over it;
parameters and optimiser state are replicated, or (``shard_params``, FSDP-style) each large array is
split along one dimension and XLA gathers it where it is used. Works unchanged on one CPU device."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How the training state is laid out over the devices."""

    shard_params: bool = False  # split params + optimiser state over the devices (FSDP-style)
    min_shard_size: int = 1 << 18  # arrays with fewer elements stay replicated

    def __post_init__(self):
        if self.min_shard_size < 1:
            raise ValueError(f"min_shard_size must be >= 1, got {self.min_shard_size}")


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Split dimension ``batch_axis`` over the "data" axis; other dimensions whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    devices = mesh.shape[DATA_AXIS]
    if batch_size % devices:
        raise ValueError(
            f"train.batch_size={batch_size} must be divisible by the {devices} devices of the '{DATA_AXIS}' mesh axis"
        )


def state_sharding(shape: Sequence[int], mesh: Mesh, config: DistributedConfig) -> NamedSharding:
    """Replicated, unless ``config.shard_params`` and the array has ``min_shard_size`` elements or
    more: then its largest dimension divisible by the device count is split over "data"."""
    devices = mesh.shape[DATA_AXIS]
    if config.shard_params and devices > 1 and int(np.prod(shape)) >= config.min_shard_size:
        divisible = [d for d in range(len(shape)) if shape[d] % devices == 0]
        if divisible:
            dim = max(divisible, key=lambda d: shape[d])
            return NamedSharding(mesh, PartitionSpec(*([None] * dim), DATA_AXIS))
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(tree: Any, mesh: Mesh, config: DistributedConfig) -> Any:
    """The :func:`state_sharding` of every array (or ``jax.ShapeDtypeStruct``) of ``tree``."""
    return jax.tree.map(lambda x: state_sharding(x.shape, mesh, config), tree)


def constrain_state(tree: Any, mesh: Mesh, config: DistributedConfig) -> Any:
    """Inside ``jit``: pin each array to its :func:`state_sharding`, so a step returns its state laid
    out as it came in (and the next call hits the compiled executable)."""
    return jax.lax.with_sharding_constraint(tree, state_shardings(tree, mesh, config))


def shard_batch(batch: np.ndarray, mesh: Mesh, batch_axis: int = 0) -> jax.Array:
    """Place a host batch on the mesh, split along ``batch_axis``."""
    return jax.device_put(batch, batch_sharding(mesh, batch_axis))
