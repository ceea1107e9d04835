"""What a long run tells its user while it works: stage lines through ``logging`` and progress bars with rate and ETA.

Everything goes to stderr, so ``--json`` keeps stdout for the one summary object. In a terminal the bars are
tqdm's; elsewhere (a log file, CI) a bar is a few plain lines, at most one every ``PLAIN_EVERY_S`` seconds, and its
last line when it ends. ``--quiet`` shows warnings only, ``-v`` debug lines too (``configure_logging``).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOG = logging.getLogger("vitprune")
PLAIN_EVERY_S = 15.0  # seconds between the plain progress lines of a bar outside a terminal
LEVELS = ("debug", "info", "warning", "error")


class _Formatter(logging.Formatter):
    """Info lines as they are; warnings and errors with the tool's prefix, so they stand out in a log."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"vitprune: {record.levelname.lower()}: {message}"
        if record.levelno <= logging.DEBUG:
            return f"vitprune: debug: {message}"
        return message


def configure_logging(level: str | int = "info") -> None:
    """One stderr handler on the ``vitprune`` logger at ``level`` (the command line calls this once per run)."""
    LOG.handlers[:] = []
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    LOG.addHandler(handler)
    LOG.setLevel(level.upper() if isinstance(level, str) else level)
    LOG.propagate = False


def _showing_progress() -> bool:
    """Bars unless the ``vitprune`` logger was set above info (``--quiet``); an unconfigured logger (the Python API) shows them."""
    return LOG.level == logging.NOTSET or LOG.isEnabledFor(logging.INFO)


@contextmanager
def stage(name: str, *, quiet: bool = False) -> Iterator[None]:
    """Name a stage of a run when it starts (``quiet``: not at all) and log its duration at debug level when it ends."""
    if not quiet:
        LOG.info(f"vitprune: {name}")
    start = time.time()
    yield
    if not quiet:
        LOG.debug(f"{name}: {time.time() - start:.1f} s")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """tqdm's interface (``update``, ``set_postfix(_str)``, ``close``, a context manager) as rate-limited plain lines."""

    def __init__(self, *, total: float | None = None, desc: str = "", unit: str = "it", initial: float = 0, disable: bool = False,
                 every: float = PLAIN_EVERY_S, **_: Any) -> None:
        self.total, self.desc, self.unit, self.n, self.disable = total, desc, unit, initial, disable
        self.every = every
        self.postfix = ""
        self._start = self._last = time.time()
        self._initial = initial
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.time()
        if not self.disable and now - self._last >= self.every:
            self._last = now
            self._emit(now)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_postfix(self, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def _emit(self, now: float) -> None:
        elapsed = now - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n:g}" + (f"/{self.total:g} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total
                                                  else f" {self.unit}")]
        parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self._closed and not self.disable and self.n > self._initial:
            self._emit(time.time())
        self._closed = True

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self):  # pragma: no cover - tqdm compatibility
        raise TypeError("PlainProgress wraps no iterable; call update()")


def progress_bar(**kwargs: Any) -> Any:
    """A bar showing rate and ETA: tqdm in a terminal, else ``PlainProgress``; ``disable=True`` for quiet runs and
    non-main ranks, and none below the info log level (``--quiet``)."""
    kwargs["disable"] = bool(kwargs.get("disable")) or not _showing_progress()
    if not sys.stderr.isatty() and not os.environ.get("VITPRUNE_TQDM"):
        return PlainProgress(**kwargs)
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("smoothing", 0.1)
    return tqdm(**kwargs)


__all__ = ["LOG", "configure_logging", "stage", "progress_bar", "PlainProgress", "LEVELS", "PLAIN_EVERY_S"]
