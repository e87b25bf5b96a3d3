"""Start training from pretrained weights (``train.init_from``): parameters only, from an HF
``xLSTMForCausalLM`` directory or one of our run directories; the optimiser and step stay fresh.

Both sources are read through HF tensor names, so a run saved with ``scan_layers`` can seed one
without (and back), and the checkpoint's network must equal the recipe's model section (kernels,
dtypes, remat / scan and init-only fields may differ).
"""

from __future__ import annotations

from pathlib import Path

import jax

from ..config import ConfigError
from ..model_config import xLSTMLMConfig
from .hf import LM_HEAD, ModelTensors, read_params, tied_in_checkpoint
from .hf_config import architecture_differences, from_hf_config
from .safetensors_dir import CONFIG_FILE, SafetensorsDir

RUN_CONFIG_FILE = "config.yaml"


def check_init_source(source: str | Path) -> str:
    """The kind ("hf" or "run") of a usable ``train.init_from`` directory, else ``ConfigError`` (checked before a
    run touches its directory)."""
    source = Path(source)
    if (source / CONFIG_FILE).is_file():
        return "hf"
    if (source / RUN_CONFIG_FILE).is_file():
        return "run"
    raise ConfigError(
        f"train.init_from={str(source)!r}: neither an HF checkpoint directory ({CONFIG_FILE}) "
        f"nor a run directory ({RUN_CONFIG_FILE})"
    )


def init_params_from(source: str | Path, model_config: xLSTMLMConfig, params: dict) -> dict:
    """The pure parameter dict ``params`` (placed as training wants it) refilled from ``source``."""
    kind, source = check_init_source(source), Path(source)
    shardings = jax.tree.map(lambda x: x.sharding, params)
    where = f"train.init_from={str(source)!r}"
    if kind == "hf":
        with SafetensorsDir(source) as ckpt:
            tied = tied_in_checkpoint(ckpt)
            _check_same_network(
                from_hf_config(ckpt.config, source=str(source / CONFIG_FILE), tie_embeddings=tied), model_config, where
            )
            return read_params(ckpt, params, shardings, model_config.num_blocks, skip={LM_HEAD} if tied else set())
    from ..inference import load_trained_model

    model, run_config, _ = load_trained_model(source)
    _check_same_network(run_config.model, model_config, where)
    return read_params(ModelTensors(model, source), params, shardings, model_config.num_blocks)


def _check_same_network(checkpoint: xLSTMLMConfig, recipe: xLSTMLMConfig, where: str) -> None:
    differences = architecture_differences(checkpoint, recipe)
    if differences:
        raise ConfigError(
            f"{where}: the checkpoint's network differs from the model section "
            f"(checkpoint vs recipe): {'; '.join(differences)}"
        )
