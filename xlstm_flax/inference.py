"""Inference from a trained run: the model of a run directory with its checkpointed weights, and text
sampled from a prompt (both used by ``xlstm-flax generate`` and the end-of-run sample).

    model, config, step = load_trained_model("runs/tiny")
    text = sample_text(model, make_tokenizer(config.data), "def ", 200, temperature=0.8)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
from flax import nnx

from . import distributed
from .config import is_int
from .sampling import generate
from .train.checkpoint import CHECKPOINT_DIR, Checkpointer
from .train.recipe import CONFIG_FILE, RunConfig, load_saved_run_config
from .train.run_dir import ASIDE_DIR
from .train.state import params_target

if TYPE_CHECKING:
    from .model import xLSTMLMModel
    from .train.data import Tokenizer

logger = logging.getLogger(__name__)


def load_trained_model(
    run_dir: str | Path, step: int | None = None, config: RunConfig | None = None, dtype: str | None = None
) -> tuple[xLSTMLMModel, RunConfig, int]:
    """The model of a run directory with the weights of its newest checkpoint that restores (a warning
    names each newer one skipped and why), or of checkpoint ``step``; returns ``(model, config, step)``.
    Reads the parameters only, never the optimiser state. ``config``: the run's :func:`load_run_config`,
    when the caller has it already. ``dtype`` ("float32", "bfloat16", "float16"): the parameters are cast
    to it as they are read and the model computes in it (the returned config says so); default: the
    run's. Reads only."""
    config = config or load_run_config(run_dir)
    if dtype is not None:
        model = dataclasses.replace(config.model, compute_dtype=dtype, param_dtype=dtype)
        config = dataclasses.replace(config, model=model)
    checkpointer = Checkpointer(Path(run_dir) / CHECKPOINT_DIR, config.checkpoint.keep, read_only=True)
    try:
        _existing_step(checkpointer, step, Path(run_dir))  # before the model is built
        mesh = distributed.make_mesh(distributed.DistributedConfig(), jax.local_devices()[:1])
        graphdef, rest, state = params_target(config, mesh)
        if step is None:
            state, _, step, skipped = checkpointer.restore_newest(state)
            for checkpoint in skipped:
                logger.warning("skipped %s; using step %d", checkpoint, step)
        else:
            state, _, step = checkpointer.restore(state, step)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, state["params"], rest), config, step


def _existing_step(checkpointer: Checkpointer, step: int | None, run_dir: Path) -> None:
    """:meth:`Checkpointer.existing_step`, whose error also says when an interrupted overwrite=true start
    left the run that was here aside (the next ``train`` start in ``run_dir`` settles it)."""
    try:
        checkpointer.existing_step(step)
    except FileNotFoundError as err:
        if (run_dir / ASIDE_DIR).is_dir():
            raise FileNotFoundError(
                f"{err}; an interrupted overwrite=true start left the previous run in {run_dir / ASIDE_DIR}: "
                "the next train start in this run_dir moves it back (or keeps the new run if it has a checkpoint)"
            ) from None
        raise


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config saved in a run directory (FileNotFoundError when ``run_dir`` holds none); a kernel it
    names that cannot run here is loaded as "auto" (``load_saved_run_config``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}")
    return load_saved_run_config(path)[0]


def sample_text(
    model: xLSTMLMModel,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """Prompt + up to ``max_new_tokens`` sampled tokens (stopping after an EOS), decoded (invalid UTF-8
    replaced); an empty prompt starts from the EOS token. ``on_text`` receives the new text piece by
    piece as it is produced."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not is_int(seed):
        raise TypeError(f"seed must be an int, got {seed!r}")
    ids = tokenizer.encode(prompt.encode())
    ids = np.asarray(ids if len(ids) else [tokenizer.eos_id], dtype=np.int32)
    stream = None if on_text is None else _TextStream(tokenizer, on_text, ids.tolist())
    out = generate(
        model,
        ids[None],
        max_new_tokens,
        key=jax.random.key(seed),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=tokenizer.eos_id,
        callback=stream,
    )
    new = np.asarray(out.tokens[0, : int(out.lengths[0])])
    if stream is not None:
        stream.flush()
    return tokenizer.decode(np.concatenate([ids, new]))


class _TextStream:
    """A ``generate`` callback for one row: decodes the tokens so far and passes on the new text, holding
    back an incomplete UTF-8 character (shown as U+FFFD) until its next bytes arrive."""

    def __init__(self, tokenizer: Tokenizer, on_text: Callable[[str], None], prompt_ids: list[int]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids = list(prompt_ids)  # decoded with the prompt, so word-level tokenizers space the words
        self.sent = tokenizer.decode(self.ids)

    def __call__(self, tokens: np.ndarray, active: np.ndarray) -> None:
        if active[0]:
            self.ids.append(int(tokens[0]))
            self._send(final=False)

    def flush(self) -> None:
        self._send(final=True)

    def _send(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.sent) and (final or not text.endswith("\ufffd")):
            self.on_text(text[len(self.sent) :])
            self.sent = text
