"""Inference from a trained run: the model of a run directory with its checkpointed weights, and text
sampled from a prompt (both used by ``xlstm-flax generate`` and the end-of-run sample).

    model, config, step = load_trained_model("runs/tiny")
    text = sample_text(model, make_tokenizer(config.data), "def ", 200, temperature=0.8)
"""
from __future__ import annotations

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


def load_trained_model(run_dir: str | Path, step: int | None = None) -> tuple[xLSTMLMModel, RunConfig, int]:
    """The model of a run directory with the weights of its latest (or given) checkpoint;
    returns ``(model, config, step)``."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE, RunConfig)
    graphdef, rest, state = init_train_state(config, distributed.data_mesh())
    checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, config.checkpoint.keep)
    try:
        state, _, step = checkpointer.restore(state, step)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, state["params"], rest), config, step


def sample_text(model: xLSTMLMModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, *,
                seed: int = 0, temperature: float = 1.0, top_k: int | None = None) -> str:
    """Prompt + ``max_new_tokens`` sampled tokens, decoded (invalid UTF-8 replaced); an empty prompt
    starts from the EOS token."""
    ids = tokenizer.encode(prompt.encode())
    ids = jnp.asarray(ids if len(ids) else [tokenizer.eos_id], dtype=jnp.int32)[None]
    tokens = generate(model, ids, max_new_tokens, key=jax.random.key(seed), temperature=temperature,
                      top_k=top_k)
    return tokenizer.decode(np.asarray(tokens[0]))
