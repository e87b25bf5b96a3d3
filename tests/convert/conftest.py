"""The HF fixtures (tests/fixtures/hf, made by scripts/make_hf_fixtures.py) and helpers to read them."""

import functools
import shutil
from pathlib import Path

from safetensors.numpy import load_file

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
FIXTURES = ("tied_h64", "h96_qk48_sharded", "bias_w20_v60", "bytes_h64")


@functools.cache
def reference(name: str) -> dict:
    """tokens_S / logits_S (S = 32, 37), prompt and greedy continuation computed by transformers."""
    return load_file(str(FIXTURE_DIR / f"{name}.reference.safetensors"))


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """A writable copy of fixture ``name`` under ``tmp_path``."""
    return Path(shutil.copytree(FIXTURE_DIR / name, tmp_path / name))
