"""Output folders: the one place that locks, checks, (re)creates and replaces them.

One writer per output: an ``fcntl.flock`` on a hidden file beside the output folder (or file).

The kernel drops a flock when its process ends, however it ends (exit, SIGINT, kill -9, power
loss), so a lock left by a dead run is never stale: the next run simply gets it and overwrites
the holder note. A second live writer gets one line naming the holder (pid, host, start time).
The lock file sits beside the output, not inside it, so ``--force`` can replace the whole
folder while the lock is held; it is left in place on release (unlinking a flock file races).
Under several processes (torchrun / accelerate) the main process takes the lock for the whole
launch and tells every rank whether it got it.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import atomic_write_json, read_json

# keys of a settings file that never make two runs different
IDENTITY_FREE = frozenset({"vitprune_version", "format"})


def lock_path(out: Path) -> Path:
    out = Path(out).absolute()
    return out.with_name(f".{out.name}.vitprune-lock")


class _Held:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def _acquire(out: Path, command: str) -> _Held:
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (PermissionError, OSError) as exc:
        raise UserError(f"cannot write in {path.parent} ({type(exc).__name__}: {exc.strerror or exc}); "
                        "choose an --out in a writable folder") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" if holder
               else "another process")
        raise UserError(f"{out} is being written by another vitprune {holder.get('command', 'run') if holder else 'run'} "
                        f"({who}); wait for it to finish, or pass another --out") from None
    note = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
    os.fsync(fd)
    return _Held(fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def output_lock(out: Path, command: str, dist=None) -> Iterator[None]:
    """Hold the lock of ``out`` for the body; raises UserError (on every rank) when another run holds it."""
    held, error = None, None
    if dist is None or dist.is_main:
        try:
            held = _acquire(Path(out), command)
        except UserError as exc:
            error = str(exc)
    if dist is not None and dist.world > 1:
        error = dist.gather(error)[0]  # the main process's verdict, on every rank
    if error:
        if held:
            held.release()
        raise UserError(error)
    try:
        yield
    finally:
        if held:
            held.release()


def flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level of dotted keys (``discovery.topk``), so a difference is named exactly."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_output_dir(out: Path, settings_file: str, settings: dict, *, what: str, force: bool,
                     ignore: Sequence[str] = (), normalise: Callable[[Any], dict] | None = None) -> bool:
    """Whether ``out`` already holds this very result (same settings, ``ignore`` keys aside).

    ``normalise`` turns the stored settings into the current format first (an older version's file).
    A folder holding another result, or anything that is not a vitprune result, is refused with
    one line naming the differing settings, unless ``force`` (then ``start_output_dir`` replaces it).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; pass another --out")
    if force:
        return False
    if (out / settings_file).is_file():
        old = read_json(out / settings_file)
        old, settings = flat(normalise(old) if normalise else old), flat(settings)
        ignored = set(ignore) | IDENTITY_FREE
        # an option newer than the folder, left empty (None, [], False), is the same run as before it existed
        changed = sorted(k for k in set(old) | set(settings) if k not in ignored and old.get(k) != settings.get(k)
                         and not (k not in old and settings.get(k) in (None, [], False)))
        if changed:
            raise UserError(f"{out} holds a {what} with different settings ({', '.join(changed)}); "
                            "pass --force to replace it or another --out")
        return True
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a vitprune {what}; pass --force or another --out")
    return False


def start_output_dir(out: Path, settings_file: str, settings: dict, *, force: bool, owned: Sequence[str] | None = None) -> None:
    """(Re)create the folder ``check_output_dir`` accepted and write its settings. With ``force``, what a previous
    result left is removed first: the whole folder, or only the entries matching the glob patterns ``owned``."""
    out = Path(out)
    if force and out.exists():
        if owned is None:
            shutil.rmtree(out)
        else:
            for entry in sorted({e for pattern in owned for e in out.glob(pattern)}):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / settings_file, settings)


__all__ = ["output_lock", "lock_path", "check_output_dir", "start_output_dir"]
