"""Registry entry ``"step--triton"``: one recurrent mLSTM step (docs/math.md section 2) in one Triton launch.

Decoding runs one step per layer per token, with a few rows: the step is bound by reading and writing
the fp32 state C, and as XLA fusions it takes several small kernels (gates and stabiliser, n, C with h's
numerator), each paying a launch's ramp-up and tail. This kernel does all of it in one launch and
updates C in place (its buffer is aliased to the new C, so a decode loop carries it without a copy).

Program (bh, j) owns columns ``j * BLOCK_DHV ...`` of head bh's C; every program recomputes the head's
gates, stabiliser, n and denominator (DHQK values), and the first one of each head stores n and m.
Same contract and math as ``step--jax`` (kernels/jax/step.py); q, k, v in fp32, bf16 or fp16, the
states fp32, h in q's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl

from .. import common
from . import launch
from .shared import INPUT_DTYPES, cdiv, check_power_of_two, next_pow2, padded_dim

KERNEL_NAME = "step--triton"
# A program's C tile holds at most this many values (its whole DHQK by BLOCK_DHV when it fits, so all
# of a program's loads are in flight at once): 32 fp32 registers per thread at 4 warps.
MAX_TILE = 4096
# common.denominator_floor's exponent cap for fp32 states
FLOOR_EXPONENT_CAP = float(np.log(np.finfo(np.float32).max)) - 1.0


@triton.jit
def mlstm_step_kernel(
    q, k, v, i, f, c, n, m, h_out, n_out, m_out,
    DHQK: tl.constexpr, DHV: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr,
    PAD_DHQK: tl.constexpr, QK_SCALE: tl.constexpr, EPS: tl.constexpr, FLOOR_CAP: tl.constexpr,
):  # fmt: skip
    bh, j = tl.program_id(0), tl.program_id(1)
    f_raw = tl.load(f + bh)
    log_f = tl.minimum(f_raw, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_raw)))  # log(sigmoid(f)), stable
    i_raw, m_old = tl.load(i + bh), tl.load(m + bh)
    m_new = tl.maximum(log_f + m_old, i_raw)
    decay, gain = tl.exp(log_f + m_old - m_new), tl.exp(i_raw - m_new)

    # n and the denominator over the whole head (DHQK values)
    d = tl.arange(0, PAD_DHQK)
    d_in = d < DHQK
    q_all = tl.load(q + bh * DHQK + d, mask=d_in, other=0.0).to(tl.float32) * QK_SCALE
    k_all = tl.load(k + bh * DHQK + d, mask=d_in, other=0.0).to(tl.float32)
    n_new = decay * tl.load(n + bh * DHQK + d, mask=d_in, other=0.0) + gain * k_all
    den = tl.maximum(tl.abs(tl.sum(n_new * q_all, axis=0)), tl.exp(tl.minimum(-m_new, FLOOR_CAP)))
    if j == 0:
        tl.store(n_out + bh * DHQK + d, n_new, mask=d_in)
        tl.store(m_out + bh, m_new)

    # this program's columns of C, updated in place, and of h's numerator
    cols = j * BLOCK_DHV + tl.arange(0, BLOCK_DHV)
    cols_in = cols < DHV
    v_cols = tl.load(v + bh * DHV + cols, mask=cols_in, other=0.0).to(tl.float32)
    numerator = tl.zeros((BLOCK_DHV,), tl.float32)
    for start in tl.static_range(0, DHQK, BLOCK_DHQK):
        rows = start + tl.arange(0, BLOCK_DHQK)
        rows_in = rows < DHQK
        q_rows = tl.load(q + bh * DHQK + rows, mask=rows_in, other=0.0).to(tl.float32) * QK_SCALE
        k_rows = tl.load(k + bh * DHQK + rows, mask=rows_in, other=0.0).to(tl.float32)
        tile = bh * DHQK * DHV + rows[:, None] * DHV + cols[None, :]
        tile_in = rows_in[:, None] & cols_in[None, :]
        c_new = decay * tl.load(c + tile, mask=tile_in, other=0.0) + (gain * k_rows)[:, None] * v_cols[None, :]
        tl.store(c + tile, c_new, mask=tile_in)
        numerator += tl.sum(q_rows[:, None] * c_new, axis=0)
    h = numerator / (den + EPS)
    tl.store(h_out + bh * DHV + cols, h.to(h_out.dtype.element_ty), mask=cols_in)


def _require_triton_backend() -> None:
    launch.require_triton_backend(KERNEL_NAME, "step--jax")


def default_blocks(dhqk: int, dhv: int) -> tuple[int, int]:
    """(BLOCK_DHQK, BLOCK_DHV): the whole padded DHQK (at most MAX_TILE / 16 rows) and as many columns as then
    fit in MAX_TILE values."""
    block_dhqk = min(padded_dim(dhqk), MAX_TILE // 16)
    return block_dhqk, min(padded_dim(dhv), MAX_TILE // block_dhqk)


def mlstm_step_triton(q, k, v, i, f, c, n, m, *, qk_scale=None, eps=1e-6, block_dhqk=None, block_dhv=None, num_warps=4):
    """Advances the stabilised state (c, n, m) by one token, as ``step--jax`` does.

    q, k: (B, NH, DHQK); v: (B, NH, DHV); i, f: (B, NH) raw gate pre-activations; c: (B, NH, DHQK, DHV);
    n: (B, NH, DHQK); m: (B, NH). Returns ``h, (c, n, m)``: h (B, NH, DHV) in q's dtype, the new states
    fp32. ``block_dhqk``, ``block_dhv`` (powers of two, 16 to 1024) and ``num_warps`` tune the launch.
    """
    B, NH, _, DHQK, DHV = common.check_step_inputs(q, k, v, i, f, c, n, m)
    if not any(q.dtype == d for d in INPUT_DTYPES):
        raise ValueError(f"{KERNEL_NAME} supports q/k/v in float32, bfloat16, float16; got {q.dtype} (use step--jax)")
    if not eps >= 0:
        raise ValueError(f"{KERNEL_NAME}: eps must be >= 0, got {eps!r}")
    default_dhqk, default_dhv = default_blocks(DHQK, DHV)
    block_dhqk = default_dhqk if block_dhqk is None else block_dhqk
    block_dhv = default_dhv if block_dhv is None else block_dhv
    check_power_of_two("block_dhqk", block_dhqk, 16, 1024)
    check_power_of_two("block_dhv", block_dhv, 16, 1024)
    check_power_of_two("num_warps", num_warps, 1, 16)
    _require_triton_backend()

    rows = B * NH
    fp32 = jnp.float32
    h, n, m, c = launch.triton_call(
        q.reshape(rows, DHQK),
        k.reshape(rows, DHQK),
        v.reshape(rows, DHV),
        i.astype(fp32).reshape(rows),
        f.astype(fp32).reshape(rows),
        c.astype(fp32).reshape(rows, DHQK, DHV),
        n.astype(fp32).reshape(rows, DHQK),
        m.astype(fp32).reshape(rows),
        kernel=mlstm_step_kernel,
        out_shape=(
            jax.ShapeDtypeStruct((rows, DHV), q.dtype),
            jax.ShapeDtypeStruct((rows, DHQK), fp32),
            jax.ShapeDtypeStruct((rows,), fp32),
            jax.ShapeDtypeStruct((rows, DHQK, DHV), fp32),
        ),
        grid=(rows, cdiv(DHV, block_dhv)),
        aliases={5: 3},  # c is updated in place
        num_warps=num_warps,
        num_stages=1,
        DHQK=DHQK,
        DHV=DHV,
        BLOCK_DHQK=min(block_dhqk, padded_dim(DHQK)),
        BLOCK_DHV=block_dhv,
        PAD_DHQK=next_pow2(DHQK),
        QK_SCALE=common.default_qk_scale(DHQK, qk_scale),
        EPS=float(eps),
        FLOOR_CAP=FLOOR_EXPONENT_CAP,
    )
    return h.reshape(B, NH, DHV), (c.reshape(B, NH, DHQK, DHV), n.reshape(B, NH, DHQK), m.reshape(B, NH))
