"""The command line as users run it: every command and subcommand is run by some test through the installed console
script or ``vitprune.app.cli.main`` (checked from the parser's own tree), help texts say every default and end with
examples, --json prints one object, --dry-run writes nothing, and progress outside a terminal is a few plain lines."""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vitprune.app.cli import build_parser, main
from vitprune.options import ANALYSES, CompressOptions, DiscoverOptions, EvaluateOptions

TESTS = Path(__file__).resolve().parent
ENTRY_POINTS = {"main", "run_cli", "vitprune_cli"}  # functions that run argv as `vitprune` does


def command_tree(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every command path of the parser: ('compress',), ('analyze', 'lens'), ..."""
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = (*prefix, name)
                children = command_tree(sub, path)
                found |= children or {path}
    return found


def _words(node: ast.AST) -> tuple[str, ...]:
    """The leading string constants of a list/tuple literal (the command words of an argv)."""
    words = []
    for element in getattr(node, "elts", []):
        if isinstance(element, ast.Constant) and isinstance(element.value, str):
            words.append(element.value)
        else:
            break
    return tuple(words)


def commands_run_by_tests() -> set[tuple[str, ...]]:
    """Command paths that test code runs through ``main([...])`` / a console-script helper, or as a subprocess argv
    holding ``vitprune`` (``[sys.executable, "-m", "vitprune", "discover", ...]``, ``[VITPRUNE, "analyze", "lens"]``)."""
    runs: set[tuple[str, ...]] = set()
    for path in TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name in ENTRY_POINTS and node.args:
                    runs.add(_words(node.args[0]))
            if isinstance(node, (ast.List, ast.Tuple)):
                elts = node.elts
                for i, element in enumerate(elts):
                    is_module = isinstance(element, ast.Constant) and element.value == "vitprune"
                    is_script = isinstance(element, ast.Name) and element.id == "VITPRUNE"
                    if is_module or is_script:
                        runs.add(_words(ast.List(elts=elts[i + 1:])))
    return runs


def test_every_command_is_run_as_users_run_it():
    tree = command_tree(build_parser())
    assert ("analyze", "lens") in tree and ("compress",) in tree and len(tree) == 9
    runs = commands_run_by_tests()
    missing = sorted(" ".join(c) for c in tree if not any(r[: len(c)] == c for r in runs))
    assert not missing, f"commands no test runs through the console script or main(): {missing}"


def test_no_test_builds_its_own_parser():
    offenders = [p.name for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name
                 and ("add_analyze_parser" in p.read_text() or "argparse.ArgumentParser(" in p.read_text())]
    assert not offenders, f"tests that build a parser instead of running the product: {offenders}"


def _helps(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _helps(sub, (*prefix, name))


def test_every_option_states_its_default_and_every_command_ends_with_examples():
    for path, sub in _helps(build_parser()):
        text = sub.format_help()
        if path in (("analyze",),) or len(path) == 1 and path[0] == "analyze":
            assert "examples:" in text
            continue
        assert "examples:\n  vitprune " + " ".join(path) in text, f"vitprune {' '.join(path)} --help has no examples"
        for action in sub._actions:
            if action.option_strings and action.help not in (None, argparse.SUPPRESS) and action.dest not in ("help",):
                said = "(default:" in action.help or "(required)" in action.help
                assert said, f"vitprune {' '.join(path)} {action.option_strings[0]}: no default in its help"


def test_one_vocabulary_across_commands():
    """The same thing has the same flag everywhere; a sweep takes a comma list under it."""
    parser = build_parser()
    flags = {path: {s for a in sub._actions for s in a.option_strings} for path, sub in _helps(parser)}
    shared = {"--criterion", "--head-criterion", "--token-scope", "--objective", "--jas-aggregation", "--compensate",
              "--sparsity", "--target-macs", "--keep-topk", "--seed", "--prune", "--scope", "--per-class", "--classes",
              "--eval-per-class", "--lsq-target", "--lsq-weighting", "--json", "--quiet", "--log-level", "-v"}
    assert shared <= flags[("compress",)] and shared <= flags[("evaluate",)]
    assert "--model" in flags[("export",)] and "--model" in flags[("discover",)]
    # analyze shows only what each subcommand uses: scores reads no model or images
    assert "--model" not in flags[("analyze", "scores")] and "--batch-size" not in flags[("analyze", "similarity")]
    assert {"--model", "--data", "--batch-size"} <= flags[("analyze", "lens")]


def test_parser_defaults_are_the_options_defaults():
    """Argparse is generated from the options dataclasses: a default is declared once."""
    from dataclasses import fields

    parser = build_parser()
    subs = dict(_helps(parser))
    for path, cls in ((("discover",), DiscoverOptions), (("compress",), CompressOptions), (("evaluate",), EvaluateOptions),
                      *(((("analyze", name)), opts) for name, opts in ANALYSES.items())):
        defaults = {a.dest: a.default for a in subs[path]._actions}
        for f in fields(cls):
            if "help" in f.metadata and f.metadata.get("kind") not in ("paths", "path"):
                assert defaults[f.name] == f.default, (path, f.name)


def test_help_and_version_exit_zero(capsys):
    assert main(["--version"]) == 0
    assert main(["compress", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--target-macs" in out and "examples:" in out


def test_dry_run_prints_the_plan_and_writes_nothing(model_dir, tmp_path, capsys, fashion_dir):
    out = tmp_path / "c"
    assert main(["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", "--eval-per-class", "3",
                 "--sparsity", "0.5", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "plan of vitprune compress" in text and "least squares on 20 calibration images" in text and "30 held-out" in text
    assert not out.exists()
    assert main(["evaluate", "--model", model_dir, "--data", "demo", "--per-class", "2", "--eval-per-class", "3",
                 "--criterion", "magnitude,wanda", "--compensate", "none", "--sparsity", "0.5,0.75", "--out", str(out),
                 "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["points"] == 1 + 2 * 2 and plan["evaluation_images"] == 30 and plan["estimated_scoring_s"] > 0
    assert not out.exists()
    assert main(["discover", "--model", model_dir, "--data", "demo", "--per-class", "1", "--out", str(out), "--dry-run"]) == 0
    assert "10 calibration images" in capsys.readouterr().out and not out.exists()


def test_json_is_one_object_on_stdout(model_dir, tmp_path, capsys, fashion_dir):
    out = tmp_path / "c"
    assert main(["compress", "--model", model_dir, "--data", "demo", "--classes", "0-1", "--per-class", "2", "--eval-per-class", "2",
                 "--sparsity", "0.5", "--criterion", "magnitude", "--compensate", "none", "--no-export", "--out", str(out),
                 "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # nothing else on stdout
    assert summary["output"] == str(out) and summary["sparsity"] == 0.5 and set(summary["top1"]) == {"dense", "pruned"}
    assert "vitprune: evaluating dense and pruned" in captured.err  # the stages went to stderr


@pytest.mark.slow
def test_progress_outside_a_terminal_is_a_few_plain_lines(model_dir, tmp_path, fashion_dir):
    """No tqdm redraws in a log: each bar is at most a few lines (here, the last one)."""
    proc = subprocess.run([sys.executable, "-m", "vitprune", "compress", "--model", model_dir, "--data", "demo", "--classes",
                           "0-1", "--per-class", "2", "--eval-per-class", "2", "--sparsity", "0.5", "--no-export",
                           "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    for stage in ("discover:", "statistics:", "least squares:", "evaluate:"):
        lines = [line for line in proc.stderr.splitlines() if line.startswith(stage)]
        assert 1 <= len(lines) <= 3, (stage, proc.stderr)
        assert "/s" in lines[-1]
    assert "vitprune: discovery:" in proc.stderr and "vitprune: slicing and refitting" in proc.stderr


def test_drastic_budgets_are_named(model_dir, tmp_path, capsys, fashion_dir):
    assert main(["compress", "--model", model_dir, "--data", "demo", "--classes", "0-1", "--per-class", "2",
                 "--eval-per-class", "2", "--sparsity", "0.75", "--prune", "mlp,heads", "--criterion", "magnitude",
                 "--head-criterion", "weight", "--compensate", "none", "--no-export", "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("vitprune: warning:")]
    assert len(warnings) == 1 and "MLP units" in warnings[0] and "--target-macs" in warnings[0]
    assert main(["compress", "--model", model_dir, "--data", "demo", "--classes", "0-1", "--per-class", "2",
                 "--eval-per-class", "2", "--sparsity", "0.25", "--criterion", "magnitude", "--compensate", "none",
                 "--no-export", "--out", str(tmp_path / "d")]) == 0
    assert "warning" not in capsys.readouterr().err


def _console_script() -> str:
    script = Path(sys.executable).parent / "vitprune"
    return str(script) if script.exists() else shutil.which("vitprune") or pytest.skip("no vitprune console script installed")


@pytest.mark.slow
def test_every_analysis_through_the_console_script(model_dir, tmp_path, fashion_dir):
    """The four analyses as a user types them (this is what failed when settings were an argparse namespace)."""
    VITPRUNE = _console_script()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def run(*argv: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc

    common = ["--model", model_dir, "--data", "demo", "--per-class", "1", "--classes", "0-2", "--topk", "2", "--steps", "2"]
    run(VITPRUNE, "discover", *common, "--out", "jas", "--quiet")
    run(VITPRUNE, "discover", *common, "--method", "influence-pattern", "--out", "ip", "--quiet")
    proc = run(VITPRUNE, "analyze", "manipulate", "--paths", "jas", "--paths", "ip", "--eval-per-class", "1", "--ops", "remove",
               "--out", "m", "--json")
    assert json.loads(proc.stdout)["command"] == "analyze manipulate"
    run(VITPRUNE, "analyze", "scores", "--paths", "jas", "--paths", "ip")
    run(VITPRUNE, "analyze", "similarity", "--paths", "jas", "--top", "2")
    run(VITPRUNE, "analyze", "lens", "--paths", "jas", "--per-class", "1")
    for folder in (tmp_path / "m", tmp_path / "jas/analysis/scores", tmp_path / "jas/analysis/similarity",
                   tmp_path / "jas/analysis/lens"):
        settings = json.loads((folder / "analysis.json").read_text())
        assert settings["command"].startswith("analyze ") and settings["paths"]
    rerun = run(VITPRUNE, "analyze", "scores", "--paths", "jas", "--paths", "ip")  # the same analysis again: its own files
    assert "wrote" in rerun.stdout
