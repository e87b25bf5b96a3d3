"""Device kernel time per kernel and per category, read from a ``jax.profiler`` Perfetto trace.

    lines = traced_breakdown(directory, run_three_steps, steps=3, step_ms=289.5)  # markdown lines
    times = kernel_times(directory)  # kernel name -> KernelTime (launches, summed us) of that trace

Only events on device processes (Perfetto process name ``/device:...``, e.g. ``/device:GPU:0``) count:
on a GPU these are the kernels, memcpys and memsets as the card ran them. A CPU trace has none.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax

from benchmarks.timing import markdown_table

# First matching pattern names the category (kernel names as XLA, cuBLAS and the Triton sources give them).
CATEGORIES = (
    ("mLSTM Triton kernels", r"(recurrent|parallel|scores|output)_(fw|bw)"),
    ("sLSTM Triton kernels", r"slstm_"),
    ("matmuls (cuBLAS, XLA gemm fusions)", r"gemm|xmma|nvjet|cutlass|cublas|wgmma|dot"),
    ("transposes and copies", r"transpose|copy|memcpy|dynamic.update.slice|concatenate"),
    ("reductions", r"reduce|scatter"),
    ("memsets", r"memset"),
    ("other fusions", r"fusion"),
)


@dataclass
class KernelTime:
    count: int = 0
    total_us: float = 0.0


def _trace_file(directory: Path) -> Path:
    found = sorted(Path(directory).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not found:
        raise FileNotFoundError(f"no plugins/profile/*/perfetto_trace.json.gz under {directory}")
    return found[-1]  # the newest run (directories are named by time)


def traced_breakdown(directory, run: Callable[[], object], steps: int, step_ms: float) -> list[str]:
    """Runs ``run`` (``steps`` steps, waiting for its result) under a trace into ``directory`` and returns
    :func:`breakdown_tables` of it."""
    with jax.profiler.trace(str(directory), create_perfetto_trace=True):
        jax.block_until_ready(run())
    return breakdown_tables(kernel_times(directory), steps, step_ms)


def kernel_times(directory) -> dict[str, KernelTime]:
    """Kernel name -> (launches, summed duration in us) over the device processes of the newest trace
    under ``directory``."""
    with gzip.open(_trace_file(Path(directory)), "rt") as fh:
        trace = json.load(fh)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {
        e["pid"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name" and e["args"]["name"].startswith("/device:")
    }
    times: dict[str, KernelTime] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in devices:
            entry = times.setdefault(e["name"], KernelTime())
            entry.count += 1
            entry.total_us += float(e.get("dur", 0.0))
    return times


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return "other"


def breakdown_tables(times: Mapping[str, KernelTime], steps: int, step_ms: float, top: int = 25) -> list[str]:
    """Markdown lines: device time per step by category, then the ``top`` kernels by time; the shares are
    of the summed kernel time (kernels on several streams can overlap, so it may exceed ``step_ms``)."""
    total_ms = sum(t.total_us for t in times.values()) / 1e3 / steps
    if total_ms == 0:
        return ["no device kernels in the trace (a CPU run has none)"]

    def row(label, count, us):
        ms = us / 1e3 / steps
        return [label, count / steps, ms, 100 * ms / total_ms]

    by_category: dict[str, KernelTime] = {}
    for name, t in times.items():
        entry = by_category.setdefault(category(name), KernelTime())
        entry.count += t.count
        entry.total_us += t.total_us
    categories = sorted(by_category.items(), key=lambda item: -item[1].total_us)
    kernels = sorted(times.items(), key=lambda item: -item[1].total_us)[:top]
    summary = (
        f"summed device kernel time {total_ms:.3f} ms per step against a {step_ms:.3f} ms step "
        f"({100 * total_ms / step_ms:.1f}%)"
    )
    columns = ["launches per step", "ms per step", "% of kernel time"]
    return [
        summary,
        "",
        markdown_table(["category", *columns], [row(label, t.count, t.total_us) for label, t in categories]),
        "",
        markdown_table(["kernel", *columns], [row(f"`{name[:90]}`", t.count, t.total_us) for name, t in kernels]),
    ]
