"""Registry entry ``"step--triton"``: one recurrent mLSTM step (decoding) as a single Triton kernel.

Same math and calling convention as ``"step--jax"`` (kernels/jax/step.py, docs/math.md): with
log f = log sigmoid(f) and s the qk scale,

    m' = max(log f + m, i);  decay = exp(log f + m - m');  gain = exp(i - m')
    C' = decay C + gain k v^T;  n' = decay n + gain k
    h = (s q)^T C' / (max(|n' . s q|, exp(-m')) + eps)

One program per (batch-head, block of DHV columns) reads its C tile once, writes C' and its h columns;
every program recomputes the gates and n' (DHQK values) and the first DHV block stores n' and m'. So a
decoded token costs one launch per layer for the whole recurrence, and C (fp32) is read and written once.

Shapes: q, k (B, NH, DHQK); v (B, NH, DHV); i, f (B, NH); c (B, NH, DHQK, DHV) fp32; n (B, NH, DHQK)
fp32; m (B, NH) fp32. Returns h (B, NH, DHV) in q's dtype and the new (c, n, m) in fp32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl

from .. import common
from ..slstm.triton_kernels import log_sigmoid
from . import launch
from .shared import check_dtypes, next_pow2

KERNEL_NAME = "step--triton"
STATE_BYTES_PER_PROGRAM = 32 * 1024  # fp32 C tile per program: DHQK x BLOCK_DHV <= 8192 values


@triton.jit
def step_kernel(
    vecQ, vecK, vecV, scaI, scaF, matC, vecN, scaM,  # inputs
    vecH_out, matC_out, vecN_out, scaM_out,  # outputs
    DHQK: tl.constexpr, DHV: tl.constexpr, BLOCK_DHQK: tl.constexpr, BLOCK_DHV: tl.constexpr,
    QK_SCALE: tl.constexpr, EPS: tl.constexpr, MAX_EXPONENT: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(DHV, BLOCK_DHV), B * NH)."""
    pid_v, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    offs_q = tl.arange(0, BLOCK_DHQK)
    offs_v = pid_v * BLOCK_DHV + tl.arange(0, BLOCK_DHV)
    mask_q, mask_v = offs_q < DHQK, offs_v < DHV
    offs_c = bh * DHQK * DHV + offs_q[:, None] * DHV + offs_v[None, :]
    mask_c = mask_q[:, None] & mask_v[None, :]

    scaM_old = tl.load(scaM + bh)
    scaI_t = tl.load(scaI + bh).to(tl.float32)
    log_f_plus_m = log_sigmoid(tl.load(scaF + bh).to(tl.float32)) + scaM_old
    m_new = tl.maximum(log_f_plus_m, scaI_t)
    decay = tl.exp(log_f_plus_m - m_new)
    gain = tl.exp(scaI_t - m_new)

    q = tl.load(vecQ + bh * DHQK + offs_q, mask=mask_q, other=0.0).to(tl.float32) * QK_SCALE
    gain_k = gain * tl.load(vecK + bh * DHQK + offs_q, mask=mask_q, other=0.0).to(tl.float32)
    v = tl.load(vecV + bh * DHV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    C = decay * tl.load(matC + offs_c, mask=mask_c, other=0.0) + gain_k[:, None] * v[None, :]
    tl.store(matC_out + offs_c, C, mask=mask_c)
    n = decay * tl.load(vecN + bh * DHQK + offs_q, mask=mask_q, other=0.0) + gain_k
    first = pid_v == 0
    tl.store(vecN_out + bh * DHQK + offs_q, n, mask=mask_q & first)
    tl.store(scaM_out + bh, m_new, mask=first)

    numerator = tl.sum(q[:, None] * C, axis=0)
    floor = tl.exp(tl.minimum(-m_new, MAX_EXPONENT))  # common.denominator_floor
    denominator = tl.maximum(tl.abs(tl.sum(n * q, axis=0)), floor) + EPS
    tl.store(vecH_out + bh * DHV + offs_v, (numerator / denominator).to(vecH_out.dtype.element_ty), mask=mask_v)


def step_block_dhv(DHQK: int, DHV: int) -> int:
    """DHV columns per program: the C tile stays within STATE_BYTES_PER_PROGRAM of fp32 registers."""
    return max(1, min(next_pow2(DHV), STATE_BYTES_PER_PROGRAM // 4 // next_pow2(DHQK)))


def mlstm_step_triton(q, k, v, i, f, c, n, m, *, qk_scale=None, eps=1e-6):
    """One mLSTM step, ``"step--jax"``'s calling convention and results (fp32 states; h in q's dtype).
    Checks the inputs and that Triton can run here, then :func:`launch_step`."""
    common.check_step_inputs(q, k, v, i, f, c, n, m)
    check_dtypes(q, q.dtype)
    for name, x in (("c", c), ("n", n), ("m", m)):
        if x.dtype != jnp.float32:
            raise ValueError(f"{KERNEL_NAME}: state {name} must be float32, got {x.dtype}")
    launch.require_triton_backend(KERNEL_NAME, "step--jax")
    return launch_step(q, k, v, i, f, c, n, m, common.default_qk_scale(q.shape[-1], qk_scale), float(eps))


def launch_step(q, k, v, i, f, c, n, m, qk_scale: float, eps: float):
    """The kernel launch on checked inputs (shapes as in the module docstring); returns h, (c, n, m)."""
    B, NH, DHQK = q.shape
    DHV = v.shape[-1]
    block_dhv = step_block_dhv(DHQK, DHV)
    out_shape = (
        jax.ShapeDtypeStruct((B, NH, DHV), q.dtype),
        jax.ShapeDtypeStruct(c.shape, jnp.float32),
        jax.ShapeDtypeStruct(n.shape, jnp.float32),
        jax.ShapeDtypeStruct(m.shape, jnp.float32),
    )
    h, c, n, m = launch.triton_call(
        q,
        k,
        v,
        i,
        f,
        c,
        n,
        m,
        kernel=step_kernel,
        out_shape=out_shape,
        grid=(math.ceil(DHV / block_dhv), B * NH),
        num_warps=4,
        num_stages=1,
        DHQK=DHQK,
        DHV=DHV,
        BLOCK_DHQK=next_pow2(DHQK),
        BLOCK_DHV=block_dhv,
        QK_SCALE=qk_scale,
        EPS=eps,
        MAX_EXPONENT=float(np.log(np.finfo(np.float32).max)) - 1.0,
    )
    return h, (c, n, m)
