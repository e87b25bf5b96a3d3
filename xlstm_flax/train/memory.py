"""Does the train step fit in memory? Checked before training starts (a floor before compiling, then XLA's
count), so a batch or sequence too large for the devices is a one-line error naming the options to change,
not an out-of-memory crash (or, on a CPU, the kernel's OOM killer) at the first step.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from ..config import ConfigError

MEMINFO = Path("/proc/meminfo")  # Linux: the host memory a CPU device can still take (MemAvailable)


class OutOfMemoryError(ConfigError):
    """The train step needs more memory than a device has free; the message names the options to lower."""


def step_bytes(compiled: jax.stages.Compiled) -> int:
    """Bytes one device allocates to run ``compiled`` beyond its arguments: its temporaries and the outputs
    that do not reuse a donated argument (XLA's memory analysis, per device)."""
    stats = compiled.memory_analysis()
    return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes


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


def hidden_state_bytes(rows: int, seq_len: int, width: int, dtype) -> int:
    """Bytes of one (rows, seq_len, width) activation: a floor under any step's need, known before compiling
    (XLA's CPU compiler crashes, SIGFPE, on steps of tens of TB)."""
    return rows * seq_len * width * jnp.dtype(dtype).itemsize


def shortage(needed: int, devices: list[jax.Device], qualifier: str = "") -> str | None:
    """Why ``needed`` bytes per device (``qualifier``: e.g. "at least ") do not fit on ``devices`` (None:
    they fit, or the free memory is unknown)."""
    for device in devices:
        free = free_bytes(device)
        if free is not None and needed > free:
            need, have = needed / 2**30, free / 2**30
            return f"the train step needs {qualifier}{need:.1f} GiB per device and {device} has {have:.1f} GiB free"
    return None


def advice(batch_size: int, seq_len: int, grad_accum_steps: int, remat: bool, loss_chunk: int | None) -> str:
    """What lowers the step's memory, with the run's current values."""
    steps = [f"lower train.batch_size ({batch_size}) or train.seq_len ({seq_len})"]
    steps.append(
        f"keep the tokens per update with a smaller batch_size and more train.grad_accum_steps ({grad_accum_steps})"
    )
    if not remat:
        steps.append("set model.remat: true")
    if not loss_chunk and seq_len > 1:
        steps.append(f"set train.loss_chunk below train.seq_len (e.g. {max(seq_len // 4, 1)})")
    return "; ".join(steps)
