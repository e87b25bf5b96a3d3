"""Helpers for the run-directory tests: a byte-exact picture of a directory and a damaged checkpoint."""

from pathlib import Path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under ``root``, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def truncate_checkpoint(step_dir: Path) -> list[Path]:
    """Empty every array data file of a checkpoint (as a disk that filled up before the data was written
    would leave them), so that every array, the parameters as much as the optimiser moments, fails to read;
    returns those files."""
    damaged = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")
    assert damaged, f"no array data file under {step_dir / 'state'}"
    for path in damaged:
        path.write_bytes(b"")
    return damaged
