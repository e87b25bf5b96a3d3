"""Triton chunkwise mLSTM backward: exact gradients of ``mlstm_chunkwise_fw`` (docs/math.md).

Math (per batch and head; s = qk_scale, F = cumulative log forget gate over the whole sequence, m_t the
per-step stabiliser; the kernels use ``b``, the chunk-local log-forget cumsum, in place of F):

1. Per step (JAX, one fused pass over dh and h): dden_t = -sum(dh_t * h_t) / (den_t + eps);
   dnq_t = dden_t * sign(nq_t) * [|nq_t| > exp(-m_t)] (nq_t = n_t . s q_t, the forward's ``vecNQ``). The
   kernels take dh itself for dnum_t = dh_t / (den_t + eps): row t's factor 1 / (den_t + eps) joins its
   stabiliser, mden_t = m_t + log(den_t + eps), and its dnq (stored times den_t + eps).
2. Triton (``chunkwise_bw_kernels``): with n as one more value column, a recurrent kernel walks the
   chunks backwards for the state cotangents (dC, dn) at every intra-chunk boundary, and parallel
   kernels give dq, dk and dv per chunk (plus the row sums q.dq and k.dk); dk and dv are two launches
   of one kernel. With ``materialise_bw_scores`` a scores kernel first stores the gated scores dS and
   P of every chunk, which the three then read instead of recomputing them per head-dim tile.
3. Gates (JAX): di_j = k_j . dk_j; dF_t = q_t . dq_t - k_t . dk_t (+ sum(dC_S C_S) + dn_S . n_S at the
   last step); d log f = reverse cumsum of dF. Initial states: dC0, dn0 = the cotangents at boundary
   0, dm0 = sum(dC0 C0) + dn0 . n0.
4. m reaches the outputs only through eps (h = N~ / (D~ + eps e^m)) and the stabilised last states:
   dm_t = eps * dden_t, plus dm_S - sum(dC_S C_S) - dn_S . n_S at the last step, pushed through
   m = F + max(m0, cummax(i - F)) into i, f, m0 (``_stabiliser_cotangents``, written out).

Shapes: q, k (B, NH, S, DHQK); v, h, dh (B, NH, S, DHV); i, f, den, m, nq (B, NH, S);
C (B, NH, DHQK, DHV); n (B, NH, DHQK); m0 (B, NH). S is a multiple of chunk_size_intra.
Tuning: :class:`~.tuning.BwConfig` (its own names; only chunk_size_intra is shared with the forward).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import common
from . import chunkwise_bw_kernels as kernels
from .chunkwise_fw import ChunkStates, recompute_states
from .launch import triton_call
from .shared import (
    cdiv,
    check_dtypes,
    chunk_log_forget_cumsum,
    chunk_segment_counter,
    dot_precision,
    heads_flat,
    padded_dim,
)
from .tuning import BwConfig, resolve_bw_config, resolve_fw_config, state_dtype


def _check_residuals(dims: common.Dims, **arrays) -> None:
    """Shapes of the forward's outputs and of the cotangents (None = absent)."""
    B, NH, S, DHQK, DHV = dims
    expected = dict(
        matH=(B, NH, S, DHV),
        vecDen=(B, NH, S),
        vecM=(B, NH, S),
        vecNQ=(B, NH, S),
        matDeltaH=(B, NH, S, DHV),
        matDeltaC_last=(B, NH, DHQK, DHV),
        vecDeltaN_last=(B, NH, DHQK),
        scaDeltaM_last=(B, NH),
    )
    for name, x in arrays.items():
        if x is not None and tuple(x.shape) != expected[name]:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {expected[name]}")


def _stabiliser_cotangents(vecI, vecLogF, scaM0, vecDM, resets):
    """Cotangents (of i, of F, of m0) of m_t = F_t + max(base_t, M_t) for the cotangent ``vecDM`` of m, with
    M_t = max_{j<=t}(i_j - F_j), F the cumulative log forget gate and base the initial m (fp32, (B, NH, S) and
    (B, NH)). With ``resets`` (B, S) bool, F and M restart at every segment start and later segments take
    base = 0 (docs/math.md 5.1).

    dm_t goes to F_t, and to i_j and -F_j of the step j that attains M_t (the last one on a tie), or to m0
    where base wins (half each on a tie, as jnp.maximum splits). A step that attains the running max owns
    every step up to the next such step, so its share is one reverse running sum that restarts there: no
    autodiff of the cumulative max (whose associative-scan backward cost XLA about 20 small kernels)."""
    starts = jnp.zeros(vecI.shape, bool).at[..., 0].set(True)
    if resets is None:
        first = jnp.ones(vecI.shape, bool)  # every step lies in the first (only) segment
        F = jnp.cumsum(vecLogF, axis=-1)
        x = vecI - F
        M = jax.lax.cummax(x, axis=x.ndim - 1)
    else:
        resets = resets[:, None]
        starts = starts | resets
        first = jnp.cumsum(resets, axis=-1) == 0
        F = common.segmented_cumsum(vecLogF, resets)
        x = vecI - F
        M = common.segmented_cummax(x, resets)
    base = jnp.where(first, scaM0[..., None], 0.0)
    to_max = vecDM * jnp.where(M > base, 1.0, jnp.where(M == base, 0.5, 0.0))
    owner = (x == M) | starts  # a segment start always owns (M = x there): no run crosses a segment
    vecDI = jnp.where(owner, _reverse_segment_sums(to_max, owner), 0.0)
    scaDM0 = jnp.sum(jnp.where(first, vecDM - to_max, 0.0), axis=-1)
    return vecDI, vecDM - vecDI, scaDM0


def _reverse_segment_sums(x, starts):
    """out_l = sum of x_t over t >= l up to the step before the next segment start (the whole row without
    ``starts``): x (B, NH, S), ``starts`` bool broadcastable to it."""
    if starts is None:
        return jnp.flip(jnp.cumsum(jnp.flip(x, -1), -1), -1)
    ends = jnp.concatenate([starts[..., 1:], jnp.zeros_like(starts[..., :1])], axis=-1)  # last step of a segment
    return jnp.flip(common.segmented_cumsum(jnp.flip(x, -1), jnp.flip(ends, -1)), -1)


class KernelArgs(NamedTuple):
    """The backward kernels' inputs, heads flattened: (B * NH, S, ...)."""

    matQ: jax.Array  # (BH, S, DHQK)
    matK: jax.Array  # (BH, S, DHQK)
    matV: jax.Array  # (BH, S, DHV)
    matDH: jax.Array  # (BH, S, DHV) dh in q's dtype
    vecDNQ: jax.Array  # (BH, S) fp32 cotangent of n_t . s q_t, times den_t + eps
    vecB: jax.Array  # (BH, S) fp32 chunk-local log-forget cumsum (restarted every intra chunk, and segment)
    vecI: jax.Array  # (BH, S) fp32
    vecM: jax.Array  # (BH, S) fp32 m_t
    vecMDen: jax.Array  # (BH, S) fp32 m_t + log(den_t + eps), the stabiliser of row t's dh terms
    scaM0: jax.Array  # (BH,) fp32 initial m
    vecSeg: jax.Array | None  # (BH, S) int32 chunk-local segment counter; None without resets


def _gates(args: KernelArgs, *names: str):
    """The named per-step inputs, with ``vecSeg`` after the last of them when there are resets."""
    gates = tuple(getattr(args, name) for name in names)
    return gates if args.vecSeg is None else (*gates, args.vecSeg)


def _variant(args: KernelArgs, kernel, segments_kernel):
    """``kernel``, or its ``*_segments_kernel`` entry when there are resets."""
    return kernel if args.vecSeg is None else segments_kernel


def _launch_options(args: KernelArgs, s: float, warps: int, stages: int) -> dict:
    BH, S, DHQK = args.matQ.shape
    return dict(
        num_warps=warps,
        num_stages=stages,
        qk_scale=s,
        S=S,
        DHQK=DHQK,
        DHV=args.matV.shape[-1],
        PRECISION=dot_precision(args.matQ.dtype),
    )


def state_cotangents(args: KernelArgs, matDC_last, vecDN_last, s: float, config: BwConfig):
    """Recurrent kernel: (dC_all (BH, NC+1, DHQK, DHV) in ``tuning.state_dtype``, dn_all (BH, NC+1, DHQK)
    fp32, dC_first (BH, DHQK, DHV) fp32), index c = the cotangent of the state after c intra chunks,
    stabilised like it; dC_first = dC_all at index 0 at full precision. One DHV block more than dC has:
    its programs walk dn."""
    BH, S, DHQK = args.matQ.shape
    DHV = args.matV.shape[-1]
    NC = S // config.chunk_size_intra
    return triton_call(
        args.matQ,
        args.matDH,
        args.vecDNQ,
        *_gates(args, "vecB"),
        args.vecM,
        args.vecMDen,
        args.scaM0,
        matDC_last,
        vecDN_last,
        kernel=_variant(args, kernels.recurrent_bw_kernel, kernels.recurrent_bw_segments_kernel),
        out_shape=(
            jax.ShapeDtypeStruct((BH, NC + 1, DHQK, DHV), state_dtype(config, args.matQ.dtype)),
            jax.ShapeDtypeStruct((BH, NC + 1, DHQK), jnp.float32),
            jax.ShapeDtypeStruct((BH, DHQK, DHV), jnp.float32),
        ),
        grid=(cdiv(DHQK, config.block_dhqk_recurrent), cdiv(DHV, config.block_dhv_recurrent) + 1, BH),
        L_INTRA=config.chunk_size_intra,
        L_INTER=config.chunk_size_recurrent,
        BQ=config.block_dhqk_recurrent,
        BV=config.block_dhv_recurrent,
        **_launch_options(args, s, config.num_warps_recurrent, config.num_stages_recurrent),
    )


def _clamped(block: int, size: int) -> int:
    """A head-dim ``block`` clamped to ``size`` padded like the kernels pad it."""
    return min(block, padded_dim(size))


def _parallel_launch(args: KernelArgs, s: float, config: BwConfig, splits: int):
    """Grid over (head-dim splits, owned step blocks, heads) and the launch options shared by dq and dk/dv."""
    BH, S, _ = args.matQ.shape
    grid = (splits, S // config.block_steps_owned, BH)
    return dict(
        grid=grid,
        L=config.chunk_size_intra,
        **_launch_options(args, s, config.num_warps_parallel, config.num_stages_parallel),
    )


def _score_inputs(args: KernelArgs) -> tuple:
    """What the scores dS and P are made of, in the kernels' order: q, k, v, dh, dnq and the gates."""
    return (args.matQ, args.matK, args.matV, args.matDH, args.vecDNQ, *_gates(args, "vecB", "vecI"), args.vecMDen)


def scores_call(args: KernelArgs, s: float, config: BwConfig):
    """The materialised scores (dS, P), each (BH, S, chunk_size_intra) in q's dtype (``materialise_bw_scores``)."""
    BH, S, DHQK = args.matQ.shape
    L = config.chunk_size_intra
    scores = jax.ShapeDtypeStruct((BH, S, L), args.matQ.dtype)
    return triton_call(
        *_score_inputs(args),
        kernel=_variant(args, kernels.scores_bw_kernel, kernels.scores_bw_segments_kernel),
        out_shape=(scores, scores),
        grid=(S // config.block_steps_owned, BH),
        L=L,
        BT=config.block_steps_owned,
        BJ=config.block_steps_looped,
        BQ=_clamped(config.block_dh_contracted, DHQK),
        BV=_clamped(config.block_dh_contracted, args.matV.shape[-1]),
        **_launch_options(args, s, config.num_warps_parallel, config.num_stages_parallel),
    )


def dq_call(args: KernelArgs, states, s: float, config: BwConfig, matDS=None):
    """dq (BH, S, DHQK) in q's dtype and the row sums q . dq (BH, S) fp32; from the materialised
    ``matDS`` when given, else recomputing the scores."""
    BH, S, DHQK = args.matQ.shape
    BQ = _clamped(config.block_dh_owned, DHQK)
    launch = _parallel_launch(args, s, config, cdiv(DHQK, BQ))
    matDQ, vecQDQ = triton_call(
        args.matK,
        args.matV,
        args.matDH,
        args.vecDNQ,
        *_gates(args, "vecB", "vecI"),
        args.vecMDen,
        args.matQ,
        *states,
        args.matQ if matDS is None else matDS,  # not read unless MATERIALISED
        kernel=_variant(args, kernels.parallel_bw_dq_kernel, kernels.parallel_bw_dq_segments_kernel),
        out_shape=(
            jax.ShapeDtypeStruct(args.matQ.shape, args.matQ.dtype),
            jax.ShapeDtypeStruct((launch["grid"][0], BH, S), jnp.float32),
        ),
        BT=config.block_steps_owned,
        BJ=config.block_steps_looped,
        BQ=BQ,
        BV=_clamped(config.block_dh_contracted, args.matV.shape[-1]),
        MATERIALISED=matDS is not None,
        **launch,
    )
    return matDQ, vecQDQ.sum(0)


def dk_dv_call(args: KernelArgs, dstates, s: float, config: BwConfig, for_dk: bool, matS=None):
    """dk (BH, S, DHQK) in k's dtype with the row sums k . dk (BH, S) fp32 (``for_dk``), else
    (dv (BH, S, DHV) in v's dtype, None); from the materialised ``matS`` (dS for dk, P for dv) when
    given, else recomputing the scores."""
    BH, S, DHQK = args.matK.shape
    DHV = args.matV.shape[-1]
    owned, contracted = (DHQK, DHV) if for_dk else (DHV, DHQK)
    BOWN = _clamped(config.block_dh_owned, owned)
    splits = cdiv(owned, BOWN)
    target = args.matK if for_dk else args.matV
    row_sums = jax.ShapeDtypeStruct((splits, BH, S) if for_dk else (1,), jnp.float32)  # dv: not written
    matDX, vecKDK = triton_call(
        *_score_inputs(args),
        args.vecM,
        *dstates,
        args.matQ if matS is None else matS,  # not read unless MATERIALISED
        kernel=_variant(args, kernels.parallel_bw_dk_dv_kernel, kernels.parallel_bw_dk_dv_segments_kernel),
        out_shape=(jax.ShapeDtypeStruct(target.shape, target.dtype), row_sums),
        BJ=config.block_steps_owned,
        BT=config.block_steps_looped,
        BOWN=BOWN,
        BLOOP=_clamped(config.block_dh_contracted, contracted),
        FOR_DK=for_dk,
        MATERIALISED=matS is not None,
        **_parallel_launch(args, s, config, splits),
    )
    return matDX, (vecKDK.sum(0) if for_dk else None)


def step_cotangents(matDeltaH, matH, vecDen, vecM, vecNQ, eps: float):
    """Step 1 (docs/math.md 4.2) from dh and h (B, NH, S, DHV): mden = m + log(den + eps), dden =
    -sum(dh * h) / (den + eps) and dnq = dden sign(nq) [|nq| > e^-m] (den + eps), each (B, NH, S) fp32. XLA
    fuses it into one pass over dh and h, as fast as a Triton kernel of its own was (0.27 ms at the 7B
    layer on an H200, benchmarks/results/h200_session23_2026-12-05.md)."""
    den_eps = vecDen.astype(jnp.float32) + eps
    m, nq = vecM.astype(jnp.float32), vecNQ.astype(jnp.float32)
    dh_dot_h = jnp.sum(matDeltaH.astype(jnp.float32) * matH.astype(jnp.float32), axis=-1)
    return m + jnp.log(den_eps), -dh_dot_h / den_eps, -dh_dot_h * jnp.sign(nq) * (jnp.abs(nq) > jnp.exp(-m))


def kernel_args(
    matQ,
    matK,
    matV,
    vecI,
    vecF,
    scaM0,
    matH,
    vecDen,
    vecM,
    vecNQ,
    matDeltaH,
    eps: float,
    chunk_size_intra: int,
    resets=None,
):
    """Step 1 (per-step cotangents) and the kernels' layout: (KernelArgs, dden (B, NH, S) fp32);
    ``resets`` (B, S) bool segment starts or None."""
    vecMDen, vecDDen, vecDNQ = step_cotangents(matDeltaH, matH, vecDen, vecM, vecNQ, eps)
    vecB = chunk_log_forget_cumsum(vecF, chunk_size_intra, resets)
    vecSeg = chunk_segment_counter(resets, matQ.shape[1], chunk_size_intra)
    vecI, vecM = vecI.astype(jnp.float32), vecM.astype(jnp.float32)
    matDH = matDeltaH.astype(matQ.dtype)
    args = KernelArgs(matQ, matK, matV, matDH, vecDNQ, vecB, vecI, vecM, vecMDen, scaM0, vecSeg)
    return KernelArgs(*(None if x is None else heads_flat(x) for x in args)), vecDDen


def mlstm_chunkwise_bw(
    matQ,
    matK,
    matV,
    vecI,
    vecF,
    matC_initial,
    vecN_initial,
    scaM_initial,
    matH,
    vecDen,
    vecM,
    vecNQ,
    matDeltaH,
    matDeltaC_last=None,
    vecDeltaN_last=None,
    scaDeltaM_last=None,
    *,
    qk_scale=None,
    eps=0.0,
    all_states=None,
    **tuning,
):
    """Gradients of the chunkwise forward for its outputs' cotangents.

    Residuals: the forward's inputs (initial states may be None: zeros, m0 = 0), its outputs ``matH``,
    ``vecDen`` (den, the forward's second output), ``vecM`` (m_t), ``vecNQ`` (signed n_t . s q_t) and,
    optionally, ``all_states`` (its (C, n, m) at every intra boundary, as ``mlstm_chunkwise_states``
    returns them, C in any float dtype; else recomputed with the forward's default tuning, memory
    O(S / chunk_size_intra * DHQK * DHV) per head). Cotangents: ``matDeltaH`` (B, NH, S, DHV) and, for
    the returned last states, ``matDeltaC_last``, ``vecDeltaN_last``, ``scaDeltaM_last`` (None = 0).
    ``tuning``: the fields of :class:`~.tuning.BwConfig` (None or absent = its defaults; rules:
    ``tuning.resolve_bw_config``).

    Returns (dq, dk, dv, di, df, dc0, dn0, dm0): dq, dk, dv, di, df in their inputs' dtypes, the
    initial states' gradients fp32.
    """
    dims = common.check_inputs(matQ, matK, matV, vecI, vecF, matC_initial, vecN_initial, scaM_initial)
    check_dtypes(matQ, jnp.float32)
    _check_residuals(
        dims,
        matH=matH,
        vecDen=vecDen,
        vecM=vecM,
        vecNQ=vecNQ,
        matDeltaH=matDeltaH,
        matDeltaC_last=matDeltaC_last,
        vecDeltaN_last=vecDeltaN_last,
        scaDeltaM_last=scaDeltaM_last,
    )
    config = resolve_bw_config(dims, matQ.dtype, **tuning)
    initial = common.initial_states(dims, matC_initial, vecN_initial, scaM_initial)
    if all_states is None:
        fw_config = resolve_fw_config(dims, matQ.dtype, chunk_size_intra=config.chunk_size_intra)
        all_states = recompute_states(matK, matV, vecI, vecF, initial, fw_config)
    else:
        matC_all = all_states[0]
        all_states = ChunkStates(*all_states, matC_all[:, :, -1].astype(jnp.float32))
    residuals = (matQ, matK, matV, vecI, vecF, *initial, matH, vecDen, vecM, vecNQ)
    cotangents = (matDeltaH, matDeltaC_last, vecDeltaN_last, scaDeltaM_last)
    return launch_backward(
        residuals, all_states, cotangents, common.default_qk_scale(dims.DHQK, qk_scale), float(eps), config
    )


def launch_backward(
    residuals, all_states: ChunkStates, cotangents, qk_scale: float, eps: float, config: BwConfig, resets=None
):
    """The backward on checked arguments. ``residuals``: (q, k, v, i, f, c0, n0, m0, h, den, m, nq) with
    fp32 initial states; ``all_states``: the forward's chunk states; ``cotangents``: (dh, dC_last, dn_last,
    dm_last), the last three may be None; ``resets``: (B, S) bool segment starts or None. Returns what
    :func:`mlstm_chunkwise_bw` returns."""
    matQ, matK, matV, vecI, vecF, matC0, vecN0, scaM0, matH, vecDen, vecM, vecNQ = residuals
    matDeltaH, matDeltaC_last, vecDeltaN_last, scaDeltaM_last = cotangents
    B, NH, S, DHQK = matQ.shape
    DHV = matV.shape[-1]
    s = qk_scale
    f32 = jnp.float32

    # 1. per-step cotangents; 2. the Triton kernels on (B * NH, ...) views.
    args, vecDDen = kernel_args(
        matQ, matK, matV, vecI, vecF, scaM0, matH, vecDen, vecM, vecNQ, matDeltaH, eps, config.chunk_size_intra, resets
    )
    matDC_last = jnp.zeros((B, NH, DHQK, DHV), f32) if matDeltaC_last is None else matDeltaC_last.astype(f32)
    vecDN_last = jnp.zeros((B, NH, DHQK), f32) if vecDeltaN_last is None else vecDeltaN_last.astype(f32)
    matDC_all, vecDN_all, matDC_first = state_cotangents(
        args, heads_flat(matDC_last), heads_flat(vecDN_last), s, config
    )
    matDS, matP = scores_call(args, s, config) if config.materialise_bw_scores else (None, None)
    matDQ, vecQDQ = dq_call(args, tuple(heads_flat(x) for x in all_states[:3]), s, config, matDS)
    matDK, vecKDK = dk_dv_call(args, (matDC_all, vecDN_all), s, config, for_dk=True, matS=matDS)
    matDV, _ = dk_dv_call(args, (matDC_all, vecDN_all), s, config, for_dk=False, matS=matP)

    # 3. gates: dF and the initial states.
    matC_last, vecN_last, _ = all_states.last()
    last_state_term = jnp.sum(matDC_last * matC_last, axis=(-2, -1)) + jnp.sum(vecDN_last * vecN_last, axis=-1)
    vecQDQ, vecKDK = vecQDQ.reshape(B, NH, S), vecKDK.reshape(B, NH, S)
    vecDF = (vecQDQ - vecKDK).at[..., -1].add(last_state_term)
    matDC0, vecDN0 = matDC_first.reshape(B, NH, DHQK, DHV), vecDN_all.reshape(B, NH, -1, DHQK)[:, :, 0]
    scaDM0 = jnp.sum(matDC0 * matC0, axis=(-2, -1)) + jnp.sum(vecDN0 * vecN0, axis=-1)

    # 4. the m-path, its F part summed into d log f with the rest of dF.
    scaDM_last = jnp.zeros((B, NH), f32) if scaDeltaM_last is None else scaDeltaM_last.astype(f32)
    vecDM = (eps * vecDDen).at[..., -1].add(scaDM_last - last_state_term)
    vecLogF = common.log_sigmoid_fp32(vecF).astype(f32)
    vecDI_m, vecDF_m, scaDM0_m = _stabiliser_cotangents(vecI.astype(f32), vecLogF, scaM0, vecDM, resets)
    vecDLogF = _reverse_segment_sums(vecDF + vecDF_m, None if resets is None else resets[:, None])
    vecDI = vecKDK + vecDI_m
    vecDFgate = vecDLogF * jax.nn.sigmoid(-vecF.astype(f32))
    return (
        matDQ.reshape(matQ.shape),
        matDK.reshape(matK.shape),
        matDV.reshape(matV.shape),
        vecDI.astype(vecI.dtype),
        vecDFgate.astype(vecF.dtype),
        matDC0,
        vecDN0,
        scaDM0 + scaDM0_m,
    )
