"""Where every array lives on the device mesh.

Parameters carry logical axis names (Flax partitioning metadata, set in the layers with
:func:`partitioned` / :func:`param`); :data:`RULES` is the one table that maps those names to the mesh
axes ``data``, ``fsdp`` and ``tensor``. Optimiser moments follow their parameters. Every recurrence
kernel (sequence and step, every backend) runs per device inside ``shard_map``
(:func:`per_device_over_heads`): batch split over ``data`` x ``fsdp``, heads over ``tensor``. A custom
call (Triton through jax-triton) cannot be partitioned by XLA, which would gather its inputs; the
pure-JAX backends take the same path so that no backend depends on how the partitioner handles scans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)
BATCH_AXES = (DATA, FSDP)  # the batch dimension is split over both

# logical axis name -> mesh axis (None: not split)
RULES: dict[str, str | None] = {
    "embed": FSDP,  # the model width D: FSDP splits every parameter along it
    "vocab": None,
    "heads": TENSOR,  # head-major feature axes of mLSTM / sLSTM (NH, NH * DH): tensor parallel
    "mlp": TENSOR,  # the FFN hidden axis (up column-parallel, down row-parallel)
    "layers": None,  # the stacked-blocks axis of scan_layers
}
LAYERS = "layers"


def partitioned(init: nnx.Initializer, *names: str | None) -> nnx.Initializer:
    """``init`` whose parameter carries the logical axis ``names`` (one per dimension)."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


def param(value: jax.Array, *names: str | None) -> nnx.Param:
    """An ``nnx.Param`` holding ``value`` with the logical axis ``names`` (one per dimension)."""
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def mesh_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The mesh ``PartitionSpec`` of an array with logical axis ``names``; a dimension that the mesh axis
    does not divide stays whole (small gate biases, say, when heads < tensor size)."""
    axes = []
    for name, size in zip(names, shape):
        if name is not None and name not in RULES:
            raise ValueError(f"logical axis {name!r} has no entry in xlstm_flax.sharding.RULES")
        axis = RULES.get(name) if name is not None else None
        divides = axis is not None and mesh.shape[axis] > 1 and size % mesh.shape[axis] == 0
        axes.append(axis if divides else None)
    return PartitionSpec(*axes)


def logical_axes(graphdef: nnx.GraphDef, params: Any, rest: Any) -> Any:
    """The logical axis names of every parameter, as a pure dict shaped like ``params``."""
    model = nnx.merge(graphdef, params, rest)
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    return nnx.to_pure_dict(specs)


def param_shardings(names: Any, params: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` of every parameter of the pure dict ``params`` from its logical axis ``names``
    (a pure dict of ``PartitionSpec`` of logical names, as :func:`logical_axes` gives)."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, mesh_spec(tuple(spec), x.shape, mesh)),
        names,
        params,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def state_shardings(graphdef: nnx.GraphDef, state: Any, rest: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` of every array of ``state = {"params", "opt_state"}`` (arrays or
    ``jax.ShapeDtypeStruct``): parameters by their logical axes and :data:`RULES`; an optimiser leaf
    whose tree path ends with a parameter's path (AdamW moments) like that parameter; the rest
    (step counts) replicated."""
    params = param_shardings(logical_axes(graphdef, state["params"], rest), state["params"], mesh)
    by_path = {path: s for path, s in jax.tree_util.tree_flatten_with_path(params)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def follow(path, x):
        del x
        matches = (by_path.get(tuple(path[start:])) for start in range(len(path)))
        return next((m for m in matches if m is not None), replicated)

    return {"params": params, "opt_state": jax.tree_util.tree_map_with_path(follow, state["opt_state"])}


def per_device_over_heads(fn: Callable, kernel_name: str, batch_only: Sequence[int] = ()) -> Callable:
    """``fn`` (the kernel ``kernel_name`` with its options) run on each device's
    (B / (data * fsdp), NH / tensor, ...) slice of its arguments, all of them arrays (B, NH, ...), under
    the mesh set with ``jax.set_mesh`` (mLSTM heads are independent, so the kernel needs no
    communication); the positional arguments ``batch_only`` (arrays (B, ...) without a head axis, such
    as segment ids) are split over the batch only. ``fn`` itself without such a mesh or on one device;
    ``kernel_name`` names the kernel in the error for a batch or head count the mesh does not divide."""
    return per_device_at(fn, kernel_name, lambda n: (0, None) if n in batch_only else (0, 1), lambda spec: spec(0, 1))


def split_spec(batch_axis: int | None, head_axis: int | None) -> PartitionSpec:
    """Splits dimension ``batch_axis`` over data x fsdp and ``head_axis`` over tensor (None: neither)."""
    dims = [None] * (max(a for a in (batch_axis, head_axis, -1) if a is not None) + 1)
    if batch_axis is not None:
        dims[batch_axis] = BATCH_AXES
    if head_axis is not None:
        dims[head_axis] = TENSOR
    return PartitionSpec(*dims)


def per_device_at(
    fn: Callable,
    kernel_name: str,
    in_axes: Callable[[int], tuple[int | None, int | None]],
    out_specs: Callable[[Callable], Any],
) -> Callable:
    """:func:`per_device_over_heads` for any layout: ``in_axes(n)`` gives positional argument n's (batch
    axis, head axis) (the first argument has both), ``out_specs(split_spec)`` the shard_map out_specs."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names) or mesh.size == 1:
        return fn
    batch_split = mesh.shape[DATA] * mesh.shape[FSDP]

    def checked(*args):
        batch_axis, head_axis = in_axes(0)
        batch, heads = args[0].shape[batch_axis], args[0].shape[head_axis]
        if batch % batch_split or heads % mesh.shape[TENSOR]:
            raise ValueError(
                f"kernel {kernel_name}: batch {batch} must be divisible by "
                f"data x fsdp = {batch_split} and heads {heads} by tensor = {mesh.shape[TENSOR]}"
            )
        in_specs = tuple(split_spec(*in_axes(n)) for n in range(len(args)))
        return jax.shard_map(fn, in_specs=in_specs, out_specs=out_specs(split_spec), check_vma=False)(*args)

    return checked
