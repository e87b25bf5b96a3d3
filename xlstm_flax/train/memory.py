"""What the compiled train step needs per device, for the check before training starts
(:mod:`xlstm_flax.memory`), and the options that lower it, for the error.
"""

from __future__ import annotations

import jax


def step_bytes(compiled: jax.stages.Compiled) -> int:
    """Bytes one device allocates to run ``compiled`` beyond its arguments: its temporaries and the outputs
    that do not reuse a donated argument (XLA's memory analysis, per device)."""
    stats = compiled.memory_analysis()
    return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes


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
