"""Configuration of the whole xLSTM language model (:class:`xLSTMLMConfig`), validated field by field.

Used by the blocks (``xlstm_flax.blocks``) and the model (``xlstm_flax.model``); the YAML loader in
``xlstm_flax.config`` builds it from a recipe's ``model`` section.
"""

import dataclasses

import jax
import jax.numpy as jnp

from xlstm_flax.config import check_field_types
from xlstm_flax.kernels.common import KERNEL_RESIDUALS

from .layers.config import FFNConfig, mLSTMLayerConfig, runnable_kernel, runnable_slstm_kernel, sLSTMLayerConfig
from .layers.norms import NORM_KINDS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# What a rematerialised block saves for its backward (``jax.checkpoint`` policies): "full" only its inputs
# (everything recomputed), "save_matmuls" also the outputs of its matmuls without batch dimensions (the
# nnx.Linear projections) and the Triton mLSTM / sLSTM kernels' residuals (their forward does not run again);
# norms, activations, the head-wise projections' einsums and the pure-JAX kernels are recomputed.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_matmuls": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(KERNEL_RESIDUALS),
    ),
}


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"xLSTMLMConfig.{field}: {message}")


@dataclasses.dataclass(frozen=True)
class xLSTMLMConfig:
    """The whole model. Blocks are mLSTM blocks except at the indices in ``slstm_at``."""

    vocab_size: int = 50304
    embedding_dim: int = 768
    num_blocks: int = 12
    slstm_at: tuple[int, ...] = ()
    mlstm: mLSTMLayerConfig = dataclasses.field(default_factory=mLSTMLayerConfig)
    slstm: sLSTMLayerConfig = dataclasses.field(default_factory=sLSTMLayerConfig)
    ffn: FFNConfig = dataclasses.field(default_factory=FFNConfig)
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm" (block and output norms)
    norm_eps: float = 1e-6
    norm_bias: bool = False  # additive bias in the block norms (HF's use_bias; never in the output norm)
    add_out_norm: bool = True
    tie_embeddings: bool = False
    logit_soft_cap: float | None = 30.0
    compute_dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each block in the backward pass
    remat_policy: str = "full"  # what a rematerialised block keeps for its backward (REMAT_POLICIES); needs remat
    scan_layers: bool = False  # stack identical blocks and run them with nnx.scan

    def __post_init__(self):
        check_field_types(self)
        for name in ("vocab_size", "embedding_dim", "num_blocks"):
            _require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        bad = [i for i in self.slstm_at if not 0 <= i < self.num_blocks]
        _require(not bad, "slstm_at", f"indices {bad} out of range for num_blocks={self.num_blocks}")
        _require(len(set(self.slstm_at)) == len(self.slstm_at), "slstm_at", f"has repeated indices: {self.slstm_at}")
        _require(self.norm in NORM_KINDS, "norm", f"must be one of {NORM_KINDS}, got {self.norm!r}")
        _require(self.norm_eps >= 0, "norm_eps", f"must be >= 0, got {self.norm_eps}")
        _require(
            self.logit_soft_cap is None or self.logit_soft_cap > 0,
            "logit_soft_cap",
            f"must be > 0 or null, got {self.logit_soft_cap}",
        )
        _require(
            self.remat_policy in REMAT_POLICIES,
            "remat_policy",
            f"must be one of {tuple(REMAT_POLICIES)}, got {self.remat_policy!r}",
        )
        _require(
            self.remat or self.remat_policy == "full",
            "remat_policy",
            f"{self.remat_policy!r} has no effect without remat: true; set remat: true or leave remat_policy out",
        )
        for name in ("compute_dtype", "param_dtype"):
            _require(
                getattr(self, name) in DTYPES, name, f"must be one of {tuple(DTYPES)}, got {getattr(self, name)!r}"
            )
        _require(
            not (self.scan_layers and 0 < len(self.slstm_at) < self.num_blocks),
            "scan_layers",
            "needs identical blocks, but slstm_at mixes sLSTM and mLSTM blocks; set "
            "scan_layers: false or make slstm_at empty",
        )
        if len(self.slstm_at) < self.num_blocks:
            self.mlstm.check_width(self.embedding_dim, "xLSTMLMConfig")
        if self.slstm_at:
            self.slstm.check_width(self.embedding_dim, "xLSTMLMConfig")

    def block_kinds(self) -> tuple[str, ...]:
        """ "mlstm" or "slstm" for each block position."""
        return tuple("slstm" if i in self.slstm_at else "mlstm" for i in range(self.num_blocks))

    @property
    def jnp_compute_dtype(self):
        return DTYPES[self.compute_dtype]

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    def resolved_kernel(self) -> str | None:
        """The mLSTM sequence kernel this model runs on this machine (``mlstm.kernel`` with "auto"
        resolved), or None without mLSTM blocks; raises ValueError when the named kernel cannot run here."""
        return self._runnable("mlstm", runnable_kernel)

    def resolved_slstm_kernel(self) -> str | None:
        """:meth:`resolved_kernel` for ``slstm.kernel`` (None without sLSTM blocks)."""
        return self._runnable("slstm", runnable_slstm_kernel)

    def _runnable(self, kind: str, runnable) -> str | None:
        if kind not in self.block_kinds():
            return None
        try:
            return runnable(getattr(self, kind).kernel)
        except ValueError as err:
            raise ValueError(f"{kind}.kernel: {err}") from None
