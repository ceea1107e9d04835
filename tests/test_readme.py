"""Every Python block of the README runs as written (in a scratch folder; registrations are undone after), and every
shell command of the README that runs offline runs through the console's entry point, with fewer images."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
OFFLINE_MODELS = ("demo", "zoo:", "random:")
# fewer images (and no latency rounds) per command, appended to the README's line (the last of a flag given twice wins)
SMALL = {"discover": ["--per-class", "1", "--steps", "2"],
         "compress": ["--per-class", "2", "--eval-per-class", "5", "--steps", "2", "--latency-rounds", "0",
                      "--finetune-selection-per-class", "5", "--finetune-epochs", "0.01"],
         "evaluate": ["--per-class", "2", "--eval-per-class", "5", "--steps", "2"],
         "export": ["--eval-per-class", "3", "--per-class", "2", "--max-int8-drop", "100"],  # 30 images: one is 3.3 points
         "manipulate": ["--eval-per-class", "2"], "lens": ["--per-class", "1"]}


def shell_commands(text: str = TEXT) -> list[list[str]]:
    """The ``vitprune ...`` lines of the README's bash blocks (continuations joined, comments dropped), as argv."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["vitprune"]:
                out.append(words[1:])
    return out


def offline(argv: list[str]) -> bool:
    """Whether a command needs nothing but this machine: no '...', no hub model, no data but the demo's."""
    if "..." in argv:
        return False
    model = argv[argv.index("--model") + 1] if "--model" in argv else "demo"
    data = argv[argv.index("--data") + 1] if "--data" in argv else "demo"
    return (model.startswith(OFFLINE_MODELS) or not ("--model" in argv and argv[0] != "export")) and data == "demo"


def test_the_readme_has_the_api_and_extending_examples():
    assert "## Python API" in TEXT and "### Extending vitprune" in TEXT
    assert any("register_criterion" in b and "vitprune.compress(" in b for b in BLOCKS)
    assert any("register_family" in b for b in BLOCKS)
    assert sum(offline(c) for c in shell_commands()) >= 8  # the offline block is there


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, fashion_dir):
    from vitprune.criteria import CRITERIA
    from vitprune.model import FAMILIES

    before = set(CRITERIA.names()), set(FAMILIES.names())
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    finally:
        for registry, names in zip((CRITERIA, FAMILIES), before):
            for name in set(registry.names()) - names:
                registry.remove(name)


@pytest.mark.slow
def test_readme_shell_commands_run_offline(tmp_path, monkeypatch, fashion_dir):
    """In README order (later lines read what earlier ones wrote), each with SMALL's overrides."""
    from vitprune.app.cli import main

    monkeypatch.chdir(tmp_path)
    ran = []
    for argv in shell_commands():
        if not offline(argv):
            continue
        command = argv[1] if argv[0] == "analyze" else argv[0]
        code = main([*argv, *SMALL.get(command, [])])  # a flag given twice: argparse keeps the last
        assert code == 0, argv
        ran.append(command)
    assert {"discover", "compress", "evaluate", "export", "manipulate", "lens", "convert"} <= set(ran)
