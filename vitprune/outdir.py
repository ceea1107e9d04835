"""Output folders: the one place that locks, checks, creates, replaces and publishes them.

Ownership: every folder vitprune writes holds ``.vitprune/manifest.json``, the names (top-level
entries) vitprune wrote there. ``--force`` replaces those and nothing else; a folder holding any
other entry is refused, even with ``--force``, naming the foreign entries. A folder written by
vitprune 0.1 (no manifest) is adopted: the names that command writes count as vitprune's.

Transactions: a result is built in ``.vitprune/staging-<pid>/`` and published when complete (each
file renamed into place; the manifest lists them as pending first, so a kill in between leaves
nothing unowned). A run that fails or is interrupted leaves the folder as it was, except for the
resumable state it registered (``own``): a discovery run, sweep points. A folder that the run
created and left empty is removed again.

One writer per folder: an ``fcntl.flock`` on ``.vitprune/lock``. The kernel drops a flock when its
process ends, however it ends (exit, SIGINT, kill -9), so a lock left by a dead run is never stale.
A second live writer gets one line naming the holder (pid, host, start time). Under several
processes (torchrun / accelerate) the main process does all of this and tells every rank the verdict.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import atomic_write_json, read_json

META = ".vitprune"
MANIFEST = "manifest.json"
LOCK = "lock"
MANIFEST_FORMAT = "vitprune.manifest/1"
# keys of a settings file that never make two runs different
IDENTITY_FREE = frozenset({"vitprune_version", "format"})
# what each command of vitprune 0.1 wrote, for adopting its folders (they have no manifest)
LEGACY = {
    "compress": ("compress.json", "paths", "mask.json", "model.safetensors", "vitprune.json", "model.onnx", "model.int8.onnx",
                 "report.json", "report.md", "config.yaml"),
    "evaluate": ("sweep.json", "points.jsonl", "paths-*", "results.csv", "results.json", "results.md", "accuracy_vs_sparsity.png",
                 "config.yaml"),
    "discover": ("config.json", "paths.jsonl", "paths.partial*.jsonl", "importance.safetensors", "importance.partial*",
                 "analysis", "config.yaml"),
}


def flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level of dotted keys (``discovery.topk``), so a difference is named exactly."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
    """Dotted names of the settings that differ; an option newer than ``old``, left empty, is not a difference."""
    old, new = flat(old), flat(new)
    ignored = set(ignore) | IDENTITY_FREE
    return sorted(k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k)
                  and not (k not in old and new.get(k) in (None, [], False)))


def check_inputs(out: Path, inputs: Iterable[str | Path | None], *, inside_ok: Iterable[Path] = ()) -> None:
    """Refuse an output that equals, contains or lies inside an input (model, data, paths, recipe)."""
    target = Path(out).expanduser().resolve()
    allowed = {Path(p).expanduser().resolve() for p in inside_ok}
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser()
        if not source.exists():
            continue
        source = source.resolve()
        inside_allowed = any(a == target or a in target.parents for a in allowed)
        if target == source or (source in target.parents and not inside_allowed) or target in source.parents:
            raise UserError(f"--out {out} overlaps the input {given}; vitprune never writes into or over what it reads: "
                            "choose another --out")


class OutputFolder:
    """An output folder for one run of ``command`` (see the module docstring). Use as a context manager."""

    def __init__(self, path: str | Path, command: str, *, inputs: Iterable[str | Path | None] = (), dist=None) -> None:
        self.path = Path(path)
        self.command = command
        self.inputs = list(inputs)
        self.dist = dist
        self.main = dist is None or dist.is_main
        self._fd: int | None = None
        self._created: list[Path] = []
        self._staging: Path | None = None
        self._manifest: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "OutputFolder":
        error = None
        if self.main:
            try:
                self._open()
            except UserError as exc:
                error = str(exc)
                self._close()
        if self.dist is not None and self.dist.world > 1:
            error = self.dist.gather(error)[0]  # the main process's verdict, on every rank
        if error:
            raise UserError(error)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.main:
            self._close()

    def _open(self) -> None:
        path = self.path
        if path.is_symlink() and not path.exists():
            raise UserError(f"--out {path} is a dangling symbolic link; remove it or pass another --out")
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file, not a folder; pass another --out")
        check_inputs(path, self.inputs)
        missing = [p for p in (path, *path.parents) if not p.exists()]
        try:
            for p in reversed(missing):
                p.mkdir()
                self._created.append(p)
            meta = path / META
            if not meta.exists():
                meta.mkdir()
                self._created.append(meta)
            self._fd = os.open(meta / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write in {exc.filename or path} ({exc.strerror or type(exc).__name__}); "
                            "choose an --out in a writable folder") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self._fd)
            os.close(self._fd)
            self._fd = None
            who = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" if holder else "another process"
            raise UserError(f"{path} is being written by another vitprune {holder.get('command', 'run')} ({who}); "
                            "wait for it to finish, or pass another --out") from None
        note = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(note) + "\n").encode(), 0)
        for stale in meta.glob("staging-*"):  # a killed run's; we hold the lock, so no live run owns them
            shutil.rmtree(stale, ignore_errors=True)
        self._manifest = self._read_manifest()

    def _close(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        if not self.owned_names():  # nothing of this run or an earlier one: leave the place as it was
            for p in reversed(self._created):
                if p.name == META and p.parent == self.path:
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    _rmdir_if_empty(p)

    # ------------------------------------------------------------------------------- manifest
    def _read_manifest(self) -> dict[str, Any]:
        file = self.path / META / MANIFEST
        if file.is_file():
            manifest = read_json(file)
            if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
                raise UserError(f"{file} is damaged; restore it or choose another --out")
            return {"format": MANIFEST_FORMAT, "files": list(manifest["files"]), "pending": list(manifest.get("pending", []))}
        legacy = sorted({e.name for pattern in LEGACY.get(self.command, ()) for e in self.path.glob(pattern)})
        settings = {"compress": "compress.json", "evaluate": "sweep.json", "discover": "config.json"}.get(self.command)
        adopted = legacy if settings and (self.path / settings).is_file() else []
        return {"format": MANIFEST_FORMAT, "files": adopted, "pending": []}

    def _write_manifest(self) -> None:
        atomic_write_json(self.path / META / MANIFEST, self._manifest)

    def owned_names(self) -> list[str]:
        return sorted(set(self._manifest.get("files", [])) | set(self._manifest.get("pending", [])))

    def foreign(self) -> list[str]:
        """Entries of the folder vitprune did not write."""
        if not self.path.is_dir():
            return []
        owned = set(self.owned_names()) | {META}
        return sorted(e.name for e in self.path.iterdir() if e.name not in owned)

    def own(self, *names: str) -> None:
        """Register entries this run writes directly (resumable state), before it writes them."""
        if self.main:
            new = [n for n in names if n not in self._manifest["files"]]
            if new:
                self._manifest["files"] = sorted(set(self._manifest["files"]) | set(new))
                self._write_manifest()

    # -------------------------------------------------------------------------------- claims
    def claim(self, settings_file: str, settings: dict, *, what: str, force: bool, ignore: Sequence[str] = (),
              normalise: Callable[[Any], dict] | None = None) -> bool:
        """Whether the folder already holds this very result (same settings, ``ignore`` keys aside); refuses foreign
        entries, and another result unless ``force`` (which then removes what vitprune wrote there)."""
        error, same = None, False
        if self.main:
            try:
                same = self._claim(settings_file, settings, what, force, ignore, normalise)
            except UserError as exc:
                error = str(exc)
        if self.dist is not None and self.dist.world > 1:
            error, same = self.dist.gather((error, same))[0]
        if error:
            raise UserError(error)
        return same

    def _claim(self, settings_file, settings, what, force, ignore, normalise) -> bool:
        foreign = self.foreign()
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise UserError(f"{self.path} holds entries vitprune did not write ({shown}); it never deletes or overwrites "
                            "them, even with --force: choose another --out or move them away")
        file = self.path / settings_file
        if file.is_file() and settings_file in self.owned_names():
            old = read_json(file)
            changed = differing(normalise(old) if normalise else old, settings, ignore)
            if not changed:
                return True
            if not force:
                raise UserError(f"{self.path} holds a {what} with different settings ({', '.join(changed)}); "
                                "pass --force to replace it or another --out")
        if force:
            self.clear()
        return False

    def clear(self, keep: Iterable[str] = ()) -> None:
        """Remove what vitprune wrote here (``--force``), except ``keep``."""
        keep = set(keep)
        for name in self.owned_names():
            if name in keep:
                continue
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
        self._manifest["files"] = sorted(n for n in self._manifest["files"] if n in keep)
        self._manifest["pending"] = []
        self._write_manifest()

    def write_settings(self, settings_file: str, settings: dict) -> None:
        """The settings file of resumable state (a sweep, a discovery run), owned and written now."""
        if self.main:
            self.own(settings_file)
            atomic_write_json(self.path / settings_file, settings)

    # ----------------------------------------------------------------------------- publishing
    @property
    def staging(self) -> Path:
        """Where this run builds its result (main process); published by ``publish``, removed otherwise."""
        if self._staging is None:
            self._staging = self.path / META / f"staging-{os.getpid()}"
            self._staging.mkdir(parents=True, exist_ok=True)
        return self._staging

    def publish(self, names: Sequence[str] | None = None) -> None:
        """Move the staged entries (all, or ``names``) into the folder: the manifest lists them as pending first, so a
        kill midway leaves only vitprune's files; then it lists them as written."""
        if not self.main or self._staging is None:
            return
        names = sorted(e.name for e in self._staging.iterdir()) if names is None else list(names)
        self._manifest["pending"] = sorted(set(self._manifest["pending"]) | set(names))
        self._write_manifest()
        for name in names:
            source, target = self._staging / name, self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(source, target)
        self._manifest["files"] = sorted(set(self._manifest["files"]) | set(names))
        self._manifest["pending"] = sorted(set(self._manifest["pending"]) - set(names))
        self._write_manifest()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def is_vitprune_folder(path: Path) -> bool:
    return (Path(path) / META).is_dir()


__all__ = ["OutputFolder", "check_inputs", "differing", "flat", "is_vitprune_folder", "META", "LEGACY"]
