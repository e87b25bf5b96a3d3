"""Every shell command and Python snippet in README.md runs as written, in document order.

What counts (so that a new README section is picked up without touching this file): a fenced
```` ```python ```` block is a Python snippet; every other code block -- fenced with a shell language
(bash, sh, shell, console) or with none, or indented by four spaces -- holds shell commands, one per
line (``#`` comments allowed). Fenced blocks in other languages (yaml, json, text, ...) are not run.

How each runs, in a scratch directory that links every top-level entry of the repository (so that
``configs/``, ``tests/fixtures/`` ... resolve while ``runs/`` is written to the scratch directory):

- ``xlstm-flax ARGS`` and ``python -m xlstm_flax ARGS`` call ``xlstm_flax.cli.main(ARGS)`` in this
  process (the console script and ``__main__`` call exactly that, and one process compiles each model
  once) and must return 0. ``train`` commands get ``TINY_RUN`` appended: the README's commands train for
  minutes, the test runs a few small steps of the same commands.
- ``make train`` and ``make test`` are not run: they create a virtual environment, train for minutes on
  the full corpus, or run this very test suite.
- Any other command fails the test: teach ``run_command`` how to run it.
- A Python snippet runs with ``exec`` in a fresh namespace; ``tempfile`` writes into the scratch directory.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import tempfile
from pathlib import Path

import pytest

from xlstm_flax.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
NOT_RUN = (["make", "train"], ["make", "test"])
TINY_RUN = [
    "train.steps=4",
    "train.batch_size=2",
    "train.seq_len=32",
    "train.eval_every=4",
    "train.eval_batches=1",
    "train.log_every=2",
    "train.sample_tokens=0",
    "checkpoint.every=2",
    "optim.warmup_steps=1",
]


@dataclasses.dataclass(frozen=True)
class Block:
    """A code block of README.md: ``kind`` "python" or "shell", ``line`` its first line (1-based)."""

    kind: str
    line: int
    text: str


def readme_blocks(markdown: str) -> list[Block]:
    """The Python and shell code blocks of a markdown text, in order."""
    lines, blocks, n = markdown.splitlines(), [], 0
    while n < len(lines):
        fence = re.match(r"(```+|~~~+)\s*([\w+-]*)", lines[n])
        if fence:
            end = next((m for m in range(n + 1, len(lines)) if lines[m].startswith(fence.group(1))), len(lines))
            language = fence.group(2).lower()
            kind = "python" if language in ("python", "py") else "shell" if language in SHELL_LANGUAGES else None
            if kind:
                blocks.append(Block(kind, n + 2, "\n".join(lines[n + 1 : end])))
            n = end + 1
        elif lines[n].startswith("    ") and lines[n].strip() and (n == 0 or not lines[n - 1].strip()):
            end = n
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            blocks.append(Block("shell", n + 1, "\n".join(line[4:] for line in lines[n:end])))
            n = end
        else:
            n += 1
    return blocks


def commands(block: Block) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of each command of a shell block (comments dropped, ``\\`` continuations joined)."""
    found, pending, start = [], "", None
    for offset, line in enumerate(block.text.splitlines()):
        start = block.line + offset if not pending else start
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        argv = shlex.split(pending, comments=True)
        if argv:
            found.append((start, argv))
        pending = ""
    return found


def run_command(argv: list[str], where: str) -> None:
    if argv in NOT_RUN:
        return
    if argv[:1] == ["xlstm-flax"]:
        args = argv[1:]
    elif argv[:3] == ["python", "-m", "xlstm_flax"]:
        args = argv[3:]
    else:
        pytest.fail(f"{where}: no rule to run {shlex.join(argv)!r}; teach tests/test_readme.py's run_command")
    if args[:1] == ["train"]:
        args = [*args, *TINY_RUN]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse rejected the arguments
        code = exit_.code
    assert code == 0, f"{where}: {shlex.join(argv)} exited with {code}"


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    for entry in ROOT.iterdir():
        if entry.name != "runs":
            (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_extraction_finds_the_documented_commands_and_snippets():
    blocks = readme_blocks(README.read_text())
    argvs = [argv for block in blocks if block.kind == "shell" for _, argv in commands(block)]
    assert ["make", "train"] in argvs and ["make", "test"] in argvs
    assert any(argv[:2] == ["xlstm-flax", "train"] for argv in argvs)
    assert any(argv[:2] == ["xlstm-flax", "generate"] for argv in argvs)
    assert any(block.kind == "python" and "get_kernel" in block.text for block in blocks)


def test_readme_runs_as_written(scratch, capsys):
    for block in readme_blocks(README.read_text()):
        if block.kind == "python":
            exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "readme"})
            continue
        for line, argv in commands(block):
            run_command(argv, f"README.md:{line}")
    assert (scratch / "runs" / "tiny" / "config.yaml").is_file() and "Traceback" not in capsys.readouterr().err
