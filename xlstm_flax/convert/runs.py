"""Our run directories <-> HF checkpoint directories (the ``xlstm-flax convert`` command), and the
tokenizer of an HF directory for ``xlstm-flax generate --hf``.

An HF checkpoint becomes a run directory holding its ``config.yaml`` (the mapped model, default
training sections) and a step-0 checkpoint with the parameters and a fresh optimiser state, so
``generate --run-dir``, ``train.init_from`` and ``resume`` read it like any run. A run exports its
parameters only (latest or chosen step), plus the run's ``tokenizer.json`` when it used one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flax import nnx

from ..config import save_config
from .hf import load_hf, save_hf
from .safetensors_dir import CONFIG_FILE

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DEFAULT_EOS = "<|endoftext|>"


def hf_to_run(hf_dir: str | Path, run_dir: str | Path, *, dtype: str | None = None) -> Path:
    """Write HF checkpoint ``hf_dir`` as a new run directory ``run_dir`` (refuses an existing one)."""
    from ..train.checkpoint import CHECKPOINT_DIR, Checkpointer
    from ..train.data import DataConfig
    from ..train.optim import make_optimizer
    from ..train.recipe import CONFIG_FILE as RUN_CONFIG_FILE
    from ..train.recipe import RunConfig

    run_dir = Path(run_dir)
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} already exists; choose a new run directory")
    model, config = load_hf(hf_dir, dtype=dtype)
    tokenizer = Path(hf_dir) / TOKENIZER_FILE
    data = (
        DataConfig(tokenizer=str(tokenizer.absolute()), eos_token=hf_eos_token(hf_dir))
        if tokenizer.is_file()
        else DataConfig()
    )
    run = RunConfig(model=config, data=data, run_dir=str(run_dir))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    opt_state = make_optimizer(run.optim, run.train.steps).init(params)
    try:
        save_config(run, run_dir / RUN_CONFIG_FILE)
        checkpointer = Checkpointer(run_dir / CHECKPOINT_DIR, run.checkpoint.keep)
        try:
            checkpointer.save(
                0,
                {"params": params, "opt_state": opt_state},
                {"step": 0, "loss": float("nan"), "converted_from": str(hf_dir)},
            )
        finally:
            checkpointer.close()
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def run_to_hf(
    run_dir: str | Path, hf_dir: str | Path, *, step: int | None = None, dtype: str | None = None
) -> tuple[Path, int]:
    """Export the parameters of run ``run_dir`` (latest or ``step``) as a new HF directory ``hf_dir``;
    returns (``hf_dir``, the step exported)."""
    from ..inference import load_trained_model

    hf_dir = Path(hf_dir)
    if hf_dir.exists():  # checked before the (possibly long) restore
        raise FileExistsError(f"{hf_dir} already exists; choose a new directory for the export")
    model, config, step = load_trained_model(run_dir, step, dtype=dtype)  # cast as read: less memory
    save_hf(model, hf_dir, dtype=dtype)
    if config.data.tokenizer != "bytes":
        shutil.copyfile(config.data.tokenizer, hf_dir / TOKENIZER_FILE)
    return hf_dir, step


def is_hf_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def hf_eos_token(hf_dir: str | Path) -> str:
    """The EOS token string of an HF directory (tokenizer_config.json), else GPT-NeoX's."""
    file = Path(hf_dir) / TOKENIZER_CONFIG_FILE
    if file.is_file():
        eos = json.loads(file.read_text()).get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            return eos
    return DEFAULT_EOS


def hf_tokenizer(hf_dir: str | Path):
    """The ``tokenizer.json`` of an HF directory (needs the optional ``tokenizers``), or None."""
    from ..train.data import HFTokenizer

    file = Path(hf_dir) / TOKENIZER_FILE
    return HFTokenizer(str(file), hf_eos_token(hf_dir)) if file.is_file() else None
