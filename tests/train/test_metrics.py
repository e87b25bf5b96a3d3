"""Metric logs: JSONL records and, with tensorboardX installed, TensorBoard event files."""

import struct

import pytest

from xlstm_flax.train.metrics import MetricsWriter, latest_records, read_metrics


def _scalars_in_event_files(log_dir) -> dict[tuple[str, int], float]:
    """(tag, step) -> value from TFRecord event files (8-byte length, 4-byte crc, data, 4-byte crc)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in log_dir.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 16 + length
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_jsonl_and_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboardX")
    writer = MetricsWriter(tmp_path)
    writer.write(1, "train", {"loss": 2.5, "lr": 1e-3})
    writer.write(2, "train", {"loss": 2.25, "lr": 2e-3})
    writer.write(2, "val", {"loss": 2.75})
    writer.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["loss"] for r in latest_records(records, "train")] == [2.5, 2.25]
    scalars = _scalars_in_event_files(tmp_path / "tensorboard")
    assert scalars[("train/loss", 2)] == pytest.approx(2.25)
    assert scalars[("val/loss", 2)] == pytest.approx(2.75)
    assert scalars[("train/lr", 1)] == pytest.approx(1e-3)


def test_tensorboard_can_be_switched_off(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write(1, "train", {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "tensorboard").exists()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "split": "train", "loss": 1.0}]
