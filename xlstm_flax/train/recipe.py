"""A training recipe: every config section of a run, loaded from YAML with dotted overrides.

```yaml
model: {preset: tiny, num_blocks: 2}   # a preset name plus field overrides
data: {path: stdlib}
optim: {lr: 2.0e-3, warmup_steps: 50}
train: {steps: 600, batch_size: 16, seq_len: 128}
checkpoint: {every: 200, keep: 2}
run_dir: runs/tiny
```
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..config import load_config
from ..distributed import DistributedConfig
from ..kernels import AUTO, resolve_kernel_name
from ..kernels.slstm import resolve_slstm_kernel_name
from ..layers.config import runnable_kernel, runnable_slstm_kernel
from ..model import xLSTMLMConfig
from ..presets import get_preset
from .checkpoint import CheckpointConfig
from .data import DataConfig
from .optim import OptimConfig

CONFIG_FILE = "config.yaml"  # the resolved recipe, saved in the run directory
logger = logging.getLogger(__name__)
DEFAULT_COMPILE_CACHE = "~/.cache/xlstm_flax/jax"  # shared by runs; survives an overwritten run directory
MAX_SEED = 2**63  # seeds are non-negative 64-bit ints (numpy's and JAX's generators)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Batch geometry, run length, evaluation, logging and the end-of-run sample."""

    steps: int = 1000  # optimiser updates
    batch_size: int = 16  # sequences per micro-batch (split over the devices)
    seq_len: int = 256  # tokens per sequence
    grad_accum_steps: int = 1  # micro-batches per update
    eval_every: int = 100  # validate every N steps (and at the end)
    eval_batches: int = 8  # fixed validation batches per evaluation
    log_every: int = 10  # JSONL / TensorBoard train records every N steps
    sample_tokens: int = 200  # tokens generated at the end (0: no sample)
    sample_prompt: str = "def "
    sample_temperature: float = 0.8
    sample_top_k: int | None = None
    tensorboard: bool = True  # write TensorBoard events if tensorboardX is installed
    init_from: str | None = None  # HF xLSTMForCausalLM dir or run dir: its parameters, fresh optimiser, step 0
    loss_chunk: int | None = None  # cross-entropy over this many positions at a time (null/0: all at once)
    compile_cache: str | bool = DEFAULT_COMPILE_CACHE  # JAX compilation cache: a directory, run, or off (false)
    profile_steps: tuple[int, ...] | None = None  # [first, last]: jax.profiler trace of those steps, <run_dir>/profile
    peak_tflops: float | None = None  # the devices' peak TFLOP/s for `mfu` (null: known GPUs only)

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "grad_accum_steps", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_tokens < 0:
            raise ValueError(f"sample_tokens must be >= 0, got {self.sample_tokens}")
        if self.sample_temperature <= 0:
            raise ValueError(f"sample_temperature must be > 0, got {self.sample_temperature}")
        if self.sample_top_k is not None and self.sample_top_k < 1:
            raise ValueError(f"sample_top_k must be >= 1 or null, got {self.sample_top_k}")
        if self.loss_chunk is not None and self.loss_chunk < 0:
            raise ValueError(f"loss_chunk must be >= 0 or null, got {self.loss_chunk}")
        if self.compile_cache is True or self.compile_cache == "":
            raise ValueError(f"compile_cache must be a directory, run, or off (false), got {self.compile_cache!r}")
        if self.profile_steps is not None and not (
            len(self.profile_steps) == 2 and 1 <= self.profile_steps[0] <= self.profile_steps[1]
        ):
            got = list(self.profile_steps)
            raise ValueError(f"profile_steps must be [first, last] with 1 <= first <= last, got {got}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be > 0 or null, got {self.peak_tflops}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum_steps * self.seq_len


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole run. ``resume``: continue the run in ``run_dir`` from its newest checkpoint that restores
    (a fresh start if there is none), with the saved config (only the changes ``train.resume`` allows);
    ``overwrite``: replace an earlier run in ``run_dir`` once this one has started (``train.run_dir``).
    Without either, a ``run_dir`` that holds a run is refused."""

    model: xLSTMLMConfig
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    run_dir: str = "runs/default"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self):
        if self.optim.warmup_steps > self.train.steps:
            raise ValueError(f"optim.warmup_steps={self.optim.warmup_steps} exceeds train.steps={self.train.steps}")
        if self.resume and self.overwrite:
            raise ValueError(
                "resume=true (continue the run in run_dir) and overwrite=true (replace it) "
                "contradict each other: set one of them to false"
            )
        if not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        top_k = self.train.sample_top_k
        if top_k is not None and top_k > self.model.vocab_size:
            raise ValueError(f"train.sample_top_k={top_k} exceeds model.vocab_size={self.model.vocab_size}")
        try:  # the kernels must run here: fail before any data is read
            self.model.resolved_kernel()
            self.model.resolved_slstm_kernel()
        except ValueError as err:
            raise ValueError(f"model.{err}") from None


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a recipe YAML; ``model.preset`` names a model preset, other model keys override it; ``overrides``
    a list of ``"dotted.key=value"`` strings."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    return load_config(path, RunConfig, overrides, presets={xLSTMLMConfig: get_preset})


def load_saved_run_config(path: str | Path) -> tuple[RunConfig, dict[str, str]]:
    """(the config a run saved in its ``config.yaml`` at ``path``, ``{"model.<kind>.kernel": name}`` of the
    kernels it names that cannot run on this machine). Those (a Triton kernel without a GPU: the run was
    trained elsewhere) are loaded as "auto" instead, with a warning each; the kernels change only speed."""
    model = _saved_model_section(Path(path))
    replaced = _unrunnable_kernels(model)
    for key, name in replaced.items():
        logger.warning("%s: %s %r cannot run here; loading the run with %r", path, key, name, AUTO)
    overrides = [f"{key}={AUTO}" for key in replaced]
    if model.get("remat") is False and model.get("remat_policy", "full") != "full":
        # saved before a remat_policy without remat became an error; it had no effect in that run
        logger.warning(
            "%s: model.remat_policy %r without remat had no effect; loading it as 'full'", path, model["remat_policy"]
        )
        overrides.append("model.remat_policy=full")
    return load_config(path, RunConfig, overrides), replaced


def _saved_model_section(path: Path) -> dict:
    """The ``model`` mapping of the saved config at ``path`` ({} when unreadable: ``load_config`` reports it)."""
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    model = saved.get("model") if isinstance(saved, dict) else None
    return model if isinstance(model, dict) else {}


def _unrunnable_kernels(model: dict) -> dict[str, str]:
    """``{"model.<kind>.kernel": name}`` for each kernel of a saved ``model`` section that names a known
    kernel this machine cannot run, for a block kind the model has; anything else is left to ``load_config``."""
    slstm_at = model.get("slstm_at") if isinstance(model.get("slstm_at"), list) else []
    num_blocks = model.get("num_blocks")
    num_blocks = num_blocks if isinstance(num_blocks, int) else xLSTMLMConfig.num_blocks
    present = {"mlstm": num_blocks > len(slstm_at), "slstm": bool(slstm_at)}
    found = {}
    for kind, resolve, runnable in (
        ("mlstm", resolve_kernel_name, runnable_kernel),
        ("slstm", resolve_slstm_kernel_name, runnable_slstm_kernel),
    ):
        layer = model.get(kind)
        name = layer.get("kernel") if isinstance(layer, dict) else None
        if isinstance(name, str) and present[kind] and _cannot_run_here(name, resolve, runnable):
            found[f"model.{kind}.kernel"] = name
    return found


def _cannot_run_here(name: str, resolve, runnable) -> bool:
    """True for a registered kernel ``name`` that this machine cannot run (False for an unknown name)."""
    try:
        resolve(name)
    except ValueError:
        return False
    try:
        runnable(name)
    except ValueError:
        return True
    return False
