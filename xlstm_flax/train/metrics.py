"""Metric logs of a run: JSONL (always), TensorBoard events (if tensorboardX is installed), and a
loss-curve PNG drawn from the JSONL at the end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
    """Append ``{"step": s, "split": "train"|"val", ...}`` records to ``run_dir/metrics.jsonl``
    and mirror them to TensorBoard when ``tensorboardX`` is importable. ``purge_step``: TensorBoard
    drops its events from that step on (a resumed run replays them)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, purge_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._tb = _tensorboard_writer(Path(run_dir) / TENSORBOARD_DIR, purge_step) if tensorboard else None

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        record = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", float(value), step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics JSONL file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def drop_records_after(path: str | Path, step: int) -> None:
    """Cut a metrics JSONL file in place just before its first record past ``step`` (a resumed run
    replays those steps); a writer appending to the file keeps working."""
    path = Path(path)
    if not path.is_file():
        return
    offset = 0
    with path.open("rb") as file:
        for line in file:
            if line.strip() and json.loads(line)["step"] > step:
                break
            offset += len(line)
    os.truncate(path, offset)


def latest_records(records: list[dict], split: str) -> list[dict]:
    """The records of ``split``, one per step; a step logged twice (a resumed run replaying steps
    after its last checkpoint) keeps its last record."""
    by_step = {r["step"]: r for r in records if r["split"] == split}
    return [by_step[s] for s in sorted(by_step)]


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, baseline: float | None = None) -> Path:
    """Train and validation loss against step (nats/token), with an optional horizontal baseline
    (e.g. the unigram entropy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, style in (("train", "-"), ("val", "o-")):
        rows = [r for r in latest_records(records, split) if math.isfinite(r.get("loss", math.nan))]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=f"{split} loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"unigram entropy {baseline:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)


def _tensorboard_writer(log_dir: Path, purge_step: int | None):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)
