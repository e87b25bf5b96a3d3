"""A device's free memory and the one-line shortage message (xlstm_flax.memory)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from xlstm_flax.memory import MEMINFO, OutOfMemoryError, free_bytes, refuse_on_every_process, sharded_bytes, shortage

GiB = 2**30


class FakeGPU:
    """A device whose allocator reports a limit and the bytes in use, as a CUDA device does."""

    platform = "gpu"

    def __init__(self, limit: int, in_use: int):
        self.stats = {"bytes_limit": limit, "bytes_in_use": in_use}

    def memory_stats(self):
        return self.stats

    def __str__(self):
        return "cuda:0"


@pytest.mark.skipif(not MEMINFO.exists(), reason="the host's free memory is read from /proc/meminfo (Linux)")
def test_free_bytes_of_the_cpu_is_the_hosts_available_memory():
    total = next(
        int(line.split()[1]) * 1024 for line in MEMINFO.read_text().splitlines() if line.startswith("MemTotal:")
    )
    assert 0 < free_bytes(jax.devices("cpu")[0]) <= total


@pytest.mark.skipif(not MEMINFO.exists(), reason="the host's free memory is read from /proc/meminfo (Linux)")
def test_cpu_devices_of_a_process_share_the_hosts_memory():
    code = (
        "import jax; from xlstm_flax.memory import MEMINFO, free_bytes; share = free_bytes(jax.devices()[0]); "
        "host = next(int(l.split()[1]) * 1024 for l in MEMINFO.read_text().splitlines() "
        "if l.startswith('MemAvailable:')); "
        "print(len(jax.devices()), share / host)"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    devices, ratio = out.split()
    assert devices == "4" and 0.2 < float(ratio) < 0.3, out  # a quarter each (the host's use moves in between)


def test_free_bytes_of_a_gpu_is_its_limit_less_what_is_in_use():
    assert free_bytes(FakeGPU(80 * GiB, 20 * GiB)) == 60 * GiB


def test_shortage_names_the_need_the_device_and_its_free_memory():
    gpu = FakeGPU(80 * GiB, 20 * GiB)
    assert shortage(50 * GiB, [gpu], "the step needs") is None
    assert (
        shortage(70 * GiB, [gpu], "the step needs") == "the step needs 70.0 GiB per device and cuda:0 has 60.0 GiB free"
    )


def test_sharded_bytes_sums_one_devices_shards():
    device = jax.devices()[0]
    abstract = {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
    layout = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(device), abstract)
    assert sharded_bytes(abstract, layout) == (4 * 8 * 4 + 3 * 2, [device])


def test_refusal_joins_the_shortage_and_the_options():
    refuse_on_every_process(None, "the step", "lower the batch")  # nothing short: no error
    with pytest.raises(
        OutOfMemoryError, match=r"^the step needs 70.0 GiB per device and cuda:0 has 60.0 GiB free: lower"
    ):
        refuse_on_every_process(
            shortage(70 * GiB, [FakeGPU(80 * GiB, 20 * GiB)], "the step needs"), "the step", "lower the batch"
        )
