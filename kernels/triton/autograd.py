"""Registry entry ``"chunkwise--triton"``: the Triton chunkwise forward behind the common calling
convention (``xlstm_flax.kernels``), wrapped in ``jax.custom_vjp``.

The custom_vjp's forward saves what an exact backward needs (inputs, initial states, H and the
per-step den, m and signed n.(s q)); the backward itself is :func:`_backward`. It recomputes the
chunk states by default, with the forward's exact call (same kernel configuration), so that XLA can
merge the two when forward and backward are compiled together; ``save_states=True`` keeps the
forward's instead (more memory held between forward and backward: fp32 (S / chunk_size + 1) * DHQK *
(DHV + 1) per head, about 1 GiB at B=8, NH=8, S=8192, 256 x 512).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from .. import common
from . import launch
from .chunkwise_bw import mlstm_chunkwise_bw
from .chunkwise_fw import (
    MAX_CHUNK, MIN_BLOCK, FwConfig, check_power_of_two, mlstm_chunkwise_fw_result, mlstm_chunkwise_states,
    resolve_config, state_tuning,
)

KERNEL_NAME = "chunkwise--triton"
DEFAULT_CHUNK_SIZE = 128
LONG_CHUNK_SIZE, LONG_SEQUENCE = 256, 2048


@dataclasses.dataclass(frozen=True)
class _Options:
    qk_scale: float
    eps: float
    save_states: bool  # keep the forward's chunk states as a residual instead of recomputing them
    config: FwConfig  # the forward's choices, defaults filled in
    # What the caller chose (chunk_size_intra and impl_options): the backward fills in its own
    # defaults, because its kernels use the same names for other tiles than the forward's.
    chosen: tuple


def _require_triton_backend() -> None:
    launch.require_triton_backend(KERNEL_NAME, "chunkwise--jax")


def _chunk_size_intra(S: int, chunk_size, chunk_size_intra) -> int:
    """``chunk_size`` (alias ``chunk_size_intra``), else LONG_CHUNK_SIZE (the tuned choice) from
    LONG_SEQUENCE steps on, DEFAULT_CHUNK_SIZE below that (less padding), or for a sequence shorter
    than that the smallest power of two >= 16 that holds it."""
    if None not in (chunk_size, chunk_size_intra) and chunk_size != chunk_size_intra:
        raise ValueError(f"chunk_size={chunk_size} and chunk_size_intra={chunk_size_intra} disagree")
    chosen = chunk_size if chunk_size is not None else chunk_size_intra
    if chosen is None:
        if S >= LONG_SEQUENCE:
            return LONG_CHUNK_SIZE
        return min(DEFAULT_CHUNK_SIZE, max(MIN_BLOCK, 1 << (S - 1).bit_length()))
    check_power_of_two("chunk_size", chosen, MIN_BLOCK, MAX_CHUNK)
    return chosen


def mlstm_chunkwise_triton(q, k, v, i, f, *, c_initial=None, n_initial=None, m_initial=None,
                           return_last_states=False, qk_scale=None, eps=1e-6, chunk_size=None,
                           save_states=False, **impl_options):
    """mLSTM over any S with the Triton chunkwise kernels (S padded to a multiple of the intra chunk).

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); i, f: (B, NH, S); optional initial states
    c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH). ``chunk_size`` is ``chunk_size_intra`` (default
    256 from S = 2048 on, else min(128, S rounded up to a power of two >= 16)); ``impl_options`` are
    the other tuning keywords of ``mlstm_chunkwise_fw``. ``save_states``: under differentiation,
    keep the forward's chunk states for the backward instead of recomputing them (faster, fp32
    states of every chunk boundary held until the backward). Returns h (B, NH, S, DHV) in q's dtype, or ``(h, (c, n, m))`` with fp32
    states when ``return_last_states``.
    """
    dims = common.check_inputs(q, k, v, i, f, c_initial, n_initial, m_initial)
    intra = _chunk_size_intra(dims.S, chunk_size, impl_options.pop("chunk_size_intra", None))
    initial = common.initial_states(dims, c_initial, n_initial, m_initial)
    (q, k, v, i, f), S = common.pad_sequence(q, k, v, i, f, intra)
    config = resolve_config(dims._replace(S=q.shape[2]), q.dtype, chunk_size_intra=intra, **impl_options)
    chosen = tuple(sorted({**impl_options, "chunk_size_intra": intra}.items()))
    if not isinstance(save_states, bool):
        raise ValueError(f"{KERNEL_NAME}: save_states must be True or False, got {save_states!r}")
    options = _Options(common.default_qk_scale(dims.DHQK, qk_scale), float(eps), save_states, config, chosen)
    _require_triton_backend()
    h, last_states = _chunkwise(q, k, v, i, f, *initial, options)
    h = h[:, :, :S]
    return (h, last_states) if return_last_states else h


def _forward(q, k, v, i, f, c0, n0, m0, options: _Options):
    result = mlstm_chunkwise_fw_result(
        q, k, v, i, f, c0, n0, m0, qk_scale=options.qk_scale, eps=options.eps,
        **dataclasses.asdict(options.config),
    )
    last_states = tuple(x[:, :, -1] for x in result.states)
    return result, last_states


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _chunkwise(q, k, v, i, f, c0, n0, m0, options):
    result, last_states = _forward(q, k, v, i, f, c0, n0, m0, options)
    return result.matH, last_states


def _chunkwise_fwd(q, k, v, i, f, c0, n0, m0, options):
    result, last_states = _forward(q, k, v, i, f, c0, n0, m0, options)
    saved_states = result.states if options.save_states else None
    residuals = (q, k, v, i, f, c0, n0, m0, result.matH, result.vecN, result.vecM, result.vecNQ, saved_states)
    return (result.matH, last_states), residuals


def _backward(options, residuals, cotangents):
    """Exact gradients (chunkwise_bw.py) for q, k, v, i, f and the initial states c0, n0, m0."""
    matH_bar, (matC_bar, vecN_bar, scaM_bar) = cotangents
    *forward_residuals, states = residuals
    if states is None:  # recompute them with the forward's own call
        _, k, v, i, f, c0, n0, m0 = forward_residuals[:8]
        states = mlstm_chunkwise_states(k, v, i, f, c0, n0, m0, **state_tuning(options.config))
    return mlstm_chunkwise_bw(
        *forward_residuals, matH_bar, matC_bar, vecN_bar, scaM_bar, qk_scale=options.qk_scale, eps=options.eps,
        all_states=states, **dict(options.chosen),
    )


_chunkwise.defvjp(_chunkwise_fwd, _backward)
