"""Model-level speed through the library's own code: a training step, generate's prefill and decode.

    python benchmarks/model.py --preset 1.3b --train --shapes 8x2048,2x8192 [--steps 10] [--profile DIR]
    python benchmarks/model.py --preset 7b --prefill --full-logits --shapes 8x2048,1x2048
    python benchmarks/model.py --preset 7b --decode --decode-batches 1,8,32 --new-tokens 256
    common: [--kernel NAME] [--scan-layers] [--remat [POLICY]] [--compile-cache DIR] [--command-buffer TYPES]
            [--out benchmarks/results/NAME.md]

Random weights (nnx init, ``--seed``) and random tokens; bf16 compute (``--compute-dtype``); medians of
block_until_ready wall times after warm-up. Every row reports trace, lowering and XLA compile time apart
(``jit(...).trace`` / ``.lower()`` / ``.compile()``; with a warm ``--compile-cache`` the last is the read of the
cached executable) and XLA's compiled memory (arguments + outputs + temps).

* train: ``make_steps``' jitted update (xlstm_flax.train.loop: the step training runs), the preset's
  parameter dtype (fp32) + AdamW, one micro-batch of B x S. MFU = train FLOPs per token
  (xlstm_flax.flops: 6N + 3 x the chunkwise mLSTM recurrence) x tokens/s / the card's dense bf16 peak.
  ``--profile DIR``: ``--steps`` more updates under ``jax.profiler``, and the device time per kernel
  category and per kernel (benchmarks/device_trace.py) below the table; for decode, per new token.
* prefill: ``generate`` with one new token (the prefill, logits at the last position, the first draw),
  greedy; ``--full-logits`` adds the same prefill through ``model(prompt)``, the (B, S, V) logits path
  that generate used before. Parameters in ``--gen-param-dtype`` (bf16 default).
* decode: greedy ``generate`` of N and of 1 new tokens after a ``--prompt-len`` prompt; the steady-state
  step time is their difference over N - 1 steps. Weight read = parameter bytes per step / step time.
  "kernels/step": launches in one iteration of the decode loop of the compiled program
  (:func:`kernels_per_step`). ``--command-buffer TYPES`` sets XLA's ``--xla_gpu_enable_command_buffer``
  (e.g. ``FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL``; empty: off) before JAX starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks import device_trace  # noqa: E402
from benchmarks.timing import markdown_table, median_ms, memory_bytes, parse_shape, write_report  # noqa: E402
from xlstm_flax import distributed, flops  # noqa: E402
from xlstm_flax.model import xLSTMLMModel  # noqa: E402
from xlstm_flax.model_config import REMAT_POLICIES  # noqa: E402
from xlstm_flax.presets import PRESETS, get_preset  # noqa: E402
from xlstm_flax.sampling import generation_inputs, generation_program  # noqa: E402
from xlstm_flax.train.loop import make_steps  # noqa: E402
from xlstm_flax.train.recipe import RunConfig, TrainConfig  # noqa: E402
from xlstm_flax.train.state import init_train_state  # noqa: E402

COLUMNS = [
    "mode",
    "B",
    "S",
    "trace s",
    "lower s",
    "compile s",
    "ms",
    "tokens/s",
    "MFU %",
    "weight GB/s",
    "peak GiB",
    "kernels/step",
]
NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all"}
INPUT_SETS = 2


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"8x2048,1x8192"`` -> [(8, 2048), (1, 8192)]."""
    return [parse_shape(item, "BxS") for item in text.split(",")]


COMPUTE_DTYPES = ["float32", "bfloat16", "float16"]


def add_preset_arguments(parser: argparse.ArgumentParser, shape: bool = True) -> None:
    """The model arguments the model benchmarks share: ``--preset`` (required), ``--compute-dtype`` and,
    with ``shape``, one ``--shape`` BxS (default 8x2048; ``args.shape`` is a one-item list)."""
    parser.add_argument("--preset", required=True, choices=list(PRESETS))
    parser.add_argument("--compute-dtype", default="bfloat16", choices=COMPUTE_DTYPES)
    if shape:
        parser.add_argument("--shape", type=parse_shapes, default=parse_shapes("8x2048"), help="BxS")


def parse_ints(text: str) -> list[int]:
    if not all(p.isdigit() and int(p) >= 1 for p in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive ints")
    return [int(p) for p in text.split(",")]


def parse_loss_chunks(text: str) -> list[int]:
    """``"0,1024"`` -> [0, 1024]: train.loss_chunk values, 0 = the whole-sequence loss."""
    if not all(p.isdigit() for p in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints >= 0")
    return [int(p) for p in text.split(",")]


def compile_stages(jitted, *args, **kwargs):
    """(compiled, (trace, lowering, XLA compile or compilation-cache read) seconds) of ``jitted`` at ``args``;
    lowering includes the Triton kernels' compiles (or their disk-cache reads)."""
    t0 = time.perf_counter()
    traced = jitted.trace(*args, **kwargs)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, (t1 - t0, t2 - t1, time.perf_counter() - t2)


def random_tokens(seed: int, shape, vocab: int) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


def mfu_percent(flops_per_token: float, tokens_per_s: float):
    peak = flops.peak_flops_per_second()
    return "-" if peak is None else 100 * flops_per_token * tokens_per_s / peak


def train_row(config, B: int, S: int, steps: int, warmup: int, seed: int, loss_chunk: int, profile=None):
    """One optimiser update of ``make_steps`` on B x S random tokens, timed over ``steps`` updates;
    ``loss_chunk``: ``train.loss_chunk`` (0: the loss from the whole (B, S, V) logits at once).
    Returns the table row and, with ``profile`` (a directory), the device-time breakdown of ``steps``
    more updates traced with ``jax.profiler`` into it (benchmarks/device_trace.py)."""
    schedule = TrainConfig().steps  # the lr schedule's length: any valid one (updates cost the same)
    run = RunConfig(model=config, train=TrainConfig(steps=schedule, batch_size=B, seq_len=S), seed=seed)
    mesh = distributed.make_mesh(distributed.DistributedConfig(), jax.local_devices()[:1])
    graphdef, rest, state = init_train_state(run, mesh)
    train_step, _ = make_steps(graphdef, run.optim, run.train.steps, mesh, None, loss_chunk or None)
    batches = [random_tokens(seed + k, (1, B, S + 1), config.vocab_size) for k in range(INPUT_SETS)]
    with jax.set_mesh(mesh):
        compiled, seconds = compile_stages(train_step, state, rest, batches[0])
        times = []
        for k in range(warmup + steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, rest, batches[k % INPUT_SETS])
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        step_s = statistics.median(times[warmup:])

        def run_steps():
            nonlocal state
            for k in range(steps):
                state, metrics = compiled(state, rest, batches[k % INPUT_SETS])
            return metrics

        lines = device_trace.traced_breakdown(profile, run_steps, steps, 1e3 * step_s) if profile else []
    tokens_per_s = B * S / step_s
    mfu = mfu_percent(flops.train_flops_per_token(config, S), tokens_per_s)
    mode = f"train, loss chunk {loss_chunk}" if loss_chunk else "train, whole-sequence loss"
    row = [mode, B, S, *seconds, 1e3 * step_s, tokens_per_s, mfu, "-", gib(compiled), "-"]
    return row, lines


def gib(compiled) -> float:
    return memory_bytes(compiled) / 2**30


def full_logits_prefill(graphdef, params, prompt):
    """The prefill through the (B, S, V) logits (generate's path before): greedy first token and state."""
    logits, state = nnx.merge(graphdef, params)(prompt, return_state=True)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), state


def prefill_rows(model, B: int, S: int, full_logits: bool, warmup: int, reps: int, seed: int) -> list[list]:
    """generate's prefill (one new token) at B x S, and with ``full_logits`` the (B, S, V) logits path."""
    prompts = [random_tokens(seed + k, (B, S), model.config.vocab_size) for k in range(INPUT_SETS)]
    inputs = [generation_inputs(model, p, 1, key=jax.random.key(seed), temperature=0.0) for p in prompts]
    static = inputs[0][1]
    compiled, compile_seconds = compile_stages(generation_program, *inputs[0][0], **static)
    seconds = median_ms(compiled, [args[1:] for args, _ in inputs], warmup, reps) / 1e3  # graphdef is static
    per_token = flops.forward_flops_per_token(model.config, S, logits_at_every_position=False)
    rows = [prefill_row("prefill (last logit)", B, S, compile_seconds, seconds, per_token, compiled)]
    if full_logits:
        graphdef, params = nnx.split(model)
        jitted = jax.jit(full_logits_prefill, static_argnums=0)
        compiled, compile_seconds = compile_stages(jitted, graphdef, params, prompts[0])
        seconds = median_ms(compiled, [(params, p) for p in prompts], warmup, reps) / 1e3
        per_token = flops.forward_flops_per_token(model.config, S)
        rows.append(prefill_row("prefill (full logits)", B, S, compile_seconds, seconds, per_token, compiled))
    return rows


def prefill_row(mode, B, S, compile_seconds, seconds, flops_per_token, compiled) -> list:
    tokens_per_s = B * S / seconds
    mfu = mfu_percent(flops_per_token, tokens_per_s)
    return [mode, B, S, *compile_seconds, 1e3 * seconds, tokens_per_s, mfu, "-", gib(compiled), "-"]


def decode_row(model, B: int, new_tokens: int, prompt_len: int, reps: int, seed: int, profile=None):
    """Steady-state greedy decode: (time of N new tokens - time of 1) / (N - 1) per step. Returns the
    row and, with ``profile`` (a directory), the device-time breakdown of one more N-token call per new
    token (its prompt's prefill included)."""
    if new_tokens < 2:
        raise ValueError(f"--new-tokens must be >= 2 for a decode step time, got {new_tokens}")
    prompt = random_tokens(seed, (B, prompt_len), model.config.vocab_size)
    seconds, stages, inputs = {}, {}, {}
    for n in (1, new_tokens):
        args, static = generation_inputs(model, prompt, n, key=jax.random.key(seed), temperature=0.0)
        stages[n], inputs[n] = compile_stages(generation_program, *args, **static), args[1:]  # graphdef static
        seconds[n] = median_ms(stages[n][0], [inputs[n]], 1, reps) / 1e3
    compiled, compile_seconds = stages[new_tokens]
    step_s = (seconds[new_tokens] - seconds[1]) / (new_tokens - 1)
    if step_s <= 0:
        raise RuntimeError(
            f"decode B={B}: {new_tokens} tokens took {seconds[new_tokens]:.4f} s, not more than 1 token "
            f"({seconds[1]:.4f} s): timing noise; use more --new-tokens or --steps"
        )
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    row = ["decode", B, f"{prompt_len}+{new_tokens}", *compile_seconds, 1e3 * step_s, B / step_s, "-"]
    row += [param_bytes / step_s / 1e9, gib(compiled), kernels_per_step(compiled.as_text())]
    lines = []
    if profile:
        lines = device_trace.traced_breakdown(profile, lambda: compiled(*inputs[new_tokens]), new_tokens, 1e3 * step_s)
    return row, lines


def computations(hlo: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines, of an HLO module's text."""
    result, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            name = header.group(1)
            result[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None and " = " in line:
            result[name].append(line)
    return result


def opcode(line: str) -> str:
    return re.search(r"= .*?\b([a-z][a-z0-9\-]*)\(", line).group(1)


def kernels_per_step(hlo: str) -> int:
    """Kernel launches of one iteration of the longest while loop (the decode scan) in an optimised
    HLO module: instructions other than parameters, constants, tuples and bitcasts, where a nested
    while counts as its body and a conditional as 1 + its largest branch. A call counts once: XLA
    outlines a command buffer (CUDA graph, ``--command-buffer``) as a call, launched as one graph."""
    comps = computations(hlo)

    def count(name: str) -> int:
        total = 0
        for line in comps[name]:
            op = opcode(line)
            if op in NOT_KERNELS:
                continue
            if op == "while":
                total += count(re.search(r"body=%?([\w.\-]+)", line).group(1))
            elif op == "conditional":
                branches = re.search(r"branch_computations=\{([^}]*)\}", line)
                names = (
                    branches.group(1).split(", ")
                    if branches
                    else re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", line)
                )
                total += 1 + max(count(n.lstrip("%")) for n in names)
            else:
                total += 1
        return total

    bodies = [re.search(r"body=%?([\w.\-]+)", line).group(1) for c in comps.values() for line in c if " while(" in line]
    if not bodies:
        raise ValueError("the compiled program has no while loop (no decode scan)")
    return max(count(body) for body in bodies)


def show(rows: list[list]) -> list[list]:
    """Prints ``rows`` as table lines as they are measured; returns them."""
    print("\n".join(markdown_table(COLUMNS, rows).splitlines()[2:]), flush=True)
    return rows


def model_config(args, param_dtype: str):
    config = dataclasses.replace(get_preset(args.preset), compute_dtype=args.compute_dtype, param_dtype=param_dtype)
    if args.num_blocks:
        kept = tuple(i for i in config.slstm_at if i < args.num_blocks)
        config = dataclasses.replace(config, num_blocks=args.num_blocks, slstm_at=kept)
    if args.scan_layers:
        config = dataclasses.replace(config, scan_layers=True)
    if args.remat:
        config = dataclasses.replace(config, remat=True, remat_policy=args.remat)
    if args.kernel:
        config = dataclasses.replace(config, mlstm=dataclasses.replace(config.mlstm, kernel=args.kernel))
    return config


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_arguments(parser, shape=False)
    parser.add_argument("--train", action="store_true", help="time make_steps' training step")
    parser.add_argument("--prefill", action="store_true", help="time generate's prefill")
    parser.add_argument("--decode", action="store_true", help="time steady-state greedy decoding")
    parser.add_argument("--shapes", type=parse_shapes, default=parse_shapes("8x2048"), help="BxS,... (train, prefill)")
    parser.add_argument(
        "--loss-chunks", type=parse_loss_chunks, default=[1024], help="train.loss_chunk values, 0 = whole sequence"
    )
    parser.add_argument("--full-logits", action="store_true", help="add prefill rows through (B, S, V) logits")
    parser.add_argument("--decode-batches", type=parse_ints, default=[1], help="B,... for --decode")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens per decode run (>= 2)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens before decoding")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps / prefill and decode repetitions")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--gen-param-dtype", default="bfloat16", choices=COMPUTE_DTYPES)
    parser.add_argument("--kernel", help="mLSTM sequence kernel (registry name; default: the preset's)")
    parser.add_argument("--compile-cache", help="persistent JAX compilation cache directory")
    parser.add_argument("--command-buffer", help="value of XLA's --xla_gpu_enable_command_buffer ('' = off)")
    parser.add_argument("--scan-layers", action="store_true", help="stack the blocks and run them with nnx.scan")
    parser.add_argument(
        "--remat",
        nargs="?",
        const="full",
        choices=list(REMAT_POLICIES),
        help="rematerialise each block in the backward (model.remat) with this model.remat_policy (default full)",
    )
    parser.add_argument("--num-blocks", type=int, help="the preset's first N blocks only (quick checks)")
    parser.add_argument("--profile", help="trace train steps / a decode call into DIR/<row>; report kernel times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args(argv)
    if not (args.train or args.prefill or args.decode):
        parser.error("choose at least one of --train, --prefill, --decode")
    if args.steps < 1 or args.warmup < 0 or args.prompt_len < 1 or args.new_tokens < 2 or args.num_blocks == 0:
        parser.error("--steps, --prompt-len and --num-blocks must be >= 1, --warmup >= 0, --new-tokens >= 2")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.command_buffer is not None:  # read when the GPU backend starts, so before any JAX work
        flag = f"--xla_gpu_enable_command_buffer={args.command_buffer}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    rows, profiles = [], []
    if args.train:
        config = model_config(args, get_preset(args.preset).param_dtype)
        for (B, S), chunk in itertools.product(args.shapes, args.loss_chunks):
            trace_dir = args.profile and os.path.join(args.profile, f"train_{B}x{S}_loss_chunk_{chunk}")
            row, lines = train_row(config, B, S, args.steps, args.warmup, args.seed, chunk, trace_dir)
            rows += show([row])
            if lines:
                profiles += [f"## Device time of the training step, B={B}, S={S}, loss chunk {chunk}", "", *lines, ""]
    if args.prefill or args.decode:
        model = xLSTMLMModel(model_config(args, args.gen_param_dtype), rngs=nnx.Rngs(args.seed))
        for B, S in args.shapes if args.prefill else ():
            rows += show(prefill_rows(model, B, S, args.full_logits, args.warmup, args.steps, args.seed))
        for B in args.decode_batches if args.decode else ():
            trace_dir = args.profile and os.path.join(args.profile, f"decode_{B}")
            row, lines = decode_row(model, B, args.new_tokens, args.prompt_len, args.steps, args.seed, trace_dir)
            rows += show([row])
            if lines:
                profiles += [f"## Device time per decoded token, B={B} (one {args.new_tokens}-token call)", ""]
                profiles += [*lines, ""]
    blocks = f" (first {args.num_blocks} blocks)" if args.num_blocks else ""
    setup = [
        f"- preset {args.preset}{blocks}, compute {args.compute_dtype}, generation parameters {args.gen_param_dtype}, "
        f"training parameters {get_preset(args.preset).param_dtype} + AdamW",
        f"- mLSTM kernel: {model_config(args, 'float32').resolved_kernel()}; "
        f"XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`; compile cache: {args.compile_cache or 'off'}",
        f"- peak for MFU: {flops.peak_flops_per_second() or 'unknown card'} FLOP/s (dense bf16); "
        "FLOPs per token: xlstm_flax.flops",
    ]
    sections = [setup, [markdown_table(COLUMNS, rows)]] + ([profiles] if profiles else [])
    return write_report("xLSTM model benchmark", sections, args.out)


if __name__ == "__main__":
    main()
