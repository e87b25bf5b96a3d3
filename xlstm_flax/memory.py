"""Free memory of a device, and a refusal in one line when something would not fit in it: checked before
the work (a training step, loading parameters), so a size too large is an error naming the sizes, not an
out-of-memory crash (or, on a CPU, the kernel's OOM killer) midway.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp

from . import distributed
from .config import ConfigError

MEMINFO = Path("/proc/meminfo")  # Linux: the host memory a CPU device can still take (MemAvailable)


class OutOfMemoryError(ConfigError):
    """Something needs more memory than a device has free; the message names both sizes and what to lower."""


def free_bytes(device: jax.Device) -> int | None:
    """Bytes ``device`` can still allocate: the allocator's limit less what is in use (GPU), its even share
    of the host's available memory among this process's CPU devices (CPU on Linux); None where neither is
    known."""
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    if device.platform == "cpu" and MEMINFO.exists():
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // len(jax.local_devices(backend="cpu"))  # the value is in kB
    return None


def shortage(needed: int, devices, subject: str) -> str | None:
    """Why ``needed`` bytes per device do not fit on ``devices`` ("<subject> 3.0 GiB per device and cuda:0
    has 2.5 GiB free"; None: they fit, or the free memory is unknown)."""
    for device in devices:
        free = free_bytes(device)
        if free is not None and needed > free:
            return f"{subject} {needed / 2**30:.1f} GiB per device and {device} has {free / 2**30:.1f} GiB free"
    return None


def sharded_bytes(abstract, shardings) -> tuple[int, list[jax.Device]]:
    """Bytes of one device's shards of ``abstract`` (a tree of ``ShapeDtypeStruct`` leaves) laid out by
    ``shardings`` (the matching tree of shardings), and the devices of this process they occupy."""
    leaves, layouts = jax.tree.leaves(abstract), jax.tree.leaves(shardings)
    needed = sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in zip(leaves, layouts, strict=True))
    return needed, sorted({d for s in layouts for d in s.addressable_devices}, key=lambda d: d.id)


def half_precision_hint(dtype) -> str | None:
    """For parameters of 32-bit ``dtype``: "in bfloat16 for half (--dtype bfloat16)" (the loaders' option);
    None for 16-bit ones."""
    return "in bfloat16 for half (--dtype bfloat16)" if jnp.dtype(dtype).itemsize > 2 else None


def refuse_on_every_process(problem: str | None, what: str, options: str) -> None:
    """Raises :class:`OutOfMemoryError` ("<problem>: <options>") on every process when ``problem`` (a
    :func:`shortage`) came up on any of them; ``what`` names the need for the processes that lack nothing
    themselves. A collective: every process calls it."""
    if not distributed.all_succeeded(problem is None):
        raise OutOfMemoryError(f"{problem or f'a device of another process lacks the memory for {what}'}: {options}")
