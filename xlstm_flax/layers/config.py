"""Config dataclasses of the sequence-mixing layers and the feed-forward layer.

Fields use only simple types (int, float, bool, str, ``X | None``) so that the YAML loader in
``xlstm_flax.config`` can build and validate them. Each ``__post_init__`` rejects impossible values
with a message naming the field; checks that need the model width live in ``check_width``.
"""

import dataclasses
import math

from xlstm_flax.config import check_field_types
from xlstm_flax.kernels import AUTO, registry, resolve_kernel_name
from xlstm_flax.kernels import slstm as slstm_kernels
from xlstm_flax.kernels.slstm import resolve_slstm_kernel_name

MLSTM_VARIANTS = ("xlstm7b", "paper")
# How a width ``factor * D`` becomes an integer: "up" rounds up to the configured multiple (this
# library's presets); "hf" reproduces HF transformers' xLSTMForCausalLM, whose checkpoints carry
# those widths (see ``hf_ffn_width`` and ``mLSTMLayerConfig.qk_dim``).
WIDTH_ROUNDINGS = ("up", "hf")


def round_up(x: float, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= x."""
    return math.ceil(x / multiple) * multiple


def hf_ffn_width(x: float, multiple: int) -> int:
    """HF's FFN width rule ``floor((x + multiple - 1) / multiple) * multiple`` on the float ``x``: it
    rounds *down* when x lies less than 1 above a multiple (96 * 0.667 = 64.03 -> 64, not 128)."""
    return int(((x + multiple - 1) // multiple) * multiple)


def _check_rounding(value: str, owner: str) -> None:
    _require(value in WIDTH_ROUNDINGS, owner, "width_rounding", f"must be one of {WIDTH_ROUNDINGS}, got {value!r}")


def _require(ok: bool, owner: str, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{owner}.{field}: {message}")


def _check_bias_range(cfg, owner: str) -> None:
    _require(
        cfg.fgate_bias_min <= cfg.fgate_bias_max,
        owner,
        "fgate_bias_min",
        f"must be <= fgate_bias_max, got {cfg.fgate_bias_min} > {cfg.fgate_bias_max}",
    )


def _check_kernel_name(name: str, field: str, step: bool) -> None:
    owner = "mLSTMLayerConfig"
    if name == AUTO:
        _require(not step, owner, field, "'auto' only picks a sequence kernel; name a step kernel")
        return
    try:
        resolve_kernel_name(name)
    except ValueError as err:
        raise ValueError(f"{owner}.{field}: {err}") from None
    is_step = name.startswith("step--")
    kind = "a step kernel ('step--...')" if step else "a sequence kernel (not 'step--...')"
    _require(is_step == step, owner, field, f"must name {kind}, got {name!r}")


def runnable_kernel(name: str) -> str:
    """``name`` with "auto" resolved; raises ValueError when it names the Triton kernel on a machine
    without a CUDA GPU visible to JAX and jax-triton (the name itself is checked by the config)."""
    return _runnable(name, resolve_kernel_name(name), registry.TRITON_KERNEL, registry.FALLBACK_KERNEL)


def runnable_slstm_kernel(name: str) -> str:
    """:func:`runnable_kernel` for the sLSTM kernels (``xlstm_flax.kernels.slstm``)."""
    return _runnable(name, resolve_slstm_kernel_name(name), slstm_kernels.TRITON_KERNEL, slstm_kernels.FALLBACK_KERNEL)


def _runnable(name: str, resolved: str, triton_kernel: str, fallback: str) -> str:
    """``resolved`` (``name`` with "auto" resolved), or ValueError when it is ``triton_kernel`` and this machine
    cannot run it; the message suggests "auto" and ``fallback``."""
    if resolved == triton_kernel and not registry.triton_usable():
        raise ValueError(
            f"{name!r} needs a CUDA GPU visible to JAX and the jax-triton package, and this "
            f"machine lacks one of them; use 'auto' (picks it where it runs) or {fallback!r}"
        )
    return resolved


@dataclasses.dataclass(frozen=True)
class mLSTMLayerConfig:
    """mLSTM layer: ``variant`` "xlstm7b" (the xLSTM-7B / HF ``xLSTMForCausalLM`` layer) or "paper"
    (the xLSTM-paper mLSTM block with up-projection, conv, headwise q/k/v, skip and z-gate)."""

    variant: str = "xlstm7b"
    num_heads: int = 4
    kernel: str = AUTO  # sequence kernel of xlstm_flax.kernels; swapping it changes only speed
    step_kernel: str = "step--jax"
    chunk_size: int | None = None  # sequence-kernel chunk; None: the kernel's own tuned default
    eps: float = 1e-6  # kernel denominator eps
    norm_eps: float = 1e-6  # per-head norm eps
    use_bias: bool = False  # biases of the q/k/v/o/out projections and (xlstm7b) the per-head norm; gates have one
    igate_bias_init: float = -10.0
    fgate_bias_min: float = 3.0  # forget-gate biases spread linearly over [min, max] across heads
    fgate_bias_max: float = 6.0
    dim_round_to: int = 64  # qk/v (xlstm7b) and inner (paper) widths are rounded up to this
    width_rounding: str = "up"  # xlstm7b qk/v widths: "up" (to dim_round_to) or "hf" (int(D * factor))
    # xlstm7b variant
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    gate_soft_cap: float | None = 15.0
    # paper variant
    proj_factor: float = 2.0
    conv_kernel_size: int = 4
    qkv_proj_blocksize: int = 4

    def __post_init__(self):
        check_field_types(self)
        owner = "mLSTMLayerConfig"
        _require(
            self.variant in MLSTM_VARIANTS, owner, "variant", f"must be one of {MLSTM_VARIANTS}, got {self.variant!r}"
        )
        for name in ("num_heads", "dim_round_to", "conv_kernel_size", "qkv_proj_blocksize"):
            _require(getattr(self, name) >= 1, owner, name, f"must be >= 1, got {getattr(self, name)}")
        _require(
            self.chunk_size is None or self.chunk_size >= 1,
            owner,
            "chunk_size",
            f"must be >= 1 or null, got {self.chunk_size}",
        )
        for name in ("qk_dim_factor", "v_dim_factor", "proj_factor"):
            _require(getattr(self, name) > 0, owner, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("eps", "norm_eps"):
            _require(getattr(self, name) >= 0, owner, name, f"must be >= 0, got {getattr(self, name)}")
        _require(
            self.gate_soft_cap is None or self.gate_soft_cap > 0,
            owner,
            "gate_soft_cap",
            f"must be > 0 or null, got {self.gate_soft_cap}",
        )
        _check_bias_range(self, owner)
        _check_rounding(self.width_rounding, owner)
        _check_kernel_name(self.kernel, "kernel", step=False)
        _check_kernel_name(self.step_kernel, "step_kernel", step=True)

    def qk_dim(self, width: int) -> int:
        return self._xlstm7b_dim(width * self.qk_dim_factor)

    def v_dim(self, width: int) -> int:
        return self._xlstm7b_dim(width * self.v_dim_factor)

    def _xlstm7b_dim(self, x: float) -> int:
        return int(x) if self.width_rounding == "hf" else round_up(x, self.dim_round_to)

    def inner_dim(self, width: int) -> int:
        return round_up(width * self.proj_factor, self.dim_round_to)

    def check_width(self, width: int, owner: str) -> None:
        """Raises if the layer's widths for model width ``width`` do not split into heads."""
        if self.variant == "xlstm7b":
            dims = {"qk_dim_factor": self.qk_dim(width), "v_dim_factor": self.v_dim(width)}
        else:
            inner = self.inner_dim(width)
            _require(
                inner % self.qkv_proj_blocksize == 0,
                owner,
                "mlstm.qkv_proj_blocksize",
                f"inner width {inner} is not divisible by qkv_proj_blocksize={self.qkv_proj_blocksize}",
            )
            dims = {"proj_factor": inner}
        for field, dim in dims.items():
            _require(
                dim % self.num_heads == 0,
                owner,
                "mlstm.num_heads",
                f"width {dim} (from embedding_dim={width}, mlstm.{field}) is not divisible "
                f"by num_heads={self.num_heads}",
            )


@dataclasses.dataclass(frozen=True)
class sLSTMLayerConfig:
    """sLSTM layer: scalar memory, exponential gating, block-diagonal recurrent weights per head."""

    num_heads: int = 4
    kernel: str = AUTO  # sLSTM kernel of xlstm_flax.kernels.slstm; swapping it changes only speed
    conv_kernel_size: int = 4  # causal conv feeding the i and f gates; 0 disables it
    igate_bias_init: float = 0.0
    fgate_bias_min: float = 3.0  # forget-gate biases spread over [min, max] within each head
    fgate_bias_max: float = 6.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        check_field_types(self)
        owner = "sLSTMLayerConfig"
        _require(self.num_heads >= 1, owner, "num_heads", f"must be >= 1, got {self.num_heads}")
        _require(
            self.conv_kernel_size >= 0,
            owner,
            "conv_kernel_size",
            f"must be >= 0 (0 disables the conv), got {self.conv_kernel_size}",
        )
        _require(self.norm_eps >= 0, owner, "norm_eps", f"must be >= 0, got {self.norm_eps}")
        _check_bias_range(self, owner)
        if self.kernel != AUTO:
            try:
                resolve_slstm_kernel_name(self.kernel)
            except ValueError as err:
                raise ValueError(f"{owner}.kernel: {err}") from None

    def check_width(self, width: int, owner: str) -> None:
        _require(
            width % self.num_heads == 0,
            owner,
            "slstm.num_heads",
            f"embedding_dim={width} is not divisible by num_heads={self.num_heads}",
        )


@dataclasses.dataclass(frozen=True)
class FFNConfig:
    """Gated feed-forward (SwiGLU) after the sequence-mixing layer of a block."""

    proj_factor: float = 2.667
    round_up_to: int = 64
    width_rounding: str = "up"  # "up": smallest multiple >= D * proj_factor; "hf": see hf_ffn_width
    use_bias: bool = False
    in_mlstm_blocks: bool = True
    in_slstm_blocks: bool = True

    def __post_init__(self):
        check_field_types(self)
        _require(self.proj_factor > 0, "FFNConfig", "proj_factor", f"must be > 0, got {self.proj_factor}")
        _require(self.round_up_to >= 1, "FFNConfig", "round_up_to", f"must be >= 1, got {self.round_up_to}")
        _check_rounding(self.width_rounding, "FFNConfig")

    def hidden_dim(self, width: int) -> int:
        rounding = hf_ffn_width if self.width_rounding == "hf" else round_up
        return rounding(width * self.proj_factor, self.round_up_to)
