"""Helpers for the run-directory tests: a byte-exact picture of a directory and a damaged checkpoint."""

from pathlib import Path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under ``root``, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def truncate_checkpoint(step_dir: Path) -> Path:
    """Cut the largest array file of a checkpoint to a third of its size (as a full disk or a copy
    interrupted midway would); returns that file."""
    biggest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = biggest.read_bytes()
    biggest.write_bytes(data[: len(data) // 3])
    return biggest
