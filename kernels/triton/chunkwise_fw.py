"""Triton chunkwise mLSTM forward: ``mlstm_chunkwise_fw`` (calling convention: docs/kernels.md).

Two kernels (chunkwise_fw_kernels.py): a recurrent kernel walks chunks of ``chunk_size_inter`` steps
and stores the state (C, n, m) at every ``chunk_size_intra`` boundary; a parallel kernel computes h,
den, m_t (and the signed n_t.(s q_t)) for chunks of ``chunk_size_intra`` steps from those states.
With ``materialise_scores`` (tuning.FwConfig) two kernels do the parallel kernel's work: one stores the
gated scores of each chunk, the other multiplies them with v (no q k^T recomputed per block of DHV).
The only work outside Triton is the O(S) gate preparation: log(sigmoid(f)) in fp32 and its cumulative
sum restarted at every intra chunk (``vecB``, the chunk-local log-forget cumsum).

Shapes: matQ, matK (B, NH, S, DHQK); matV (B, NH, S, DHV); vecI, vecF (B, NH, S) raw gates;
matC_initial (B, NH, DHQK, DHV), vecN_initial (B, NH, DHQK), scaM_initial (B, NH).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import common
from . import chunkwise_fw_kernels as kernels
from .launch import triton_call
from .shared import cdiv, check_dtypes, chunk_log_forget_cumsum, chunk_segment_counter, dot_precision
from .tuning import FwConfig, resolve_fw_config, state_dtype


class ChunkStates(NamedTuple):
    """The state at every intra-chunk boundary (index 0 = the initial state, NC = S / chunk_size_intra)."""

    matC: jax.Array  # (B, NH, NC+1, DHQK, DHV) fp32 or q's dtype (states_in_input_dtype)
    vecN: jax.Array  # (B, NH, NC+1, DHQK) fp32
    scaM: jax.Array  # (B, NH, NC+1) fp32
    matC_last: jax.Array  # (B, NH, DHQK, DHV) fp32: the last state C at full precision

    def last(self) -> tuple:
        """The last state (C, n, m), fp32."""
        return self.matC_last, self.vecN[:, :, -1], self.scaM[:, :, -1]


class FwResult(NamedTuple):
    """Everything the forward computes; the custom_vjp saves vecDen, vecM, vecNQ as residuals."""

    matH: jax.Array  # (B, NH, S, DHV) in q's dtype
    vecDen: jax.Array  # (B, NH, S) den_t = max(|n_t . s q_t|, exp(-m_t)), output_dtype
    vecM: jax.Array  # (B, NH, S) m_t of the step recurrence, output_dtype
    vecNQ: jax.Array  # (B, NH, S) fp32, the signed n_t . (s q_t) (before abs and the exp(-m) floor)
    states: ChunkStates


def launch_states(matK, matV, vecB, vecI, vecSeg, initial, config: FwConfig) -> ChunkStates:
    """The recurrent kernel on checked inputs: the chunk states from ``vecB`` (the chunk-local
    log-forget cumsum), fp32 ``vecI``, ``vecSeg`` (the chunk-local segment counter, or None without
    resets) and the fp32 initial states (c, n, m). One DHV block more than C has: its programs walk n, m."""
    B, NH, S, DHQK = matK.shape
    DHV = matV.shape[-1]
    NC = S // config.chunk_size_intra
    grid = (cdiv(DHQK, config.siz_b_DHQK_inter), cdiv(DHV, config.siz_b_DHV_inter) + 1, B * NH)
    gates, kernel = (vecB, vecI), kernels.recurrent_fw_kernel
    if vecSeg is not None:
        gates, kernel = (vecB, vecI, vecSeg), kernels.recurrent_fw_segments_kernel
    out_shape = (
        jax.ShapeDtypeStruct((B, NH, NC + 1, DHQK, DHV), state_dtype(config, matK.dtype)),
        jax.ShapeDtypeStruct((B, NH, NC + 1, DHQK), jnp.float32),
        jax.ShapeDtypeStruct((B, NH, NC + 1), jnp.float32),
        jax.ShapeDtypeStruct((B, NH, DHQK, DHV), jnp.float32),
    )
    states = triton_call(
        matK,
        matV,
        *gates,
        *initial,
        kernel=kernel,
        out_shape=out_shape,
        grid=grid,
        num_warps=config.num_warps_inter,
        num_stages=config.num_stages_inter,
        S=S,
        DHQK=DHQK,
        DHV=DHV,
        NC=NC,
        L_INTRA=config.chunk_size_intra,
        L_INTER=config.chunk_size_inter,
        BLOCK_DHQK=config.siz_b_DHQK_inter,
        BLOCK_DHV=config.siz_b_DHV_inter,
        DOT_PRECISION=dot_precision(matK.dtype),
    )
    return ChunkStates(*states)


def recompute_states(matK, matV, vecI, vecF, initial, config: FwConfig, resets=None):
    """The chunk states of checked inputs from raw gates (and ``resets`` (B, S) bool or None), as the
    forward computes them."""
    L = config.chunk_size_intra
    vecB = chunk_log_forget_cumsum(vecF, L, resets)
    vecSeg = chunk_segment_counter(resets, matK.shape[1], L)
    return launch_states(matK, matV, vecB, vecI.astype(jnp.float32), vecSeg, initial, config)


def launch_forward(
    matQ, matK, matV, vecI, vecF, initial, config: FwConfig, qk_scale: float, eps: float, output_dtype, resets=None
) -> FwResult:
    """The forward kernels on checked inputs (S a multiple of chunk_size_intra, fp32 initial states,
    ``resets`` (B, S) bool segment starts or None): the chunk states, then the outputs from them."""
    L = config.chunk_size_intra
    vecB = chunk_log_forget_cumsum(vecF, L, resets)
    vecSeg = chunk_segment_counter(resets, matQ.shape[1], L)
    vecI = vecI.astype(jnp.float32)
    states = launch_states(matK, matV, vecB, vecI, vecSeg, initial, config)
    launch_outputs = launch_materialised_outputs if config.materialise_scores else launch_parallel_outputs
    outputs = launch_outputs(matQ, matK, matV, vecB, vecI, vecSeg, states, config, qk_scale, eps, output_dtype)
    return FwResult(*outputs, states)


def _sequence_constants(matQ, config: FwConfig) -> dict:
    """The constexprs every output-stage kernel takes: S, DHQK, NC, L and the dot precision."""
    _, _, S, DHQK = matQ.shape
    L = config.chunk_size_intra
    return dict(S=S, DHQK=DHQK, NC=S // L, L=L, DOT_PRECISION=dot_precision(matQ.dtype))


def launch_parallel_outputs(matQ, matK, matV, vecB, vecI, vecSeg, states, config, qk_scale, eps, output_dtype):
    """(h, den, m, nq) from the chunk states with the single parallel kernel."""
    B, NH, S, _ = matQ.shape
    DHV = matV.shape[-1]
    out_shape = (
        jax.ShapeDtypeStruct((B, NH, S, DHV), matQ.dtype),
        jax.ShapeDtypeStruct((B, NH, S), output_dtype),
        jax.ShapeDtypeStruct((B, NH, S), output_dtype),
        jax.ShapeDtypeStruct((B, NH, S), jnp.float32),
    )
    gates = (vecB, vecI) if vecSeg is None else (vecB, vecI, vecSeg)
    return triton_call(
        matQ,
        matK,
        matV,
        *gates,
        *states[:3],
        kernel=kernels.parallel_fw_kernel if vecSeg is None else kernels.parallel_fw_segments_kernel,
        out_shape=out_shape,
        grid=(cdiv(DHV, config.siz_b_DH_parallel), S // config.siz_b_L_parallel, B * NH),
        num_warps=config.num_warps_intra,
        num_stages=config.num_stages_intra,
        **_sequence_constants(matQ, config),
        DHV=DHV,
        BLOCK_LQ=config.siz_b_L_parallel,
        BLOCK_LK=config.siz_b_L_loop,
        BLOCK_DHQK=config.siz_b_DH_loop,
        BLOCK_DHV=config.siz_b_DH_parallel,
        QK_SCALE=qk_scale,
        EPS=eps,
    )


def launch_materialised_outputs(matQ, matK, matV, vecB, vecI, vecSeg, states, config, qk_scale, eps, output_dtype):
    """(h, den, m, nq) from the chunk states with the scores kernel (:func:`launch_scores`), then the output
    kernel h = (w q C + P V) / (den + eps). den and m come out fp32 and are cast to ``output_dtype``."""
    B, NH, S, _ = matQ.shape
    DHV = matV.shape[-1]
    matP, vecDen, vecM, vecNQ, vecW = launch_scores(matQ, matK, vecB, vecI, vecSeg, states, config, qk_scale)
    matH = triton_call(
        matQ,
        matV,
        states.matC,
        matP,
        vecW,
        vecDen,
        kernel=kernels.output_fw_kernel,
        out_shape=jax.ShapeDtypeStruct((B, NH, S, DHV), matQ.dtype),
        grid=(cdiv(DHV, config.siz_b_DH_parallel), S // config.siz_b_L_output, B * NH),
        num_warps=config.num_warps_output,
        num_stages=config.num_stages_output,
        **_sequence_constants(matQ, config),
        DHV=DHV,
        BLOCK_LQ=config.siz_b_L_output,
        BLOCK_K=config.siz_b_K_output,
        BLOCK_DHV=config.siz_b_DH_parallel,
        EPS=eps,
    )
    return matH, vecDen.astype(output_dtype), vecM.astype(output_dtype), vecNQ


def launch_scores(matQ, matK, vecB, vecI, vecSeg, states, config, qk_scale) -> tuple:
    """The scores kernel: (P, den, m, nq, w) from the chunk states' n and m. P (B, NH, S, chunk_size_intra)
    holds the gated scores in q's dtype (B NH S L itemsize bytes, 268 MB for bf16 at B = NH = 8, S = 8192,
    L = 256; blocks above the diagonal stay unwritten, but for the zeros the output kernel's tiles read);
    den, m, the signed nq and the inter-chunk weight w are fp32 (B, NH, S)."""
    B, NH, S, _ = matQ.shape
    L = config.chunk_size_intra
    per_step = jax.ShapeDtypeStruct((B, NH, S), jnp.float32)
    gates = (vecB, vecI) if vecSeg is None else (vecB, vecI, vecSeg)
    return triton_call(
        matQ,
        matK,
        *gates,
        *states[1:3],
        kernel=kernels.scores_fw_kernel if vecSeg is None else kernels.scores_fw_segments_kernel,
        out_shape=(jax.ShapeDtypeStruct((B, NH, S, L), matQ.dtype), per_step, per_step, per_step, per_step),
        grid=(S // config.siz_b_L_parallel, B * NH),
        num_warps=config.num_warps_intra,
        num_stages=config.num_stages_intra,
        **_sequence_constants(matQ, config),
        BLOCK_LQ=config.siz_b_L_parallel,
        BLOCK_LK=config.siz_b_L_loop,
        BLOCK_DHQK=config.siz_b_DH_loop,
        QK_SCALE=qk_scale,
        ZERO_TO=max(config.siz_b_L_output, config.siz_b_K_output),
    )


def mlstm_chunkwise_states(
    matK,
    matV,
    vecI,
    vecF,
    matC_initial=None,
    vecN_initial=None,
    scaM_initial=None,
    *,
    chunk_size_inter,
    chunk_size_intra,
    siz_b_DHQK_inter=None,
    siz_b_DHV_inter=None,
    num_warps_inter=None,
    num_stages_inter=None,
    states_in_input_dtype=None,
):
    """Runs only the recurrent kernel: the state at every ``chunk_size_intra`` boundary.

    Returns ``matC_all (B, NH, NC+1, DHQK, DHV)`` (in k's dtype, or fp32 with
    ``states_in_input_dtype=False``), ``vecN_all (B, NH, NC+1, DHQK)`` and ``scaM_all (B, NH, NC+1)``
    fp32, NC = S / chunk_size_intra, index 0 = the initial state
    (zeros and m = 0 where not given) and index c = the state after c * chunk_size_intra steps. The
    states are stabilised: the true state is ``exp(m) * (C, n)`` (docs/math.md). Buffers are
    C-contiguous, so state c of (b, h) starts at flat offset ``((b*NH + h)*(NC+1) + c) * DHQK*DHV``.
    The same tuning names as :func:`mlstm_chunkwise_fw` pick the kernel's blocks/warps/stages.
    """
    dims = common.check_inputs(matK, matK, matV, vecI, vecF, matC_initial, vecN_initial, scaM_initial)
    check_dtypes(matK, jnp.float32)
    config = resolve_fw_config(
        dims,
        matK.dtype,
        "mlstm_chunkwise_states",
        chunk_size_inter=chunk_size_inter,
        chunk_size_intra=chunk_size_intra,
        siz_b_DHQK_inter=siz_b_DHQK_inter,
        siz_b_DHV_inter=siz_b_DHV_inter,
        num_warps_inter=num_warps_inter,
        num_stages_inter=num_stages_inter,
        states_in_input_dtype=states_in_input_dtype,
    )
    initial = common.initial_states(dims, matC_initial, vecN_initial, scaM_initial)
    return tuple(recompute_states(matK, matV, vecI, vecF, initial, config)[:3])


def mlstm_chunkwise_fw_result(
    matQ,
    matK,
    matV,
    vecI,
    vecF,
    matC_initial=None,
    vecN_initial=None,
    scaM_initial=None,
    qk_scale=None,
    output_dtype=jnp.float32,
    eps=0.0,
    **tuning,
) -> FwResult:
    """The forward with every output (:class:`FwResult`); ``tuning`` as in :func:`mlstm_chunkwise_fw`."""
    dims = common.check_inputs(matQ, matK, matV, vecI, vecF, matC_initial, vecN_initial, scaM_initial)
    check_dtypes(matQ, output_dtype)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    config = resolve_fw_config(dims, matQ.dtype, **tuning)
    initial = common.initial_states(dims, matC_initial, vecN_initial, scaM_initial)
    return launch_forward(
        matQ,
        matK,
        matV,
        vecI,
        vecF,
        initial,
        config,
        common.default_qk_scale(dims.DHQK, qk_scale),
        float(eps),
        output_dtype,
    )


def mlstm_chunkwise_fw(
    matQ,
    matK,
    matV,
    vecI,
    vecF,
    matC_initial=None,
    vecN_initial=None,
    scaM_initial=None,
    qk_scale=None,
    return_last_states=False,
    return_all_states=False,
    chunk_size_inter=None,
    chunk_size_intra=None,
    siz_b_L_parallel=None,
    siz_b_L_loop=None,
    siz_b_DH_parallel=None,
    siz_b_DH_loop=None,
    num_warps_intra=None,
    num_warps_inter=None,
    num_stages_intra=None,
    num_stages_inter=None,
    states_in_input_dtype=None,
    materialise_scores=None,
    siz_b_L_output=None,
    siz_b_K_output=None,
    num_warps_output=None,
    num_stages_output=None,
    output_dtype=jnp.float32,
    eps=0.0,
):
    """Chunkwise mLSTM forward with Triton (math: docs/math.md; calling convention: docs/kernels.md).

    Returns ``(matH, vecN, vecM, last_states_or_None, all_states_or_None)``:
    matH (B, NH, S, DHV) in q's dtype; vecN (B, NH, S) the denominator den_t (before eps) and vecM
    (B, NH, S) the stabiliser m_t, both in ``output_dtype`` (fp32 by default, the only choice the
    backward accepts); last states (C (B,NH,DHQK,DHV), n (B,NH,DHQK), m (B,NH)) fp32; all states as
    :func:`mlstm_chunkwise_states` returns them (C in q's dtype unless ``states_in_input_dtype=False``).

    q, k, v: fp32, bf16 or fp16 (dots accumulate in fp32; fp32 dots use 3xTF32, about fp32 accuracy);
    gates and states fp32. ``qk_scale`` defaults to DHQK ** -0.5 and scales q only. S must be a
    multiple of 16 and of ``chunk_size_intra`` (the registry entry ``chunkwise--triton`` pads any S).
    Tuning arguments left ``None`` take the per-shape and per-dtype defaults of
    ``tuning.resolve_fw_config`` (chunk_size_intra: the package's chunk size, shortened to divide S).
    Rules (ValueError): chunk sizes powers of two in [16, 1024]; inter <= intra (for powers of two the
    same as intra % inter == 0); S % intra == 0; block sizes powers of two >= 16 and <= their chunk
    size / padded head dim; warps a power of two <= 16; stages in [1, 8].
    """
    result = mlstm_chunkwise_fw_result(
        matQ,
        matK,
        matV,
        vecI,
        vecF,
        matC_initial,
        vecN_initial,
        scaM_initial,
        qk_scale=qk_scale,
        output_dtype=output_dtype,
        eps=eps,
        chunk_size_inter=chunk_size_inter,
        chunk_size_intra=chunk_size_intra,
        siz_b_L_parallel=siz_b_L_parallel,
        siz_b_L_loop=siz_b_L_loop,
        siz_b_DH_parallel=siz_b_DH_parallel,
        siz_b_DH_loop=siz_b_DH_loop,
        num_warps_intra=num_warps_intra,
        num_warps_inter=num_warps_inter,
        num_stages_intra=num_stages_intra,
        num_stages_inter=num_stages_inter,
        states_in_input_dtype=states_in_input_dtype,
        materialise_scores=materialise_scores,
        siz_b_L_output=siz_b_L_output,
        siz_b_K_output=siz_b_K_output,
        num_warps_output=num_warps_output,
        num_stages_output=num_stages_output,
    )
    last_states = result.states.last() if return_last_states else None
    all_states = tuple(result.states[:3]) if return_all_states else None
    return result.matH, result.vecDen, result.vecM, last_states, all_states
