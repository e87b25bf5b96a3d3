"""HF transformers ``xLSTMConfig`` (``config.json`` of an ``xLSTMForCausalLM``) <-> :class:`xLSTMLMConfig`.

Every field that changes HF's network is mapped; fields that only steer HF's torch runtime (kernels,
mode, chunk size, state dtypes, cache, token ids) are ignored; anything else is refused, naming the
field. Facts of HF's network (transformers 5.x, ``modeling_xlstm.py``): q/k and v widths are
``int(hidden * factor)`` (no rounding), the FFN width is ``hf_ffn_width``; block norms are RMSNorms
and the per-head norm a LayerNorm, all with a weight and, with ``use_bias``, a bias; the output norm
(an RMSNorm without bias) is always there, whatever ``add_out_norm`` says; gate and logit soft caps;
``lm_head`` is its own tensor even with ``tie_word_embeddings`` (the loader follows the tensors).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..config import is_int
from ..layers import FFNConfig, mLSTMLayerConfig
from ..layers.config import hf_ffn_width
from ..model_config import xLSTMLMConfig

MODEL_TYPE = "xlstm"
ARCHITECTURE = "xLSTMForCausalLM"

# HF fields that steer only its torch runtime or bookkeeping; they never change the outputs.
RUNTIME_FIELDS = frozenset(
    {
        "norm_reduction_force_float32",
        "chunkwise_kernel",
        "sequence_kernel",
        "step_kernel",
        "mode",
        "chunk_size",
        "return_last_states",
        "autocast_kernel_dtype",
        "inference_state_dtype",
        "max_inference_chunksize",
        "use_cache",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "architectures",
        "model_type",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "_name_or_path",
        "auto_map",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "tokenizer_class",
        "task_specific_params",
        "is_encoder_decoder",
        "is_decoder",
        "add_out_norm",
        "num_hidden_layers",  # only sizes HF's init and cache when num_blocks is set
    }
)
# Options of the original xlstm package that HF's network lacks: accepted only at the neutral value.
NEUTRAL_LEGACY_FIELDS = {
    "add_qk_norm": False,
    "add_post_norm": False,
    "add_embedding_dropout": False,
    "add_post_blocks_norm": True,
}
HF_DEFAULTS = dict(
    vocab_size=50304,
    hidden_size=4096,
    num_blocks=32,
    num_heads=8,
    use_bias=False,
    norm_eps=1e-6,
    qk_dim_factor=0.5,
    v_dim_factor=1.0,
    eps=1e-6,
    ffn_proj_factor=2.667,
    ffn_round_up_to_multiple_of=64,
    gate_soft_cap=15.0,
    output_logit_soft_cap=30.0,
    weight_mode="single",
    tie_word_embeddings=False,
)
NETWORK_FIELDS = frozenset(HF_DEFAULTS) | {"embedding_dim"}


class HFConfigError(ValueError):
    """A config.json that this library cannot map exactly; the message names the file and field."""


def from_hf_config(
    hf: dict[str, Any],
    *,
    source: str = "config.json",
    tie_embeddings: bool,
    kernel: str | None = None,
    dtype: str = "float32",
) -> xLSTMLMConfig:
    """The :class:`xLSTMLMConfig` of HF config dict ``hf``. ``tie_embeddings`` comes from the tensors
    (see ``hf.py``), ``kernel`` picks our mLSTM sequence kernel, ``dtype`` the param/compute dtype."""
    if hf.get("model_type") != MODEL_TYPE:
        raise HFConfigError(
            f"{source}: model_type is {hf.get('model_type')!r}, expected {MODEL_TYPE!r} (an {ARCHITECTURE} checkpoint)"
        )
    unknown = sorted(set(hf) - NETWORK_FIELDS - RUNTIME_FIELDS - set(NEUTRAL_LEGACY_FIELDS))
    if unknown:
        raise HFConfigError(
            f"{source}: unsupported field(s) {', '.join(unknown)}: they may change the network, "
            "which this converter would not reproduce"
        )
    for key, neutral in NEUTRAL_LEGACY_FIELDS.items():
        if key in hf and hf[key] != neutral:
            raise HFConfigError(f"{source}: {key}={hf[key]!r} is not supported (only {neutral!r})")
    f = {**HF_DEFAULTS, **{k: v for k, v in hf.items() if k in NETWORK_FIELDS and v is not None}}
    if f["weight_mode"] != "single":
        raise HFConfigError(
            f"{source}: weight_mode={f['weight_mode']!r} is not supported (only 'single'; "
            "transformers itself cannot build 'fused' models)"
        )
    width = f["hidden_size"]
    if not is_int(width):
        raise HFConfigError(f"{source}: hidden_size must be an int, got {width!r}")
    if f.get("embedding_dim", width) != width:
        raise HFConfigError(f"{source}: embedding_dim={f['embedding_dim']} differs from hidden_size={width}")
    if hf.get("num_blocks") is None and hf.get("num_hidden_layers") is not None:
        f["num_blocks"] = hf["num_hidden_layers"]
    try:
        mlstm = mLSTMLayerConfig(
            variant="xlstm7b",
            num_heads=f["num_heads"],
            eps=f["eps"],
            norm_eps=f["norm_eps"],
            use_bias=f["use_bias"],
            qk_dim_factor=f["qk_dim_factor"],
            v_dim_factor=f["v_dim_factor"],
            gate_soft_cap=hf.get("gate_soft_cap", 15.0),
            width_rounding="hf",
        )
        ffn = FFNConfig(
            proj_factor=f["ffn_proj_factor"],
            round_up_to=f["ffn_round_up_to_multiple_of"],
            width_rounding="hf",
            use_bias=f["use_bias"],
        )
        config = xLSTMLMConfig(
            vocab_size=f["vocab_size"],
            embedding_dim=width,
            num_blocks=f["num_blocks"],
            mlstm=mlstm,
            ffn=ffn,
            norm="rmsnorm",
            norm_eps=f["norm_eps"],
            norm_bias=f["use_bias"],
            add_out_norm=True,
            tie_embeddings=tie_embeddings,
            logit_soft_cap=hf.get("output_logit_soft_cap", 30.0),
            compute_dtype=dtype,
            param_dtype=dtype,
        )
    except ValueError as err:
        raise HFConfigError(f"{source}: {err}") from None
    if kernel is None:
        return config
    # the caller's argument, not the file's: its error is not prefixed with the file
    return dataclasses.replace(config, mlstm=dataclasses.replace(config.mlstm, kernel=kernel))


def to_hf_config(config: xLSTMLMConfig) -> dict[str, Any]:
    """The HF config dict whose ``xLSTMForCausalLM`` has exactly ``config``'s network; raises
    ``HFConfigError`` naming the field when HF's architecture cannot express it."""
    width, mlstm, ffn = config.embedding_dim, config.mlstm, config.ffn
    _expressible(not config.slstm_at, "slstm_at", "HF's xLSTMForCausalLM has mLSTM blocks only")
    _expressible(mlstm.variant == "xlstm7b", "mlstm.variant", "only 'xlstm7b' exists in HF")
    _expressible(config.norm == "rmsnorm", "norm", "HF's block norms are RMSNorms")
    _expressible(config.add_out_norm, "add_out_norm", "HF always applies the output norm")
    _expressible(ffn.in_mlstm_blocks, "ffn.in_mlstm_blocks", "every HF block has an FFN")
    _expressible(
        mlstm.use_bias == ffn.use_bias == config.norm_bias,
        "mlstm.use_bias",
        "HF has one use_bias for projections, FFN and norms (set mlstm.use_bias = ffn.use_bias = norm_bias)",
    )
    _expressible(mlstm.norm_eps == config.norm_eps, "mlstm.norm_eps", "HF uses one norm_eps for all norms")
    for name, cap in (("mlstm.gate_soft_cap", mlstm.gate_soft_cap), ("logit_soft_cap", config.logit_soft_cap)):
        _expressible(cap is not None, name, "HF's config needs a number")
    return {
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURE],
        "vocab_size": config.vocab_size,
        "hidden_size": width,
        "embedding_dim": width,
        "num_blocks": config.num_blocks,
        "num_hidden_layers": config.num_blocks,
        "num_heads": mlstm.num_heads,
        "use_bias": mlstm.use_bias,
        "norm_eps": config.norm_eps,
        "eps": mlstm.eps,
        "qk_dim_factor": _factor(width, mlstm.qk_dim(width), lambda x: int(x), "mlstm.qk_dim_factor"),
        "v_dim_factor": _factor(width, mlstm.v_dim(width), lambda x: int(x), "mlstm.v_dim_factor"),
        "ffn_proj_factor": _factor(
            width,
            ffn.hidden_dim(width),
            lambda x: hf_ffn_width(x, ffn.round_up_to),
            "ffn.proj_factor",
            preferred=ffn.proj_factor,
        ),
        "ffn_round_up_to_multiple_of": ffn.round_up_to,
        "gate_soft_cap": mlstm.gate_soft_cap,
        "output_logit_soft_cap": config.logit_soft_cap,
        "weight_mode": "single",
        "tie_word_embeddings": config.tie_embeddings,
        "add_out_norm": True,
        "dtype": config.param_dtype,
    }


def _expressible(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise HFConfigError(f"cannot export to HF xLSTMForCausalLM: xLSTMLMConfig.{field}: {why}")


def _factor(width: int, dim: int, hf_rule, field: str, preferred: float | None = None) -> float:
    """A factor f with ``hf_rule(width * f) == dim``: ``preferred`` if it works, else dim / width nudged
    by a few ulps (float products like 100 * 0.29 = 28.999... truncate one lower)."""
    candidates = [] if preferred is None else [preferred]
    f = dim / width
    for _ in range(4):
        candidates.append(f)
        f = math.nextafter(f, math.inf)
    for f in candidates:
        if hf_rule(width * f) == dim:
            return f
    raise HFConfigError(
        f"cannot export to HF xLSTMForCausalLM: xLSTMLMConfig.{field}: no factor gives width "
        f"{dim} from {width} under HF's rounding"
    )


def architecture_differences(a: xLSTMLMConfig, b: xLSTMLMConfig) -> list[str]:
    """Dotted fields where two configs build different networks (ignores kernels, chunking, dtypes,
    remat / scan, init-only fields, the factors behind equal widths, and the sLSTM section when
    neither has sLSTM blocks)."""
    ignored = {
        "kernel",
        "step_kernel",
        "chunk_size",
        "compute_dtype",
        "param_dtype",
        "remat",
        "remat_policy",
        "scan_layers",
        "igate_bias_init",
        "fgate_bias_min",
        "fgate_bias_max",
        "dim_round_to",
        "width_rounding",
        "round_up_to",
        "qk_dim_factor",
        "v_dim_factor",
    }
    if not (a.slstm_at or b.slstm_at):
        ignored.add("slstm")
    if a.mlstm.variant == b.mlstm.variant == "xlstm7b":
        ignored.add("proj_factor")  # the paper variant's inner width factor; the FFN's is in its width

    def widths(c: xLSTMLMConfig) -> dict:
        d, mlstm = c.embedding_dim, c.mlstm
        return {"mlstm.qk_dim": mlstm.qk_dim(d), "mlstm.v_dim": mlstm.v_dim(d), "ffn.hidden_dim": c.ffn.hidden_dim(d)}

    def flat(c, prefix=""):
        out = {}
        for field in dataclasses.fields(c):
            value = getattr(c, field.name)
            if field.name in ignored:
                continue
            if dataclasses.is_dataclass(value):
                out.update(flat(value, f"{prefix}{field.name}."))
            else:
                out[prefix + field.name] = value
        return out

    fa, fb = {**flat(a), **widths(a)}, {**flat(b), **widths(b)}
    return [f"{k}: {fa[k]!r} vs {fb[k]!r}" for k in fa if fa[k] != fb[k]]
