"""The README's "Hugging Face checkpoints" Python snippet runs as written (from the repository root)."""

import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_hf_snippet_runs(monkeypatch, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Hugging Face checkpoints", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the snippet's export lands in tmp_path
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (1, 4, namespace["config"].vocab_size)
    assert namespace["tokens"].shape == (1, 8)  # the new tokens
    assert (namespace["export"] / "config.json").is_file()
