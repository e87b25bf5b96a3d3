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


def check_init_source(source: str | Path, model_config: xLSTMLMConfig) -> str:
    """The kind ("hf" or "run") of a ``train.init_from`` directory whose network is ``model_config``'s, else
    ``ConfigError`` naming what differs (checked from its config alone, before a run loads anything)."""
    source = Path(source)
    where = f"train.init_from={str(source)!r}"
    if (source / CONFIG_FILE).is_file():
        kind = "hf"
        with SafetensorsDir(source) as ckpt:
            network = from_hf_config(
                ckpt.config, source=str(source / CONFIG_FILE), tie_embeddings=tied_in_checkpoint(ckpt)
            )
    elif (source / RUN_CONFIG_FILE).is_file():
        from ..inference import load_run_config

        kind, network = "run", load_run_config(source).model
    else:
        raise ConfigError(
            f"{where}: neither an HF checkpoint directory ({CONFIG_FILE}) nor a run directory ({RUN_CONFIG_FILE})"
        )
    differences = architecture_differences(network, model_config)
    if differences:
        raise ConfigError(
            f"{where}: the checkpoint's network differs from the model section "
            f"(checkpoint vs recipe): {'; '.join(differences)}"
        )
    return kind


def init_params_from(source: str | Path, kind: str, num_blocks: int, params: dict) -> dict:
    """The pure parameter dict ``params`` (placed as training wants it, ``num_blocks`` blocks) refilled from
    ``source``, a directory of ``kind`` that :func:`check_init_source` accepted for this model."""
    source = Path(source)
    shardings = jax.tree.map(lambda x: x.sharding, params)
    if kind == "hf":
        with SafetensorsDir(source) as ckpt:
            skip = {LM_HEAD} if tied_in_checkpoint(ckpt) else set()
            return read_params(ckpt, params, shardings, num_blocks, skip=skip)
    from ..inference import load_trained_model

    model, _, _ = load_trained_model(source)
    return read_params(ModelTensors(model, source), params, shardings, num_blocks)
