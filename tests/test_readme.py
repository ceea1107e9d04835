"""Every Python block of the README runs as written (in a scratch folder; registrations are undone after)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_the_api_and_extending_examples():
    text = README.read_text()
    assert "### Python API" in text and "### Extending vitprune" in text
    assert any("register_criterion" in b and "vitprune.compress(" in b for b in BLOCKS)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, fashion_dir):
    from vitprune.criteria import CRITERIA

    before = set(CRITERIA.names())
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    finally:
        for name in set(CRITERIA.names()) - before:
            CRITERIA.remove(name)
