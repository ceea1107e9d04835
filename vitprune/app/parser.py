"""The command line's parser, generated from the options dataclasses (``vitprune.options``): a flag, its help, its
default and its choices are declared once, on the field (``options.opt``), and read here.

Lists (a sweep's budgets, criteria ...) are comma lists under the same flag a single command uses for one value
(``evaluate --criterion jas,wanda`` beside ``compress --criterion jas``). What every command shares that is not an
option of the work itself — where results go, how much is said — is added by ``add_run_controls``.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

from ..errors import UserError
from ..options import field_kind, floats, ints, names, parse_classes, parse_model_args
from ..progress import LEVELS

_SCALAR_KINDS = {"int": int, "float": float, "str": str}


class Parser(argparse.ArgumentParser):
    """argparse with the tool's error format: one line naming the fix, exit code 2 (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"vitprune: error: {message}; see '{self.prog} --help'\n")


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _choices(f: Field) -> tuple[Sequence[str] | None, str]:
    """(the choices, their descriptions for --help) of a field; a registry gives both."""
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    if hasattr(choices, "names"):  # a vitprune.registry.Registry: names and one help line per entry
        return choices.names(), choices.help()
    return (tuple(choices) if choices is not None else None), ""


def _default_text(f: Field, kind: str) -> str:
    text = f.metadata.get("default_text")
    if text is not None:
        return text
    default = f.default if f.default is not MISSING else None
    if kind == "bool":
        return "off" if not default else "on"
    if kind == "no":
        return "no (" + flag_of(f)[5:].replace("-", " ") + " on)"
    if default is None:
        return "none"
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or "none"
    return f"{default:g}" if isinstance(default, float) else str(default)


def _help(f: Field, kind: str, described: str) -> str:
    text = f.metadata["help"]
    if described:
        text += f" ({described})"
    if kind in ("floats", "ints", "names"):
        text += "; a comma list"
    return (text + f" (default: {_default_text(f, kind)})").replace("%", "%%")


def _list_type(kind: str, flag: str, choices: Sequence[str] | None) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            values = {"floats": lambda: floats(text, flag), "ints": lambda: ints(text, flag), "names": lambda: names(text)}[kind]()
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"invalid choice '{bad[0]}' (choose from {', '.join(choices)})")
        return values

    parse.__name__ = f"{kind} list"
    return parse


def _checked(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse.__name__ = name
    return parse


def add_options(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (), required: bool = True) -> None:
    """One argument per option field of ``cls`` (in field order, in the fields' groups); ``required=False`` leaves even
    required options optional (a command that also takes them another way checks them itself)."""
    groups: dict[str, Any] = {}
    for f in fields(cls):
        if "help" not in f.metadata or f.name in skip:
            continue
        group = f.metadata.get("group")
        target = parser if group is None else groups.setdefault(group, parser.add_argument_group(group))
        kind = field_kind(f)
        choices, described = _choices(f)
        flag = flag_of(f)
        help_text = _help(f, kind, described)
        if kind == "positional":
            target.add_argument(f.name, help=help_text.rsplit(" (default:", 1)[0])
            continue
        kw: dict[str, Any] = {"dest": f.name, "help": help_text}
        if f.metadata.get("metavar"):
            kw["metavar"] = f.metadata["metavar"]
        if f.metadata.get("required") and required:
            kw["required"] = True
        default = f.default if f.default is not MISSING else None
        if kind == "bool":
            kw.update(action="store_true", default=bool(default))
        elif kind == "no":
            kw.update(action="store_false", default=True)
        elif kind == "paths":
            kw.update(action="append", default=None)
        elif kind == "path":
            kw.update(default=None)
        elif kind in ("floats", "ints", "names"):
            kw.update(type=_list_type(kind, flag, choices), default=default)
        elif kind == "classes":
            kw.update(type=_checked(parse_classes, "class list"), default=default)
        elif kind == "model_args":
            kw.update(type=_checked(parse_model_args, "model arguments"), default=default)
        else:
            kw.update(type=_SCALAR_KINDS[kind], default=default)
            if choices is not None:
                kw["choices"] = choices
        target.add_argument(flag, *f.metadata.get("aliases", ()), **kw)


def option_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed options that are fields of ``cls`` (repeatable paths as a tuple)."""
    out = {}
    for f in fields(cls):
        if "help" in f.metadata and hasattr(args, f.name):
            value = getattr(args, f.name)
            if f.metadata.get("kind") in ("paths", "path"):
                value = tuple(value if isinstance(value, list) else [value]) if value is not None else ()
            out[f.name] = value
    return out


def add_run_controls(parser: argparse.ArgumentParser, *, out_help: str | None, force_help: str | None = None,
                     out_required: bool = False, recipe: bool = False, dry_run: bool = False, resume: bool = False) -> None:
    """Where results go and how much a run says: --out, --force, --config, --dry-run, --resume (where a command has them),
    --json, --quiet, -v and --log-level (every command)."""
    g = parser.add_argument_group("output")
    if out_help is not None:
        g.add_argument("--out", default=None, required=out_required, help=out_help + (" (required)" if out_required else ""))
    if force_help is not None:
        g.add_argument("--force", action="store_true", help=f"{force_help} (default: off: a different result is refused)")
    if resume:
        g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (default: off)")
    if recipe:
        g.add_argument("--config", default=None, metavar="RECIPE.yaml",
                       help="options from a recipe (recipes/); flags given here override it (default: none)")
    if dry_run:
        g.add_argument("--dry-run", action="store_true", help="print the plan (stages, images, points) and exit (default: off)")
    g.add_argument("--json", action="store_true", help="print the result's summary as one JSON object on stdout (default: off)")
    g.add_argument("--quiet", "-q", action="store_true", help="warnings and errors only: no stage lines, no progress (default: off)")
    g.add_argument("-v", "--verbose", action="store_true", help="also debug lines (stage durations ...) (default: off)")
    g.add_argument("--log-level", default=None, choices=LEVELS, help="log level; overrides --quiet / -v (default: info)")


def emit(args: argparse.Namespace, summary: Any, text: str | None = None) -> int:
    """The result: one JSON object on stdout with --json, else its text (a plan's text, or ``text``)."""
    if getattr(args, "json", False):
        data = summary.to_json() if hasattr(summary, "to_json") else summary
        print(json.dumps(data, sort_keys=True, default=str))
    else:
        print(text if text is not None else str(summary))
    return 0


def log_level(args: argparse.Namespace) -> str:
    if getattr(args, "log_level", None):
        return args.log_level
    if getattr(args, "quiet", False):
        return "warning"
    return "debug" if getattr(args, "verbose", False) else "info"


__all__ = ["Parser", "add_options", "add_run_controls", "option_values", "flag_of", "log_level", "emit"]
