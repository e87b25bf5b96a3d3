"""Forward+backward of the chunked cross-entropy through a preset's head (final norm, LM head, soft cap),
with the soft cap applied by the head or by the loss.

    python benchmarks/loss.py --preset 1.3b --shape 8x2048 --chunk 1024 [--steps 20] [--out F]

"capped head" passes ``model.head`` (fp32 capped logits); "cap in the loss" passes ``model.uncapped_logits``
and ``config.logit_soft_cap``, as training does (``xlstm_flax.train.loss``). Both forms are timed in turns
on the same random hidden states and targets (value and gradients to the head's parameters and to the hidden
states, one call waited for at a time). Also reported: XLA's estimate of the temporaries, and the bytes the
chunked loss must move at least: the logits in the compute dtype written by their matmul and read three
times (max, log-sum-exp, gradient), the gradient to them written once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.*

from benchmarks.model import add_preset_arguments  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    card_ceilings,
    ceilings_line,
    interleaved_median_ms,
    markdown_table,
    write_report,
)
from xlstm_flax.model import xLSTMLMModel  # noqa: E402
from xlstm_flax.presets import get_preset  # noqa: E402
from xlstm_flax.train.loss import chunked_cross_entropy  # noqa: E402

FORMS = ("capped head", "cap in the loss")


def loss_fn(graphdef, form: str, chunk: int):
    """(params, features, targets) -> the chunked loss of ``form`` (see the module docstring)."""

    def loss(params, features, targets):
        model = nnx.merge(graphdef, params)
        if form == "capped head":
            return chunked_cross_entropy(model.head, features, targets, chunk=chunk)
        cap = model.config.logit_soft_cap
        return chunked_cross_entropy(model.uncapped_logits, features, targets, chunk=chunk, soft_cap=cap)

    return loss


def floor_lines(B: int, S: int, config) -> list[str]:
    """The head's matmul FLOPs and the logit bytes the chunked loss moves at least (module docstring), each
    with its time at this card's ceilings (they run in separate kernels, so the floors add)."""
    ceilings = card_ceilings()
    flops = 3 * 2 * B * S * config.embedding_dim * config.vocab_size  # logits, and the two gradient products
    logit_bytes = 5 * B * S * config.vocab_size * jnp.dtype(config.jnp_compute_dtype).itemsize
    return [
        f"- head matmuls: {flops / 1e12:.2f} TFLOP, {flops / ceilings.bf16_flops * 1e3:.2f} ms at the ceiling; "
        f"logit bytes at least {logit_bytes / 1e9:.2f} GB, {logit_bytes / ceilings.copy_bytes_per_s * 1e3:.2f} ms",
        f"- {ceilings_line()}",
    ]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_arguments(parser)
    parser.add_argument("--chunk", type=int, default=1024, help="positions per loss chunk")
    parser.add_argument("--steps", type=int, default=20, help="timed calls of each form")
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args(argv)
    (B, S), *_ = args.shape
    # the head's parameters only: the blocks are not run
    config = dataclasses.replace(get_preset(args.preset), num_blocks=1, slstm_at=(), compute_dtype=args.compute_dtype)
    graphdef, params = nnx.split(xLSTMLMModel(config, rngs=nnx.Rngs(0)))
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    inputs = [
        (
            params,
            jax.random.normal(keys[2 * j], (B, S, config.embedding_dim), config.jnp_compute_dtype),
            jax.random.randint(keys[2 * j + 1], (B, S), 0, config.vocab_size),
        )
        for j in range(2)
    ]
    jitted = [jax.jit(jax.value_and_grad(loss_fn(graphdef, form, args.chunk), argnums=(0, 1))) for form in FORMS]
    compiled = [fn.lower(*inputs[0]).compile() for fn in jitted]
    losses = [float(fn(*inputs[0])[0]) for fn in compiled]
    times = interleaved_median_ms(compiled, inputs, warmup=2, reps=args.steps)
    rows = [
        [form, B, S, args.chunk, ms, f"{loss:.6f}", c.memory_analysis().temp_size_in_bytes / 2**30]
        for form, ms, loss, c in zip(FORMS, times, losses, compiled)
    ]
    lines = [
        f"- preset {args.preset} head: vocab {config.vocab_size}, D {config.embedding_dim}, soft cap "
        f"{config.logit_soft_cap}, tied embeddings {config.tie_embeddings}, compute {args.compute_dtype}",
        *floor_lines(B, S, config),
        "",
        markdown_table(["form", "B", "S", "chunk", "ms (fw+bw)", "loss", "temporaries GiB"], rows),
    ]
    return write_report("Chunked cross-entropy: soft cap in the head or in the loss", [lines], args.out)


if __name__ == "__main__":
    main()
