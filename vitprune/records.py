"""Run records on disk: atomic JSON, resumable JSONL, and the reference ``.rlt.jsonl`` format.

A run directory holds ``config.json`` (the fully resolved configuration) and one JSON line
per image. While a run is in progress its lines go to ``paths.partial.jsonl`` (flushed and
fsynced per batch); only a finished run has ``paths.jsonl``, so no partial file looks like a
result. ``JsonlAppender`` drops a torn last line and the records of an unfinished batch when
it reopens, so a resumed run redoes exactly the batches a kill interrupted.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

CONFIG = "config.json"
PATHS = "paths.jsonl"
PARTIAL = "paths.partial.jsonl"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({type(exc).__name__}); the run folder is damaged, rerun with --force") from exc


def check_output_dir(out: Path, settings_file: str, settings: dict, *, what: str, force: bool,
                     ignore: Sequence[str] = ()) -> bool:
    """Whether ``out`` already holds this very result (same settings, ``ignore`` keys aside).

    A folder holding another result, or anything that is not a vitprune result, is refused with
    one line naming the differing settings, unless ``force`` (then the caller replaces it).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; pass another --out")
    if force:
        return False
    if (out / settings_file).is_file():
        old = read_json(out / settings_file)
        # an option newer than the folder, left empty (None, [], False), is the same run as before it existed
        changed = sorted(k for k in set(old) | set(settings) if k not in ignore and old.get(k) != settings.get(k)
                         and not (k not in old and settings.get(k) in (None, [], False)))
        if changed:
            raise UserError(f"{out} holds a {what} with different settings ({', '.join(changed)}); "
                            "pass --force to replace it or another --out")
        return True
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a vitprune {what}; pass --force or another --out")
    return False


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
                                "re-create it (discover --force) or restore it")
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

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self.records}

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


def load_run_records(run_dir: Path) -> list[dict]:
    """Records of a finished run folder (vitprune ``paths.jsonl`` or reference ``*.rlt.jsonl`` files)."""
    run_dir = Path(run_dir)
    if (run_dir / PATHS).is_file():
        return read_jsonl(run_dir / PATHS)
    if any(run_dir.glob("*.rlt.jsonl")):
        return read_reference(run_dir)
    if (run_dir / PARTIAL).is_file():
        raise UserError(f"the run in {run_dir} is unfinished; complete it with 'vitprune discover ... --resume --out {run_dir}'")
    raise UserError(f"{run_dir} holds no path records (paths.jsonl or *.rlt.jsonl); run 'vitprune discover' first")


# ------------------------------------------------------------------------- reference format
_REF_FILE = re.compile(r"^(?P<prefix>.+)-(?P<label>\d+)\.rlt\.jsonl$")


def _ints(rows: list) -> list[list[int]]:
    return [[int(round(float(u))) for u in row] for row in rows]


def _scalar(value: Any) -> float | None:
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return None if value is None else float(value)


def _from_reference_line(obj: Any, method: str) -> list[dict]:
    """Reference lines: a JSON array of per-image dicts (main scripts, one line per batch),
    a per-image dict (top-K script), or an influence-pattern dict with one row per image."""
    if isinstance(obj, list):
        return [{"path": [[p] for p in _ints(r["ja"])[0]], "score": _scalar(r.get("ja_score")),
                 "base_path": [[p] for p in _ints(r["base"])[0]] if "base" in r else None,
                 "base_score": _scalar(r.get("base_score")), "method": method} for r in obj]
    if "ja" in obj:
        return [{"path": _ints(obj["ja"]), "score": _scalar(obj.get("ja_score")),
                 "base_path": _ints(obj["base"]) if "base" in obj else None,
                 "base_score": _scalar(obj.get("base_score")), "method": method}]
    if "path" in obj:
        scores = obj.get("score") or [None] * len(obj["path"])
        return [{"path": [[p] for p in row], "score": _scalar(s), "base_path": None, "base_score": None,
                 "method": "influence-pattern"} for row, s in zip(_ints(obj["path"]), scores)]
    raise UserError(f"unrecognised reference record with keys {sorted(obj)}")


def read_reference(folder: Path, prefix: str | None = None) -> list[dict]:
    """Import ``{prefix}-{label}.rlt.jsonl`` files; image ids are ``{label}/{index in class}``."""
    folder = Path(folder)
    files = []
    for path in folder.glob("*.rlt.jsonl"):
        match = _REF_FILE.match(path.name)
        if match and (prefix is None or match["prefix"] == prefix):
            files.append((int(match["label"]), match["prefix"], path))
    if not files:
        raise UserError(f"no reference files {prefix or '<prefix>'}-<label>.rlt.jsonl in {folder}")
    prefixes = {p for _, p, _ in files}
    if len(prefixes) > 1:
        raise UserError(f"{folder} holds several reference prefixes {sorted(prefixes)}; pass --prefix")
    pfx = prefixes.pop()
    args = {}
    if (folder / f"{pfx}.args.json").is_file():
        args = read_json(folder / f"{pfx}.args.json")
    steps = int(args.get("ig_total_step", 20))
    records = []
    for label, _, path in sorted(files):
        n = 0
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                for rec in _from_reference_line(json.loads(line), "jas"):
                    rec.update(id=f"{label}/{n}", label=label, target=label, pred=None, prob=None,
                               steps=steps, token_scope="cls", topk=len(rec["path"][0]))
                    records.append(rec)
                    n += 1
    return records


def write_reference(records: list[dict], folder: Path, prefix: str = "imgnet_all", args: dict | None = None) -> list[Path]:
    """Export records as reference files, one per label: K = 1 runs in the main scripts' format
    (a JSON array per line), K > 1 in the top-K script's format (one dict per line)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_label: dict[int, list[dict]] = {}
    for rec in records:
        by_label.setdefault(int(rec["label"]), []).append(rec)
    written = []
    for label, recs in sorted(by_label.items()):
        lines = []
        for r in recs:
            topk = len(r["path"][0])
            if topk == 1:
                item = {"ja": [[u[0] for u in r["path"]]], "ja_score": [[r["score"]]]}
                if r.get("base_path"):
                    item.update(base=[[u[0] for u in r["base_path"]]], base_score=[[r["base_score"]]])
                lines.append(json.dumps([item]))
            else:
                item = {"ja": r["path"], "ja_score": [[r["score"]]]}
                if r.get("base_path"):
                    item.update(base=r["base_path"], base_score=[[r["base_score"]]])
                lines.append(json.dumps(item))
        path = folder / f"{prefix}-{label}.rlt.jsonl"
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        written.append(path)
    atomic_write_json(folder / f"{prefix}.args.json", args or {})
    return written

