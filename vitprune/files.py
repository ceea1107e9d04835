"""Files vitprune writes: atomically (readers never see half a file) and resumably (JSONL appends).

Nothing here knows what the files mean; the discovery records, the sweep points and the reports
are typed elsewhere and use these helpers to reach the disk.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import UserError


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_atomically(tmp: Path, path: Path) -> None:
    """Publish a finished temporary file written by another library (safetensors creates it 0600): the
    permissions of a normal new file (umask), flushed to disk, renamed over ``path``."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def safetensors_os_error(exc: Exception, path: Path) -> OSError:
    """safetensors reports I/O failures (a full disk ...) as its own error type: the OSError behind it, naming ``path``."""
    import errno
    import re

    match = re.search(r"code: (\d+)", str(exc))
    code = int(match.group(1)) if match else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({type(exc).__name__}); the file is damaged, re-create it (--force)") from exc


def read_jsonl(path: Path) -> list[dict]:
    """All complete lines of a JSONL file (a torn last line, from a kill, is ignored); a complete
    line that is not a JSON object means the file is damaged: one UserError naming it."""
    records = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict):
                raise UserError(f"{path} line {n} is not a record (the file is damaged or not a vitprune file); "
                                "re-create it (--force) or restore it")
            records.append(rec)
    return records


class JsonlAppender:
    """Append-only JSONL with crash-safe resume at batch granularity.

    On open, keeps the first ``floor(complete_lines / batch) * batch`` records and truncates
    the rest, so work restarts at a batch boundary with the same batch composition.
    """

    def __init__(self, path: Path, batch: int = 1) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        self._offsets: list[int] = []
        keep_bytes = 0
        if self.path.exists():
            offsets = []
            with open(self.path, "rb") as f:
                pos = 0
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break
                    try:
                        self.records.append(json.loads(raw))
                    except json.JSONDecodeError:
                        break
                    pos += len(raw)
                    offsets.append(pos)
            n = (len(self.records) // batch) * batch
            self.records = self.records[:n]
            self._offsets = offsets[:n]
            keep_bytes = offsets[n - 1] if n else 0
        self._file = open(self.path, "ab")
        self._file.truncate(keep_bytes)
        self._file.seek(keep_bytes)

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` of the records found on open (before any append): work that a
        companion file has not committed is then redone."""
        if n < len(self.records):
            self.records = self.records[:n]
            self._offsets = self._offsets[:n]
            keep = self._offsets[-1] if n else 0
            self._file.truncate(keep)
            self._file.seek(keep)

    def append(self, records: Iterable[dict]) -> None:
        data = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["atomic_write_text", "atomic_write_json", "safetensors_os_error", "replace_atomically", "read_json", "read_jsonl", "JsonlAppender"]
