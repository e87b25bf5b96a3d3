"""Devices, processes and batches: the ``data`` x ``fsdp`` x ``tensor`` mesh over all devices of all
processes, multi-process start-up (``jax.distributed``) and global batches fed process by process.

Where each array lives on the mesh is :mod:`xlstm_flax.sharding`'s business. With one process and
the default config (``data: -1``) this is plain data parallelism over the local devices.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .config import ConfigError
from .sharding import BATCH_AXES, MESH_AXES


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Mesh axis sizes (-1: all devices the other axes leave; their product must equal the device
    count of all processes) and, for several processes, where they meet: left None, the values come
    from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` or a cluster JAX
    detects (SLURM, Open MPI, ...)."""

    data: int = -1  # batch split (parameters replicated)
    fsdp: int = 1  # batch split and parameters split along the model width
    tensor: int = 1  # heads and FFN hidden split (tensor parallelism)
    coordinator_address: str | None = None  # "host:port" of process 0
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        sizes = {axis: getattr(self, axis) for axis in MESH_AXES}
        for axis, size in sizes.items():
            if size < 1 and size != -1:
                raise ValueError(f"{axis} must be >= 1 or -1 (the remaining devices), got {size}")
        if list(sizes.values()).count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {sizes}")

    @property
    def multi_process(self) -> bool:
        """True when a coordinator is configured here or in the environment."""
        configured = self.coordinator_address is not None or self.num_processes is not None
        return configured or "JAX_COORDINATOR_ADDRESS" in os.environ


def initialize(config: DistributedConfig) -> None:
    """Join the other processes (``jax.distributed.initialize``) when ``config.multi_process``; must run
    before anything touches a JAX device. Idempotent."""
    if not config.multi_process or jax.distributed.is_initialized():
        return
    env = os.environ.get
    num_processes = config.num_processes or (int(env("JAX_NUM_PROCESSES")) if env("JAX_NUM_PROCESSES") else None)
    process_id = (
        config.process_id
        if config.process_id is not None
        else (int(env("JAX_PROCESS_ID")) if env("JAX_PROCESS_ID") else None)
    )
    jax.distributed.initialize(config.coordinator_address, num_processes, process_id)


def axis_sizes(config: DistributedConfig, device_count: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with -1 resolved; error when they do not multiply to ``device_count``."""
    sizes = [getattr(config, axis) for axis in MESH_AXES]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if device_count % known:
            raise ConfigError(f"distributed: {dict(zip(MESH_AXES, sizes))} does not divide the {device_count} devices")
        sizes[sizes.index(-1)] = device_count // known
    if int(np.prod(sizes)) != device_count:
        raise ConfigError(
            f"distributed: data x fsdp x tensor = {sizes} must multiply to the {device_count} devices of all processes"
        )
    return tuple(sizes)


def make_mesh(config: DistributedConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over ``devices`` (default: all devices of all processes, ordered
    by process, so each process holds a contiguous block of the batch)."""
    devices = jax.devices() if devices is None else list(devices)
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    shape = axis_sizes(config, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def check_layout(mesh: Mesh, batch_size: int, num_heads: Sequence[int]) -> None:
    """The global batch must split over data x fsdp, and every layer's heads over tensor."""
    batch_split = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % batch_split:
        raise ConfigError(
            f"train.batch_size={batch_size} must be divisible by data x fsdp = {batch_split} (mesh {dict(mesh.shape)})"
        )
    for heads in num_heads:
        if heads % mesh.shape["tensor"]:
            raise ConfigError(f"num_heads={heads} must be divisible by distributed.tensor={mesh.shape['tensor']}")


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Dimension ``batch_axis`` split over data x fsdp; the others whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), BATCH_AXES))


def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` that this process's devices hold."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
    starts = sorted({index[0].indices(batch_size)[:2] for index in indices})
    begin, end = starts[0][0], starts[-1][1]
    if sum(stop - start for start, stop in starts) != end - begin:
        raise ValueError(f"this process's devices hold non-contiguous batch rows {starts}")
    return slice(begin, end)


def global_batch(local: np.ndarray, mesh: Mesh, batch_size: int, batch_axis: int = 0) -> jax.Array:
    """The global array of this process's rows ``local`` (its :func:`process_rows` along ``batch_axis``)
    and the other processes' rows; ``batch_size`` is the global size of that axis."""
    shape = list(local.shape)
    shape[batch_axis] = batch_size
    return jax.make_array_from_process_local_data(batch_sharding(mesh, batch_axis), local, tuple(shape))


def is_main_process() -> bool:
    """Process 0 writes logs, metrics, configs and samples."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process has reached the point called ``name``."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def all_succeeded(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (a collective: every process must call it). Lets a failure
    on one process stop the others at once instead of leaving them waiting at the next sync."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def constrain_state(tree: Any, shardings: Any) -> Any:
    """Inside ``jit``: pin each array to its sharding, so a step returns its state laid out as it came
    in (and the next call hits the compiled executable)."""
    return jax.lax.with_sharding_constraint(tree, shardings)
