"""Output folders: the one place that locks, checks, creates, replaces and publishes them.

Ownership: every folder vitprune writes holds ``.vitprune/manifest.json``: the command that owns the folder and the
names (plain top-level entries) vitprune wrote there. ``--force`` replaces those and nothing else; a folder holding
any other entry is refused, even with ``--force``, naming the foreign entries. A folder belongs to one command: another
command's output into it, or into an entry a vitprune folder owns (a compress result's ``paths/``), is refused. A
folder written by vitprune 0.1 (no manifest) is adopted only when it holds the whole set of files its command
always writes. Manifest entries are checked to be plain names; symbolic links inside an output are never followed
for writing or deleting.

Transactions: a result is built in ``.vitprune/staging-<pid>/`` and published when complete (each entry renamed into
place; the manifest lists them as pending first, so a kill in between leaves nothing unowned). Replacing a different
result (``--force``) never destroys it first: the new run's resumable state and outputs go to ``.vitprune/next/``
(kept across a kill, so the same ``--force`` command resumes there), and only its publication removes what the old
result had that the new one does not. A run that fails or is interrupted leaves the folder as it was, except for the
resumable state it registered (``own``) in a folder it did not replace. A folder the run created and left empty is
removed again.

One writer per folder: an ``fcntl.flock`` on ``.vitprune/lock``. The kernel drops a flock when its process ends,
however it ends (exit, SIGINT, kill -9), so a lock left by a dead run is never stale. A second live writer gets one
line naming the holder (pid, host, start time). Under several processes (torchrun / accelerate) the main process
does all of this and tells every rank the verdict.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import atomic_write_json

META = ".vitprune"
MANIFEST = "manifest.json"
LOCK = "lock"
NEXT = "next"
MANIFEST_FORMAT = "vitprune.manifest/2"
# keys of a settings file that never make two runs different
IDENTITY_FREE = frozenset({"vitprune_version", "format"})
# what each command of vitprune 0.1 always wrote (a folder without a manifest is adopted only when it holds all of
# them) and what it may have written besides
LEGACY_REQUIRED = {
    "compress": ("compress.json", "mask.json", "model.safetensors", "vitprune.json", "report.json", "report.md"),
    "evaluate": ("sweep.json", "points.jsonl"),
    "discover": ("config.json", "paths*.jsonl"),  # a finished or an interrupted run
}
LEGACY = {
    "compress": (*LEGACY_REQUIRED["compress"], "paths", "model.onnx", "model.int8.onnx", "config.yaml"),
    "evaluate": (*LEGACY_REQUIRED["evaluate"], "paths-*", "results.csv", "results.json", "results.md", "accuracy_vs_sparsity.png",
                 "config.yaml"),
    "discover": (*LEGACY_REQUIRED["discover"], "paths.partial*.jsonl", "importance.safetensors", "importance.partial*",
                 "analysis", "config.yaml"),
}
# an entry a command's folder owns that another command may write into (its own folder nested there)
NESTED_OK = {("discover", "analysis"): "analyze", ("convert", "analysis"): "analyze", ("compress", "paths"): "analyze"}
# the settings file each command writes: names the owner of a folder whose manifest predates the command field
SETTINGS_FILES = {"compress.json": "compress", "sweep.json": "evaluate", "config.json": "discover", "analysis.json": "analyze",
                  "convert.json": "convert"}
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")


def plain_name(name: Any) -> bool:
    """Whether ``name`` is one plain entry name: no separator, not '.' or '..', not hidden, not absolute."""
    return isinstance(name, str) and bool(_PLAIN.match(name)) and name not in (".", "..")


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


def output_path(out: str | Path | None) -> Path | None:
    """``--out`` as a path; an empty string is refused (it would mean the current folder)."""
    if out is None:
        return None
    if str(out).strip() == "":
        raise UserError("--out is empty; pass a folder (e.g. --out runs/mine)")
    return Path(out)


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


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A folder's manifest, checked (None when it has none); a damaged one is one line naming the fix."""
    file = Path(folder) / META / MANIFEST
    if not file.is_file() or file.is_symlink():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    names = manifest.get("files") if isinstance(manifest, dict) else None
    pending = manifest.get("pending", []) if isinstance(manifest, dict) else None
    if not isinstance(names, list) or not isinstance(pending, list) or not all(plain_name(n) for n in [*names, *pending]):
        raise UserError(f"{file} is damaged or lists entries that are not plain names inside the folder; vitprune will not "
                        f"delete or replace anything there: restore the file, or move the folder's contents elsewhere")
    command = manifest.get("command") or next((c for f, c in SETTINGS_FILES.items() if f in names), None)
    return {"format": MANIFEST_FORMAT, "command": command, "files": list(names), "pending": list(pending)}


def owner_above(path: Path) -> tuple[Path, str | None, str] | None:
    """(folder, its command, entry) when ``path`` lies inside an entry a vitprune folder above it owns."""
    target = Path(path).expanduser().absolute()
    for parent in target.parents:
        manifest = read_manifest(parent) if (parent / META).is_dir() else None
        if manifest is None:
            continue
        entry = target.relative_to(parent).parts[0]
        if entry in manifest["files"] or entry in manifest["pending"]:
            return parent, manifest.get("command"), entry
    return None


def check_not_being_written(path: Path) -> None:
    """Refuse (one line naming the holder) to read a vitprune folder another live run is writing now."""
    lock = Path(path) / META / LOCK
    if not lock.is_file() or lock.is_symlink():
        return
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        holder = _read_holder(fd)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            return  # this very process holds it: a result it is reading back
        who = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" if holder else "another process"
        raise UserError(f"{path} is being written by another vitprune {holder.get('command', 'run')} ({who}); wait for it to "
                        "finish, or pass another --out") from None
    finally:
        os.close(fd)


class OutputFolder:
    """An output folder for one run of ``command`` (see the module docstring). Use as a context manager."""

    def __init__(self, path: str | Path, command: str, *, inputs: Iterable[str | Path | None] = (), dist=None) -> None:
        self.path = Path(path)
        self.command = command
        self.inputs = list(inputs)
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.replacing = False  # --force over a different result: the new one is built in .vitprune/next/
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
        if (path / META).is_symlink():
            raise UserError(f"{path / META} is a symbolic link; vitprune never writes through one: remove it or pass another --out")
        check_inputs(path, self.inputs)
        if META in path.expanduser().absolute().parts:
            raise UserError(f"{path} lies inside a {META} folder, vitprune's own bookkeeping; pass another --out")
        above = owner_above(path)
        if above is not None and NESTED_OK.get((above[1], above[2])) != self.command:
            raise UserError(f"{path} lies inside {above[0] / above[2]}, which belongs to the {above[1] or 'vitprune'} result in "
                            f"{above[0]}; write the {self.command} result elsewhere (another --out)")
        missing = [p for p in (path, *path.parents) if not p.exists()]
        try:
            for p in reversed(missing):
                p.mkdir()
                self._created.append(p)
            meta = path / META
            if not meta.exists():
                meta.mkdir()
                self._created.append(meta)
            self._fd = os.open(meta / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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
        for stale in [*meta.glob("staging-*"), *meta.glob("trash-*")]:  # a killed run's; we hold the lock, so no live run owns them
            _remove(stale)
        self._manifest = self._read_manifest()
        owner = self._manifest.get("command")
        if owner is not None and owner != self.command and self.owned_names():
            raise UserError(f"{path} holds a vitprune {owner} result; a {self.command} result is written to its own folder: "
                            "pass another --out")

    def _close(self) -> None:
        if self._staging is not None and not self.replacing:
            _remove(self._staging)
            self._staging = None
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        if not self.owned_names() and not (self.path / META / NEXT).exists():  # nothing of this run or an earlier one
            for p in reversed(self._created):
                if p.name == META and p.parent == self.path:
                    _remove(p)
                else:
                    _rmdir_if_empty(p)

    # ------------------------------------------------------------------------------- manifest
    def _read_manifest(self) -> dict[str, Any]:
        manifest = read_manifest(self.path)
        if manifest is not None:
            return manifest
        required = LEGACY_REQUIRED.get(self.command, ())
        if required and all(any(p.is_file() for p in self.path.glob(name)) for name in required) and self._legacy_settings():
            adopted = sorted({e.name for pattern in LEGACY.get(self.command, ()) for e in self.path.glob(pattern)})
            return {"format": MANIFEST_FORMAT, "command": self.command, "files": adopted, "pending": []}
        return {"format": MANIFEST_FORMAT, "command": None, "files": [], "pending": []}

    def _legacy_settings(self) -> bool:
        """Whether the settings file of a folder without a manifest is the one this command of vitprune 0.1 wrote."""
        file = self.path / LEGACY_REQUIRED[self.command][0]
        settings = _read_settings(file)
        if settings is None:
            return False
        if self.command == "discover":  # a run header: nested (format 2) or flat (format 1) with its discovery settings
            return settings.get("command", "discover") == "discover" and ("discovery" in settings or "steps" in settings)
        return True

    def _write_manifest(self) -> None:
        self._manifest["command"] = self.command
        atomic_write_json(self.path / META / MANIFEST, self._manifest)

    def owned_names(self) -> list[str]:
        return sorted(set(self._manifest.get("files", [])) | set(self._manifest.get("pending", [])))

    @property
    def complete(self) -> bool:
        """Whether the last publication finished (no entry pending)."""
        return not self._manifest.get("pending")

    def foreign(self) -> list[str]:
        """Entries of the folder vitprune did not write."""
        if not self.path.is_dir():
            return []
        owned = set(self.owned_names()) | {META}
        return sorted(e.name for e in self.path.iterdir() if e.name not in owned)

    def own(self, *names: str) -> None:
        """Register entries this run writes directly into the folder (resumable state), before it writes them. An
        entry that is a symbolic link is refused: vitprune never writes through one."""
        for name in names:
            if not plain_name(name):
                raise ValueError(f"not a plain entry name: {name!r}")
            if (self.path / name).is_symlink():
                raise UserError(f"{self.path / name} is a symbolic link; vitprune never writes through one: remove it or "
                                "pass another --out")
        if self.main and not self.replacing:
            new = [n for n in names if n not in self._manifest["files"]]
            if new:
                self._manifest["files"] = sorted(set(self._manifest["files"]) | set(new))
                self._write_manifest()

    def discard(self, name: str) -> None:
        """Remove a resumable entry the finished result no longer needs (a recovery's state), and its manifest line."""
        if not self.main or not plain_name(name):
            return
        _remove(self.path / name)
        if name in self._manifest["files"]:
            self._manifest["files"] = sorted(set(self._manifest["files"]) - {name})
            self._write_manifest()

    def workdir(self, name: str = "") -> Path:
        """Where this run keeps its resumable entry ``name`` (registered with ``own``): in the folder, or, while replacing
        a different result, in ``.vitprune/next/`` (published with the result). ``name=""``: the folder itself."""
        base = self.path / META / NEXT if self.replacing else self.path
        if name:
            self.own(name)
        return base / name if name else base

    # -------------------------------------------------------------------------------- claims
    def claim(self, settings_file: str, settings: dict, *, what: str, force: bool, ignore: Sequence[str] = (),
              normalise: Callable[[Any], dict] | None = None) -> bool:
        """Whether the folder already holds this very result (same settings, ``ignore`` keys aside); refuses foreign
        entries, and another result unless ``force``. With ``force`` the result is made anew, whatever the folder holds:
        it is built in ``.vitprune/next/`` and replaces the old one only when it is published."""
        error, same, replacing = None, False, False
        if self.main:
            try:
                same = self._claim(settings_file, settings, what, force, ignore, normalise)
                replacing = self.replacing
            except UserError as exc:
                error = str(exc)
        if self.dist is not None and self.dist.world > 1:
            error, same, replacing = self.dist.gather((error, same, replacing))[0]
            self.replacing = replacing
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
        if file.is_symlink():
            raise UserError(f"{file} is a symbolic link; vitprune never writes through one: remove it or pass another --out")
        nxt = self.path / META / NEXT
        if file.is_file() and settings_file in self.owned_names():
            old = _read_settings(file)
            changed = differing(normalise(old) if normalise else old, settings, ignore) if old is not None else ["(unreadable)"]
            if not changed and not force:
                _remove(nxt)  # an abandoned replacement of this result
                return True
            if changed and not force:
                raise UserError(f"{self.path} holds a {what} with different settings ({', '.join(changed)}); "
                                "pass --force to replace it (it stays until the new one is complete) or another --out")
            self.replacing = True
            previous = _read_settings(nxt / settings_file) if (nxt / settings_file).is_file() else None
            if previous is None or differing(normalise(previous) if normalise else previous, settings, ignore):
                _remove(nxt)  # an abandoned replacement of other settings: start over
            nxt.mkdir(exist_ok=True)
            atomic_write_json(nxt / settings_file, settings)
            return False
        _remove(nxt)
        return False

    def write_settings(self, settings_file: str, settings: dict) -> None:
        """The settings file of resumable state (a sweep, a discovery run), owned and written now."""
        if self.main:
            atomic_write_json(self.workdir(settings_file), settings)

    # ----------------------------------------------------------------------------- publishing
    @property
    def staging(self) -> Path:
        """Where this run builds its result (main process); published by ``publish``, removed otherwise."""
        if self._staging is None:
            self._staging = self.path / META / (NEXT if self.replacing else f"staging-{os.getpid()}")
            self._staging.mkdir(parents=True, exist_ok=True)
        return self._staging

    def publish(self, names: Sequence[str] | None = None) -> None:
        """Move the staged entries (all, or ``names``) into the folder: the manifest lists them as pending first, so a
        kill midway leaves only vitprune's files; then it lists them as written. When replacing, the old result's
        entries the new one does not have are removed last, and ``.vitprune/next/`` with them."""
        if not self.main:
            return
        stage = self.staging
        names = sorted(e.name for e in stage.iterdir()) if names is None else list(names)
        old = set(self.owned_names()) if self.replacing else set()
        self._manifest["pending"] = sorted(set(self._manifest["pending"]) | set(names))
        self._write_manifest()
        trash = self.path / META / f"trash-{os.getpid()}"
        for name in names:
            source, target = stage / name, self.path / name
            if target.is_dir() and not target.is_symlink():
                trash.mkdir(exist_ok=True)
                os.replace(target, trash / name)
            elif target.is_symlink():
                target.unlink()
            os.replace(source, target)
        self._manifest["files"] = sorted((set(self._manifest["files"]) - old) | set(names))
        self._manifest["pending"] = sorted(set(self._manifest["pending"]) - set(names) - old)
        self._write_manifest()
        for name in sorted(old - set(names)):
            _remove(self.path / name)
        _remove(trash)
        if self.replacing:
            _remove(stage)
            self._staging = None
            self.replacing = False


def _read_settings(file: Path) -> dict | None:
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder tree; nothing if absent."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


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
    return (Path(path) / META).is_dir() and not (Path(path) / META).is_symlink()


__all__ = ["OutputFolder", "check_inputs", "output_path", "check_not_being_written", "differing", "flat", "is_vitprune_folder", "read_manifest", "owner_above",
           "plain_name", "META", "NEXT", "LEGACY", "LEGACY_REQUIRED"]
