"""Recipes: ``--config FILE.yaml`` holds a command's options; flags on the command line override them.

Keys are the command's option names (``keep_topk`` or ``keep-topk``); values go through the same
conversion and checks as on the command line, so a recipe can say nothing a flag could not. Unknown
keys, unreadable files and wrong types are one-line user errors. ``resolved_config`` gives back
every option of the run as a recipe, which compress writes next to its outputs.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError

MAX_RECIPE_BYTES = 1 << 20
NOT_OPTIONS = {"help", "config", "func", "command", "json", "dry_run", "verbose", "log_level", "checkpoint"}


def config_path(argv: Sequence[str]) -> str | None:
    """The value of --config in an argument list, if any."""
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a YAML file")
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_recipe(path: str) -> dict[str, Any]:
    import yaml

    file = Path(path)
    if file.is_file() and file.stat().st_size > MAX_RECIPE_BYTES:
        raise UserError(f"recipe {file} is {file.stat().st_size:,} bytes; a recipe is a short YAML mapping of options")
    if file.is_dir():
        raise UserError(f"recipe {file} is a folder; pass a YAML file (see recipes/)")
    if not file.is_file():
        raise UserError(f"recipe {file} does not exist; pass a YAML file (see recipes/)")
    try:
        data = yaml.load(file.read_text(), Loader=_unique_key_loader())
    except _DuplicateKey as exc:
        raise UserError(f"recipe {file} sets '{exc}' twice; keep one") from exc
    except _Alias as exc:
        raise UserError(f"recipe {file} uses a YAML anchor or alias (line {exc}); write each value out") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read recipe {file} ({type(exc).__name__}); it must be a YAML mapping of option names to values") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"recipe {file} must be a YAML mapping of option names to values, not {type(data).__name__}")
    return data


class _DuplicateKey(Exception):
    pass


class _Alias(Exception):
    pass


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML that refuses a key given twice (safe_load lets the last one win silently) and anchors / aliases (a
        recipe of nested aliases expands exponentially; a recipe needs none)."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
                raise _Alias(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(key)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def apply_recipe(parser: argparse.ArgumentParser, recipe: dict[str, Any], source: str) -> set[str]:
    """Make the recipe's values the parser's defaults, converted and checked like command-line values; returns the
    options it set. A key may be written with - or _ (and evaluate's old plural names still work), but one option
    named twice is refused, whichever spellings it takes."""
    legacy = getattr(parser.get_default("options"), "legacy_names", {})
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_OPTIONS}
    # a flag's own name works too (no-export: true, as vitprune 0.1's config.yaml wrote it)
    flags = {s.lstrip("-").replace("-", "_"): a for a in actions.values() for s in a.option_strings if s.startswith("--")}
    defaults = {}
    spelled: dict[str, str] = {}
    for key, value in recipe.items():
        dest = str(key).replace("-", "_")
        if dest not in actions and dest in flags and isinstance(flags[dest], argparse._StoreFalseAction):
            action = flags[dest]
            if not isinstance(value, bool):
                raise UserError(f"recipe {source}: {key} must be true or false (got {value!r})")
            dest, value = action.dest, not value
        elif dest not in actions and dest in flags:
            dest = flags[dest].dest
        if dest not in actions and legacy.get(dest) in actions:
            dest = legacy[dest]
        if dest in spelled:
            raise UserError(f"recipe {source} sets '{dest.replace('_', '-')}' twice (as '{spelled[dest]}' and '{key}'); keep one")
        spelled[dest] = str(key)
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise UserError(f"recipe {source}: unknown key '{key}'; {parser.prog} takes {known}")
        defaults[dest] = _convert(action, value, f"recipe {source}: {key}")
    parser.set_defaults(**defaults)
    return set(defaults)


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    flag = action.option_strings[-1] if action.option_strings else action.dest
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false (got {value!r})")
        return value
    if value is None:
        if action.default is not None:
            raise UserError(f"{where} is null; give it a value like {flag} takes on the command line, or drop the key")
        return None
    if isinstance(value, list):  # comma-list options (--sparsities, --criteria, ...) may be YAML lists
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise UserError(f"{where} takes a value like {flag} does on the command line (got {value!r})")
    try:
        converted = action.type(str(value)) if action.type else str(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where} is not a valid {flag} value (got {value!r})") from exc
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, action.choices))} (got {value!r})")
    return converted


def resolved_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Every option of a parsed command as a recipe (what --config would need to repeat the run)."""
    return {a.dest.replace("_", "-"): getattr(args, a.dest) for a in parser._actions
            if a.dest not in NOT_OPTIONS and a.option_strings and hasattr(args, a.dest)}


__all__ = ["config_path", "load_recipe", "apply_recipe", "resolved_config"]
