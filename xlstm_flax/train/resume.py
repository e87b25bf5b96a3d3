"""What a resumed run may change: the saved config decides the training trajectory.

``resume=true`` continues exactly what the run in ``run_dir`` was doing, so the config passed now must
match the run's saved ``config.yaml`` wherever a difference would change the steps still to come: the
model, the data, the optimiser and its schedule, the seed, the batch shape and the run length. Only
these keys may differ (the run directory records each change, see ``xlstm_flax.train.run_dir``):

- logging, evaluation and the end-of-run sample: ``train.log_every``, ``train.eval_every``,
  ``train.eval_batches``, ``train.sample_*``, ``train.tensorboard``, ``train.compile_cache``,
  ``train.profile_steps``, ``train.peak_tflops``;
- checkpoint cadence and retention: ``checkpoint.*``;
- how the same math runs: ``distributed.*`` (the state layout), ``model.mlstm.kernel``,
  ``model.mlstm.chunk_size``, ``model.mlstm.step_kernel``, ``model.slstm.kernel`` (the kernels agree up
  to rounding),
  ``train.loss_chunk`` (the same loss summed in another order),
  ``model.remat``, ``model.remat_policy``;
- ``train.steps``, only under ``optim.decay: constant``. The cosine and linear schedules decay over
  ``train.steps``, so another run length would change the learning rate of every step still to come;
  to train such a run longer, start a new run from its weights instead.

``resume``, ``overwrite`` and ``run_dir`` say how to start, not what to train: they are not compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError, to_dict
from .recipe import RunConfig, load_saved_run_config

ALLOWED_CHANGES = (
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.sample_tokens",
    "train.sample_prompt",
    "train.sample_temperature",
    "train.sample_top_k",
    "train.tensorboard",
    "train.loss_chunk",
    "train.compile_cache",
    "train.profile_steps",
    "train.peak_tflops",
    "checkpoint.",
    "distributed.",  # a trailing dot: every key of the section
    "model.mlstm.kernel",
    "model.mlstm.chunk_size",
    "model.mlstm.step_kernel",
    "model.slstm.kernel",
    "model.remat",
    "model.remat_policy",
)
NOT_COMPARED = ("resume", "overwrite", "run_dir")
STEPS_KEY = "train.steps"


def load_saved_config(path: Path) -> tuple[RunConfig, dict[str, str]]:
    """``load_saved_run_config`` of a run to resume: (its saved config, the kernels loaded as "auto"); a
    ConfigError says why it cannot be used."""
    try:
        return load_saved_run_config(path)
    except ConfigError as err:
        raise ConfigError(f"resume=true, but the run's saved config does not load: {err}") from None


def resume_changes(saved: RunConfig, current: RunConfig, saved_path: Path, replaced: dict[str, str]) -> dict[str, list]:
    """The allowed differences ``{dotted key: [saved value, current value]}`` between the config of the
    run saved at ``saved_path`` and the one passed now; ``replaced``: the saved kernels that ``saved`` holds
    as "auto" (``load_saved_config``), recorded with the names the file gives. A ConfigError lists every
    refused difference."""
    current_flat = _flatten(to_dict(current))
    differences = _differences(_flatten(to_dict(saved)), current_flat)
    differences.update({key: [name, current_flat[key]] for key, name in replaced.items()})
    refused = {key: values for key, values in differences.items() if not _allowed(key, saved)}
    if refused:
        listed = "; ".join(f"{key}: {_show(a)} -> {_show(b)}{_why(key, saved)}" for key, (a, b) in refused.items())
        raise ConfigError(
            f"resume=true, but the config differs from the run saved in {saved_path} where it would change "
            f"the training trajectory: {listed}. Resume with the saved values (e.g. xlstm-flax train "
            f"--config {saved_path} resume=true) or start a new run (another run_dir, or overwrite=true)"
        )
    return differences


def _allowed(key: str, saved: RunConfig) -> bool:
    if key == STEPS_KEY:
        return saved.optim.decay == "constant"
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in ALLOWED_CHANGES)


def _why(key: str, saved: RunConfig) -> str:
    if key == STEPS_KEY:
        return f" (the {saved.optim.decay} learning-rate schedule decays over train.steps)"
    return ""


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list]:
    keys = [k for k in dict.fromkeys([*saved, *current]) if k not in NOT_COMPARED]
    return {k: [saved.get(k), current.get(k)] for k in keys if saved.get(k) != current.get(k)}


def _show(value: Any) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)
