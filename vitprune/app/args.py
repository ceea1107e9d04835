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


def parse_model_args(text: str | None) -> dict | None:
    """``'global_pool=avg,fc_norm=false,img_size=96'`` -> keyword arguments for ``timm.create_model`` (YAML values;
    ``[a, b]`` lists may hold commas)."""
    import yaml

    if not text:
        return None
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += 1 if ch in "[(" else -1 if ch in "])" else 0
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    out: dict = {}
    for part in (p.strip() for p in parts if p.strip()):
        key, eq, value = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UserError(f"--model-args takes key=value pairs like global_pool=avg,img_size=96 (got '{part}')")
        try:
            out[key.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError as exc:
            raise UserError(f"--model-args: cannot read the value of {key.strip()} ('{value.strip()}')") from exc
    return out


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


__all__ = ["parse_classes", "parse_model_args", "floats", "ints", "names"]
