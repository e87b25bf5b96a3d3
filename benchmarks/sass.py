"""Instruction counts of the Triton kernels as compiled for sm_90a, on any machine (no GPU needed).

    python benchmarks/sass.py --kernel recurrent--triton --shape 16x2048x4x256 [--options split=8,resident=1]
    python benchmarks/sass.py --kernel chunkwise--triton --shape 8x8x8192x256x512 [--dtype bfloat16] [--out F]

Lowers the forward and backward (``jax.grad`` of a sum of the outputs) of a Triton registry kernel for
CUDA with jax-triton (the GPU check skipped, as in the CUDA lowering tests) into a fresh kernel cache
(kernels/triton/disk_cache.py), assembles each kernel's PTX with the ptxas bundled with Triton (registers,
spills, shared memory) and disassembles it with its nvdisasm. For each kernel it counts, per warp, the
SASS instructions of its largest loop (the span of its outermost backward branch: the time or chunk loop)
by opcode: tensor-core MMAs, ldmatrix, block barriers, shared and global loads and stores,
special-function ops. A count is static: one pass through the loop body, each inner loop (a spin, a
k-loop) counted once. Shapes: ``recurrent--triton`` (sLSTM) BxSxNHxDH, the mLSTM kernels BxNHxSxDHQKxDHV.
Useful where Nsight Compute cannot read counters, and to compare two variants of a kernel before the GPU
times them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import triton

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.*

from benchmarks.kernels import parse_options  # noqa: E402
from benchmarks.timing import markdown_table, write_report  # noqa: E402
from xlstm_flax.kernels import get_kernel  # noqa: E402
from xlstm_flax.kernels.slstm import NUM_GATES, GateInputs, get_slstm_kernel  # noqa: E402
from xlstm_flax.kernels.triton import disk_cache, launch  # noqa: E402

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
SLSTM_KERNEL = "recurrent--triton"
# opcode groups of the table, by the opcode's first dot-separated part
GROUPS = {
    "MMA": ("HMMA", "HGMMA", "WGMMA"),
    "LDSM": ("LDSM",),
    "BAR": ("BAR",),
    "STS": ("STS",),
    "LDS": ("LDS",),
    "LDG": ("LDG",),
    "STG": ("STG",),
    "MUFU": ("MUFU",),
    "SHFL": ("SHFL",),
}
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA `\((\.L_x_\d+)\)")


def _loss(name: str, shape: tuple[int, ...], dtype, options: dict):
    """(the gradient function, its abstract inputs) for the kernel's forward + backward."""
    sds = jax.ShapeDtypeStruct
    if name == SLSTM_KERNEL:
        B, S, NH, DH = shape
        kernel = get_slstm_kernel(name)
        gates = GateInputs(*(sds((B, S, NH, DH), dtype),) * NUM_GATES)
        inputs = (gates, sds((NUM_GATES, NH, DH), jnp.float32), sds((NUM_GATES, NH, DH, DH), dtype))
    else:
        B, NH, S, DHQK, DHV = shape
        kernel = get_kernel(name)
        qk, gate = sds((B, NH, S, DHQK), dtype), sds((B, NH, S), jnp.float32)
        inputs = (qk, qk, sds((B, NH, S, DHV), dtype), gate, gate)

    def loss(*args):
        outputs = kernel(*args, **options)
        return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(outputs))

    return jax.grad(loss, argnums=tuple(range(len(inputs)))), inputs


def compiled_kernels(name: str, shape: tuple[int, ...], dtype, options: dict) -> dict[str, dict]:
    """{kernel name: its cache entry (``binary``: the PTX, ``shared_mem_bytes``)} of every Triton kernel in
    the lowered forward + backward."""
    fn, inputs = _loss(name, shape, dtype, options)
    with (
        tempfile.TemporaryDirectory() as cache,
        mock.patch.dict(os.environ, {disk_cache.LOCATION: cache}),
        mock.patch.object(launch, "require_triton_backend", lambda *args: None),  # lowering needs no GPU
    ):
        jax.jit(fn).trace(*inputs).lower(lowering_platforms=("cuda",))
        entries = [json.loads(path.read_text()) for path in Path(cache).glob("*.json")]
    if not entries:
        raise RuntimeError(f"{name}: the lowering stored no Triton kernel in the cache")
    return {entry["name"]: entry for entry in entries}


def assemble(ptx: str, workdir: Path, name: str) -> tuple[dict, str]:
    """ptxas (sm_90a) -> (registers and spill bytes; the SASS text)."""
    source, cubin = workdir / f"{name}.ptx", workdir / f"{name}.cubin"
    source.write_text(ptx)
    report = subprocess.run(
        [TOOLS / "ptxas", "-arch=sm_90a", "-v", "-o", cubin, source], capture_output=True, text=True, check=True
    ).stderr
    usage = {
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spill bytes": sum(int(n) for n in re.findall(r"(\d+) bytes spill", report)),
    }
    sass = subprocess.run([TOOLS / "nvdisasm", "-c", cubin], capture_output=True, text=True, check=True).stdout
    return usage, sass


def largest_loop(sass: str) -> list[str]:
    """The SASS lines from a label to the last backward branch to it, for the label whose loop spans the
    most lines (the outermost loop); the whole text if there is no loop (nvdisasm's closing
    ``.L: BRA .L`` self-loop does not count)."""
    lines = sass.splitlines()
    labels = {m.group(1): n for n, line in enumerate(lines) if (m := _LABEL.match(line))}
    spans = [
        (n - labels[m.group(1)], labels[m.group(1)], n)
        for n, line in enumerate(lines)
        if (m := _BRANCH.search(line)) and labels.get(m.group(1), n) < n - 1
    ]
    if not spans:
        return lines
    _, first, last = max(spans)
    return lines[first : last + 1]


def opcode_counts(lines: list[str]) -> Counter:
    """Instructions per opcode (its first dot-separated part) in SASS lines."""
    return Counter(m.group(1).split(".")[0] for line in lines if (m := _INSTRUCTION.match(line)))


def kernel_rows(name: str, shape: tuple[int, ...], dtype, options: dict) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for kernel, entry in sorted(compiled_kernels(name, shape, dtype, options).items()):
            usage, sass = assemble(entry["binary"], Path(workdir), kernel)
            counts = opcode_counts(largest_loop(sass))
            groups = [sum(counts[op] for op in ops) for ops in GROUPS.values()]
            shared_kib = entry["shared_mem_bytes"] / 1024
            rows.append([kernel, usage["registers"], usage["spill bytes"], shared_kib, sum(counts.values()), *groups])
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", required=True, help="a Triton registry kernel (mLSTM or recurrent--triton)")
    parser.add_argument("--shape", required=True, help="BxSxNHxDH (sLSTM) or BxNHxSxDHQKxDHV (mLSTM)")
    parser.add_argument("--options", type=parse_options, default={}, help="kernel options, key=value,...")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    expected = 4 if args.kernel == SLSTM_KERNEL else 5
    if len(shape) != expected:
        parser.error(f"--shape {args.shape!r} must have {expected} sizes for {args.kernel}")
    rows = kernel_rows(args.kernel, shape, jnp.dtype(args.dtype), args.options)
    header = ["kernel", "registers", "spill bytes", "shared KiB", "loop instructions", *GROUPS]
    section = [
        f"## {args.kernel} {args.shape} {args.dtype} {args.options or ''}: SASS per warp, one pass of the largest loop",
        "",
        markdown_table(header, rows),
    ]
    return write_report("SASS instruction counts (sm_90a)", [section], args.out)


if __name__ == "__main__":
    main()
