"""Mesh sizes from the config, the layout checks that run before any work, and the rules table (on an
abstract 2 x 2 x 4 mesh: no devices needed)."""

import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from xlstm_flax import distributed, sharding
from xlstm_flax.distributed import DistributedConfig

MESH = AbstractMesh((2, 2, 4), sharding.MESH_AXES)


def test_minus_one_takes_the_devices_the_other_axes_leave():
    assert distributed.axis_sizes(DistributedConfig(), 8) == (8, 1, 1)
    assert distributed.axis_sizes(DistributedConfig(data=2, fsdp=-1, tensor=2), 16) == (2, 4, 2)
    assert distributed.axis_sizes(DistributedConfig(data=1, fsdp=2, tensor=4), 8) == (1, 2, 4)


@pytest.mark.parametrize(
    "layout, message",
    [
        (DistributedConfig(data=1, fsdp=2, tensor=2), "must multiply to the 8 devices"),
        (DistributedConfig(data=-1, tensor=3), "does not divide the 8 devices"),
    ],
)
def test_sizes_that_do_not_fit_the_devices_are_refused(layout, message):
    with pytest.raises(ValueError, match=message):
        distributed.axis_sizes(layout, 8)


def test_bad_axis_sizes_are_refused_when_the_config_is_built():
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        DistributedConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="tensor must be >= 1 or -1"):
        DistributedConfig(tensor=0)


def test_batch_and_heads_must_split_over_their_axes():
    distributed.check_layout(MESH, 8, [4, 8])
    with pytest.raises(ValueError, match=r"batch_size=6 must be divisible by data x fsdp = 4"):
        distributed.check_layout(MESH, 6, [4])
    with pytest.raises(ValueError, match=r"num_heads=2 must be divisible by distributed.tensor=4"):
        distributed.check_layout(MESH, 8, [4, 2])


def test_logical_axes_map_through_the_rules_and_stay_whole_where_not_divisible():
    assert sharding.mesh_spec(("embed", "heads"), (8, 16), MESH) == PartitionSpec("fsdp", "tensor")
    assert sharding.mesh_spec(("heads", "embed"), (16, 8), MESH) == PartitionSpec("tensor", "fsdp")  # row-parallel
    assert sharding.mesh_spec(("layers", "vocab", None), (3, 64, 8), MESH) == PartitionSpec(None, None, None)
    assert sharding.mesh_spec(("embed", "heads"), (8, 2), MESH) == PartitionSpec("fsdp", None)  # 2 heads < 4
    with pytest.raises(ValueError, match="logical axis 'width' has no entry"):
        sharding.mesh_spec(("width",), (8,), MESH)
