"""XLA's optimised GPU program of a training step, compiled for an H100 on a machine without a GPU.

    pip install jax-cuda13-pjrt==0.11.2   # XLA's CUDA compiler as a PJRT plugin (not in requirements/)
    JAX_PLATFORMS=cpu python benchmarks/gpu_hlo.py --preset 1.3b --num-blocks 4 --scan-layers \
        --remat save_matmuls [--shape 8x2048] [--loss-chunk 1024] [--top 20] [--dump step.hlo] [--out F]

XLA compiles ahead of time for a compile-only device that :data:`H100_TARGET` describes (no GPU, no
autotuning: GEMM choices may differ from a compile on the card); the Triton kernels are lowered for sm_90
as in the CUDA lowering tests. The report lists, per HLO computation (the entry, each loop body, each
fusion), the Triton kernels it launches and its asynchronous copies of slices of stacked buffers (count and
bytes per run), then the program's copies, dynamic-slice fusions and XLA's memory estimate: how often each
kernel runs per step and what XLA copies or clones, without device time (docs/performance.md, Models: the
scanned stack's output kernel that ran twice, and its backward loop's copies). Last, the bytes the
program's kernels read and write per step by phase and kind (:func:`kernel_traffic`): where the memory-bound
time goes, at the card's copy rate.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import re
import sys
import zlib
from typing import NamedTuple
from unittest import mock

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.*

from benchmarks.model import REMAT_POLICIES, add_preset_arguments, compile_stages, model_config  # noqa: E402
from benchmarks.timing import card_ceilings, markdown_table, write_report  # noqa: E402
from xlstm_flax import distributed  # noqa: E402
from xlstm_flax.kernels import registry  # noqa: E402
from xlstm_flax.kernels.triton import launch  # noqa: E402
from xlstm_flax.presets import PRESETS  # noqa: E402
from xlstm_flax.train.loop import make_steps  # noqa: E402
from xlstm_flax.train.loss import LOSS_SCOPE  # noqa: E402
from xlstm_flax.train.recipe import RunConfig, TrainConfig  # noqa: E402
from xlstm_flax.train.state import abstract_train_state  # noqa: E402

# An H100 SXM as XLA's GpuTargetConfigProto (text format): the card's published limits, CUDA 13 runtime.
H100_KIND = "NVIDIA H100 80GB HBM3"
H100_TARGET = (
    """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 shared_memory_per_block_optin: 232448 threads_per_core_limit: 2048
  core_count: 132 fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 registers_per_core_limit: 65536 registers_per_block_limit: 65536
  cuda_compute_capability { major: 9 }
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 13 }
"""
    + f'device_description_str: "{H100_KIND}"\n'
)

TRITON_CALL = 'custom_call_target="triton_kernel_call'
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
TRITON_OPAQUE = re.compile(r'opaque = "((?:[^"\\]|\\.)*)"')  # a jax-triton call's payload, escaped
# an async copy into or out of a stacked buffer: ((operands), result, context) fusion-start(...) of a
# fused_dynamic_slice (result: the slice) or fused_dynamic_update_slice (operands: stack, update, indices)
_STACK_COPY = re.compile(r"= \(\((.*?)\), (\S+), u32\[\]\) fusion-start\(.*calls=%?fused_dynamic_(update_)?slice")
_ARRAY = re.compile(r"\b(pred|[bfsu]f?\d+)\[([0-9,]*)\]")  # element type (its bits; pred: a byte), dims
_ESCAPE = re.compile(r'\\([0-9A-Fa-f]{2}|\\|")')
# an instruction: name, result shape, opcode, operands (names), the rest of the line
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\(([^)]*)\)(.*)$")
_PARAMETER = re.compile(r"([\w.\-]+): (\([^)]*\)|[^\s,()]+)")
_NOT_KERNELS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id"}
_NOT_KERNELS |= {"opt-barrier", "fusion-done", "copy-done", "all-reduce-done", "all-gather-done"}


def triton_payload(escaped: str) -> bytes:
    """The kernel payload of a jax-triton call from its escaped ``opaque`` string (MLIR and HLO text write
    non-printable bytes as ``\\XX``): zlib-decompressed, the serialised kernel with its PTX."""
    raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)) if len(m.group(1)) == 2 else m.group(1), escaped)
    return zlib.decompress(raw.encode("latin-1"))


def _lines_by_computation(hlo_text: str):
    """(computation name, instruction line) of every instruction in an HLO text dump."""
    computation = None
    for line in hlo_text.splitlines():
        if (match := _COMPUTATION.match(line)) and not line.startswith(" "):
            computation = match.group(1)
        elif computation is not None:
            yield computation, line


def triton_kernels_by_computation(hlo_text: str) -> dict[str, collections.Counter]:
    """{HLO computation: Counter of the Triton kernel names it calls} of an HLO text dump."""
    found: dict[str, collections.Counter] = {}
    for computation, line in _lines_by_computation(hlo_text):
        if TRITON_CALL in line:
            entry = re.search(rb"\.entry (\w+)", triton_payload(TRITON_OPAQUE.search(line).group(1)))
            found.setdefault(computation, collections.Counter())[entry.group(1).decode()] += 1
    return found


def array_bytes(shape: str, scalars: bool = True) -> int:
    """Bytes of every array (``scalars`` False: of every array but the rank-0 ones) in an HLO shape string,
    e.g. ``(bf16[8,2048]{1,0}, f32[])``."""
    return sum(
        int(re.sub(r"\D", "", dtype) or 8) // 8 * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in _ARRAY.findall(shape)
        if scalars or dims
    )


def _phase(name: str) -> str:
    """The step phase of an instruction from its JAX name: the chunked loss (its named scope), the backward
    (a transposed JVP), the forward (a JVP), else the update (optimizer, gradient sums)."""
    if LOSS_SCOPE in name:
        return "loss"
    return "backward" if "transpose(" in name else "forward" if "jvp(" in name else "update"


def _kind(line: str) -> str:
    """What an instruction launches, from what it calls (not from its operands' names)."""
    calls = (re.search(r'(?:calls=%?|custom_call_target=")([\w.$\-]+)', line) or [None, ""])[1]
    if calls.startswith("triton_kernel_call"):
        return "Triton kernel"
    return "matmul" if calls.startswith(("gemm_fusion", "__cublas")) else "other"


class KernelLaunch(NamedTuple):
    """One kernel of an optimised program: how often it runs per step, its phase and kind, its JAX name,
    its result shape and the bytes of its operands and results (as shaped)."""

    runs: int
    phase: str
    kind: str
    op_name: str
    shape: str
    moved: int


def kernel_launches(hlo_text: str) -> list[KernelLaunch]:
    """Every instruction of an optimised HLO program that launches work (not the parameters, tuples, bitcasts,
    constants, barriers or async ``-done`` halves), a loop body's times its known trip count. Bytes: operands
    and results as shaped (a slice or gather counts its whole operand, so this is an upper bound for those).
    Phases: :func:`_phase`; kinds: "matmul" (XLA's GEMM fusions and cuBLAS calls), "Triton kernel" (jax-triton
    calls), "other"."""
    shapes, bodies, entry = {}, {}, None
    computation = None
    for line in hlo_text.splitlines():
        if (match := _COMPUTATION.match(line)) and not line.startswith(" "):
            computation = match.group(1)
            entry = computation if line.startswith("ENTRY") else entry
            header = line[line.index("(") + 1 : line.rindex(") ->")]
            shapes.update({(computation, n): shape for n, shape in _PARAMETER.findall(header)})
            bodies[computation] = []
        elif computation is not None and (match := _INSTRUCTION.match(line)):
            name, shape, opcode, operands, rest = match.groups()
            shapes[(computation, name)] = shape
            bodies[computation].append((shape, opcode, re.findall(r"%([\w.\-]+)", operands), line))
    launches: list[KernelLaunch] = []

    def add(computation: str, runs: int) -> None:
        for shape, opcode, operands, line in bodies.get(computation, []):
            if opcode == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                add(re.search(r"body=%?([\w.\-]+)", line).group(1), runs * int(trips.group(1) if trips else 1))
            elif opcode not in _NOT_KERNELS:
                moved = array_bytes(shape) + sum(array_bytes(shapes.get((computation, o), "")) for o in operands)
                op_name = (re.search(r'op_name="([^"]*)"', line) or [None, ""])[1]
                launches.append(KernelLaunch(runs, _phase(op_name), _kind(line), op_name, shape, moved))

    add(entry, 1)
    return launches


def _per_step(launches, key) -> dict[tuple, tuple[int, int]]:
    """{key(launch): (kernels per step, bytes per step)} summed over ``launches``."""
    totals: dict[tuple, tuple[int, int]] = {}
    for kernel in launches:
        count, size = totals.get(key(kernel), (0, 0))
        totals[key(kernel)] = (count + kernel.runs, size + kernel.runs * kernel.moved)
    return totals


def kernel_traffic(launches: list[KernelLaunch]) -> dict[tuple[str, str], tuple[int, int]]:
    """{(phase, kind): (kernels per step, bytes per step)} of a program's :func:`kernel_launches`."""
    return _per_step(launches, lambda kernel: (kernel.phase, kernel.kind))


def largest_other_kernels(launches: list[KernelLaunch], top: int) -> list[tuple[str, str, str, int, int]]:
    """The ``top`` (phase, JAX name, result shape) of the "other" kernels that move the most bytes per step,
    as (phase, op name, shape, kernels per step, bytes per step): the unrolled blocks' copies of one kernel
    share a name and shape, so they add up."""
    others = [kernel for kernel in launches if kernel.kind == "other"]
    groups = _per_step(others, lambda kernel: (kernel.phase, kernel.op_name, re.sub(r"\{[^}]*\}", "", kernel.shape)))
    ranked = sorted(groups.items(), key=lambda item: -item[1][1])[:top]
    return [(*key, count, size) for key, (count, size) in ranked]


def stack_copies_by_computation(hlo_text: str) -> dict[tuple[str, str], tuple[int, int]]:
    """{(HLO computation, "slice" or "update"): (count, bytes written)} of its asynchronous copies of
    slices: the ``fusion-start`` of a dynamic-slice fusion, which copies a slice of a stacked buffer (a
    scan's residuals or weights) out before its readers run, or of a dynamic-update-slice fusion, which
    copies a computed value into its slice of a stack (docs/performance.md, Models)."""
    found: dict[tuple[str, str], tuple[int, int]] = {}
    for computation, line in _lines_by_computation(hlo_text):
        if (match := _STACK_COPY.search(line)) is not None:
            operands, result, update = match.groups()
            kind = "update" if update else "slice"
            # an update writes its operands but the indices (scalars) and the stack (the result's shape)
            written = array_bytes(operands, scalars=False) - array_bytes(result) if update else array_bytes(result)
            count, size = found.get((computation, kind), (0, 0))
            found[(computation, kind)] = (count + 1, size + written)
    return found


def compile_only_mesh():
    """A one-device mesh whose device is an H100 that only compiles (needs jax-cuda13-pjrt)."""
    topology = topologies.get_topology_desc(
        platform="cuda", topology_name="h100", target_config=H100_TARGET, topology="1x1x1"
    )
    return distributed.make_mesh(distributed.DistributedConfig(), list(topology.devices))


def compiled_train_step(config, B: int, S: int, loss_chunk: int, mesh):
    """(``make_steps``' training step for ``config`` at B x S compiled for ``mesh``'s devices, seconds of
    its trace, lowering and compile)."""
    run = RunConfig(model=config, train=TrainConfig(steps=TrainConfig().steps, batch_size=B, seq_len=S))
    graphdef, rest, state = abstract_train_state(run, mesh)
    train_step, _ = make_steps(graphdef, run.optim, run.train.steps, mesh, None, loss_chunk or None)
    batch = jax.ShapeDtypeStruct((1, B, S + 1), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
    with jax.set_mesh(mesh):
        return compile_stages(train_step, state, rest, batch)


def report_lines(compiled, text: str, top: int = 0) -> list[str]:
    """The kernel, stack-copy and traffic tables (with the ``top`` "other" kernels moving the most bytes)
    and the copy / memory lines of ``compiled``, whose optimised HLO is ``text``."""
    rows = [
        [name, kernel, count]
        for name, kernels in triton_kernels_by_computation(text).items()
        for kernel, count in sorted(kernels.items())
    ]
    copies_table = markdown_table(
        ["computation", "asynchronous copies", "of", "MB written"],
        [
            [name, count, {"slice": "slices out of stacks", "update": "updates into stacks"}[kind], f"{size / 1e6:.1f}"]
            for (name, kind), (count, size) in stack_copies_by_computation(text).items()
        ],
    )
    memory = compiled.memory_analysis()
    copies, loops = len(re.findall(r"= [^=]+ copy\(", text)), len(re.findall(r" while\(", text))
    launches = kernel_launches(text)
    copy_rate = card_ceilings(H100_KIND).copy_bytes_per_s  # the card the program is compiled for
    traffic = markdown_table(
        ["phase", "kind", "kernels per step", "GB per step", f"ms at {copy_rate / 1e12:.1f} TB/s"],
        [
            [phase, kind, count, f"{size / 1e9:.2f}", f"{size / copy_rate * 1e3:.2f}"]
            for (phase, kind), (count, size) in sorted(kernel_traffic(launches).items())
        ],
    )
    largest = markdown_table(
        ["phase", "JAX name (end)", "result", "kernels per step", "GB per step"],
        [
            [phase, f"`{name[-90:]}`", shape, count, f"{size / 1e9:.2f}"]
            for phase, name, shape, count, size in largest_other_kernels(launches, top)
        ],
    )
    return [
        markdown_table(["computation", "Triton kernel", "calls"], rows),
        "",
        copies_table,
        "",
        traffic,
        "",
        *([largest, ""] if top else []),
        f"- copies: {copies}; dynamic-slice fusions: {text.count('%dynamic-slice-fusion')}; while loops: {loops}",
        f"- XLA's estimate: {memory.temp_size_in_bytes / 2**30:.2f} GiB temporaries, "
        f"{memory.argument_size_in_bytes / 2**30:.2f} GiB arguments",
    ]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_arguments(parser)
    parser.add_argument("--loss-chunk", type=int, default=1024, help="train.loss_chunk, 0 = whole sequence")
    parser.add_argument("--num-blocks", type=int, help="the preset's first N blocks only")
    parser.add_argument("--scan-layers", action="store_true")
    parser.add_argument("--remat", choices=list(REMAT_POLICIES), help="model.remat with this policy")
    parser.add_argument("--kernel", default="chunkwise--triton", help="mLSTM sequence kernel (registry name)")
    parser.add_argument("--slstm-kernel", default="recurrent--triton", help="sLSTM kernel of sLSTM blocks")
    parser.add_argument("--top", type=int, default=0, help="list the N other kernels that move the most bytes")
    parser.add_argument("--dump", help="write the optimised HLO text to this file")
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args(argv)
    B, S = args.shape[0]
    with (  # compiling needs no GPU: skip the checks that a run needs one
        mock.patch.object(registry, "triton_usable", lambda: True),
        mock.patch.object(launch, "require_triton_backend", lambda *a: None),
    ):
        config = model_config(args, PRESETS[args.preset].param_dtype)
        config = dataclasses.replace(config, slstm=dataclasses.replace(config.slstm, kernel=args.slstm_kernel))
        compiled, (trace_s, lower_s, compile_s) = compiled_train_step(
            config, B, S, args.loss_chunk, compile_only_mesh()
        )
    text = compiled.as_text()  # the whole optimised program: read it once
    if args.dump:
        with open(args.dump, "w") as fh:
            fh.write(text)
    title = f"XLA GPU program (H100, compile only): {args.preset} training step, B={B}, S={S}"
    timing = (
        f"- trace {trace_s:.1f} s, lowering {lower_s:.1f} s (Triton kernels compiled), XLA compile {compile_s:.1f} s "
        f"on this machine's {os.cpu_count()} cores; XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`"
    )
    return write_report(title, [report_lines(compiled, text, args.top) + [timing]], args.out)


if __name__ == "__main__":
    main()
