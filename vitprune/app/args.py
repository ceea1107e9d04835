"""Argument types shared by every command's parser."""
from __future__ import annotations

import math

from ..errors import UserError


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """'0,3,5-7' -> (0, 3, 5, 6, 7)."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            if hi and int(hi) < int(lo):
                raise ValueError(part)
            out += range(int(lo), int(hi) + 1) if hi else [int(lo)]
    except ValueError as exc:
        raise UserError(f"--classes takes ids like 0,3,5-7 (got '{text}')") from exc
    return tuple(sorted(set(out)))


def floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise UserError(f"{flag} takes comma-separated numbers (got '{text}')") from exc


def ints(text: str, flag: str) -> tuple[int, ...]:
    values = floats(text, flag)
    if any(not math.isfinite(v) or v != int(v) for v in values):
        raise UserError(f"{flag} takes comma-separated whole numbers (got '{text}')")
    return tuple(int(v) for v in values)


def names(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


__all__ = ["parse_classes", "floats", "ints", "names"]
