"""Named extension points: criteria, compensations, discovery methods, MLP layouts and pruning sites.

A ``Registry`` maps a name to an implementation and to what the tool must know about it before
loading it: a one-line help text (the command line's ``--help`` and choices come from here) and
free-form metadata (a criterion's ``needs``, for instance). Built-ins name their implementation
as ``"module:attribute"``, imported on first use, so listing the choices never imports torch;
code registered from outside the package passes the object itself (``Registry.register``).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Entry:
    """One registered name: its implementation (or where to import it from), help and metadata."""

    name: str
    target: Any  # the object, or "package.module:attribute"
    help: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    """Names of one kind of extension (``kind``), chosen on the command line with ``flag``."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind = kind
        self.flag = flag
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: Any, *, help: str = "", replace: bool = False, **meta: Any) -> None:
        """Register ``target`` (an object or ``"module:attribute"``) under ``name``."""
        if not isinstance(name, str) or not name or name != name.strip() or "," in name:
            raise ValueError(f"a {self.kind} name is a non-empty string without spaces at its ends or commas (got {name!r})")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} '{name}' is already registered; pass replace=True to override it")
        self._entries[name] = Entry(name, target, help, dict(meta))

    def register(self, name: str, *, help: str = "", replace: bool = False, **meta: Any) -> Callable[[Any], Any]:
        """Decorator form of ``add``: ``@registry.register("name", help=..., ...)`` above a function or class."""

        def decorate(target: Any) -> Any:
            self.add(name, target, help=help, replace=replace, **meta)
            return target

        return decorate

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def check(self, name: Any) -> str:
        """``name`` if registered, else one UserError naming the flag and the choices."""
        if name not in self._entries:
            raise UserError(f"{self.flag} must be one of {', '.join(self._entries)} (got '{name}')")
        return name

    def entry(self, name: str) -> Entry:
        return self._entries[self.check(name)]

    def load(self, name: str) -> Any:
        return self.entry(name).load()

    def help(self) -> str:
        """``name = help`` for every entry, for ``--help``."""
        return "; ".join(f"{e.name} = {e.help}" if e.help else e.name for e in self._entries.values())


__all__ = ["Registry", "Entry"]
