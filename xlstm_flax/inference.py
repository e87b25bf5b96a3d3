"""Inference from a trained run: the model of a run directory with its checkpointed weights, and text
sampled from a prompt (both used by ``xlstm-flax generate`` and the end-of-run sample).

    model, config, step = load_trained_model("runs/tiny")
    text = sample_text(model, make_tokenizer(config.data), "def ", 200, temperature=0.8)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import distributed
from .config import load_config
from .sampling import generate
from .train.checkpoint import CHECKPOINT_DIR, Checkpointer
from .train.recipe import CONFIG_FILE, RunConfig
from .train.state import init_train_state

if TYPE_CHECKING:
    from .model import xLSTMLMModel
    from .train.data import Tokenizer

logger = logging.getLogger(__name__)


def load_trained_model(run_dir: str | Path, step: int | None = None) -> tuple[xLSTMLMModel, RunConfig, int]:
    """The model of a run directory with the weights of its newest checkpoint that restores (a warning
    names each newer one skipped and why), or of checkpoint ``step``; returns ``(model, config, step)``.
    Reads only."""
    config = load_run_config(run_dir)
    graphdef, rest, state = init_train_state(config, distributed.data_mesh())
    checkpointer = Checkpointer(Path(run_dir) / CHECKPOINT_DIR, config.checkpoint.keep, read_only=True)
    try:
        if step is None:
            state, _, step, skipped = checkpointer.restore_newest(state)
            for checkpoint in skipped:
                logger.warning("skipped %s; using step %d", checkpoint, step)
        else:
            state, _, step = checkpointer.restore(state, step)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, state["params"], rest), config, step


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config saved in a run directory (FileNotFoundError when ``run_dir`` holds none)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}")
    return load_config(path, RunConfig)


def sample_text(model: xLSTMLMModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, *,
                seed: int = 0, temperature: float = 1.0, top_k: int | None = None) -> str:
    """Prompt + ``max_new_tokens`` sampled tokens, decoded (invalid UTF-8 replaced); an empty prompt
    starts from the EOS token."""
    ids = tokenizer.encode(prompt.encode())
    ids = jnp.asarray(ids if len(ids) else [tokenizer.eos_id], dtype=jnp.int32)[None]
    tokens = generate(model, ids, max_new_tokens, key=jax.random.key(seed), temperature=temperature,
                      top_k=top_k)
    return tokenizer.decode(np.asarray(tokens[0]))
