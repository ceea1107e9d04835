"""Path records: one typed record per image, the run header they came from, and their files.

A discover run folder holds ``config.json`` (the ``RunHeader``: discovery settings, model, data and
image selection) and one JSON line per image (a ``PathRecord``). While a run is in progress its lines
go to ``paths.partial.jsonl`` (flushed and fsynced per batch); only a finished run has
``paths.jsonl``, so no partial file looks like a result. The reference code's ``{prefix}-{label}.rlt.jsonl``
files are read and written here too (``read_reference`` / ``write_reference``).

Formats: the header carries ``format`` (``vitprune.discover-run/2``); a version-1 header (the flat
``config.json`` of vitprune 0.1 runs, no ``format`` key) still loads. Record lines are unchanged
since version 1.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UserError
from ..files import atomic_write_json, atomic_write_text, read_json, read_jsonl
from .importance import IMPORTANCE, ImportanceSums
from .settings import DiscoverySettings

CONFIG = "config.json"
PATHS = "paths.jsonl"
PARTIAL = "paths.partial.jsonl"
RUN_FORMAT = "vitprune.discover-run/2"


# ------------------------------------------------------------------------------------ records
@dataclass
class PathRecord:
    """One image's path: ``path[l]`` = the K units of block l (best first) and its JAS ``score``.

    ``base_path`` / ``base_score`` are the activation baseline (the K largest clean units per block,
    scored the same way); ``target`` is the class F was taken for (the label, or the prediction),
    ``pred`` and ``prob`` the clean prediction and softmax probability of the target. The run's
    settings are repeated on every line (method ... objective), as vitprune always wrote them.
    """

    id: str
    label: int
    target: int
    path: list[list[int]]
    score: float | None = None
    base_path: list[list[int]] | None = None
    base_score: float | None = None
    pred: int | None = None
    prob: float | None = None
    dense_path: list[list[int]] | None = None  # on a pruned model: the path's units as indices of the dense model
    method: str | None = None
    steps: int | None = None
    token_scope: str | None = None
    topk: int | None = None
    objective: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k in _ALWAYS}

    @classmethod
    def from_json(cls, obj: Any, where: str = "a record") -> "PathRecord":
        """A record from one JSON line; anything that is not one is a UserError naming ``where``."""
        try:
            if not isinstance(obj, dict):
                raise TypeError(type(obj).__name__)
            known = {f.name for f in fields(cls)}
            rec = cls(**{k: v for k, v in obj.items() if k in known and k != "target"},
                      target=obj.get("target", obj.get("label")))
            rec.id, rec.label, rec.target = str(rec.id), int(rec.label), int(rec.target)
            rec.path = _unit_lists(rec.path)
            rec.base_path = _unit_lists(rec.base_path) if rec.base_path is not None else None
            rec.dense_path = _unit_lists(rec.dense_path) if rec.dense_path is not None else None
        except (TypeError, ValueError, KeyError) as exc:
            raise UserError(f"{where} is not a vitprune path record ({type(exc).__name__}: {exc}); "
                            "re-create the run with 'vitprune discover'") from exc
        return rec


_ALWAYS = {"id", "label", "target", "path", "score", "base_path", "base_score", "pred", "prob"}


def _unit_lists(path: Any) -> list[list[int]]:
    if not isinstance(path, list) or not all(isinstance(units, list) for units in path):
        raise TypeError("path is not a list of unit lists")
    out = []
    for units in path:
        if not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise ValueError("unit indices must be whole numbers")
        out.append(list(units))
    return out


# ------------------------------------------------------------------------------------- header
@dataclass(frozen=True)
class ModelInfo:
    """The model a run was made on: how to rebuild it (``source``, as ``load_model`` recorded it), its MLP widths, a
    fingerprint of its weights as loaded, and for a pruned model the dense index of every kept unit (``unit_map``)."""

    source: dict[str, Any]
    widths: tuple[int, ...]
    fingerprint: str | None = None  # None: a version-1 header
    unit_map: tuple[tuple[int, ...], ...] | None = None

    @property
    def spec(self) -> str | None:
        return self.source.get("spec")

    @property
    def depth(self) -> int:
        return len(self.widths)


@dataclass(frozen=True)
class DataInfo:
    """The images a run covered: data spec, pool, selection and class names."""

    spec: str
    pool: str = "calibration"
    per_class: int | None = None
    classes: tuple[int, ...] | None = None
    class_names: tuple[str, ...] = ()
    num_images: int = 0
    image_ids: str | None = None  # sha256 of the selected image ids, in order; None: a version-1 header
    digest: str | None = None  # of the selected images' content (``ImagePool.digest``); None: written before it existed


@dataclass(frozen=True)
class RunHeader:
    """What a discover run is: the records in its folder hold for exactly these settings, model and images."""

    discovery: DiscoverySettings
    model: ModelInfo
    data: DataInfo
    batch_size: int = 16
    command: str = "discover"
    vitprune_version: str = __version__
    format: str = RUN_FORMAT

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as read back

    @classmethod
    def from_json(cls, obj: Any, where: str = "config.json") -> "RunHeader":
        """Version 2 (nested, ``format``) or version 1 (the flat config.json of vitprune 0.1)."""
        if not isinstance(obj, dict):
            raise UserError(f"{where} is not a vitprune run header; re-create the run with 'vitprune discover'")
        try:
            if "format" not in obj:
                return cls._from_v1(obj)
            if obj["format"] not in (RUN_FORMAT, "vitprune.discover-run/1"):
                raise UserError(f"{where} has format '{obj['format']}', which this vitprune {__version__} does not read; "
                                "upgrade vitprune or re-create the run")
            data, model = obj["data"], obj["model"]
            unit_map = model.get("unit_map")
            return cls(
                discovery=DiscoverySettings.from_json(obj["discovery"]),
                model=ModelInfo(dict(model["source"]), tuple(int(w) for w in model["widths"]), model.get("fingerprint"),
                                tuple(tuple(int(u) for u in k) for k in unit_map) if unit_map is not None else None),
                data=DataInfo(data["spec"], data.get("pool", "calibration"), data.get("per_class"),
                              tuple(data["classes"]) if data.get("classes") is not None else None,
                              tuple(data.get("class_names") or ()), int(data.get("num_images") or 0), data.get("image_ids"),
                              data.get("digest")),
                batch_size=int(obj.get("batch_size", 16)), command=obj.get("command", "discover"),
                vitprune_version=obj.get("vitprune_version", "?"), format=obj["format"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where} is damaged ({type(exc).__name__}: {exc}); re-create the run with 'vitprune discover'") from exc

    @classmethod
    def _from_v1(cls, obj: dict[str, Any]) -> "RunHeader":
        widths = obj.get("mlp_hidden") or []
        source = obj.get("model_source") or {"spec": obj.get("model"), "arch": obj.get("arch")}
        return cls(
            discovery=DiscoverySettings.from_json(obj),
            model=ModelInfo(dict(source), tuple(int(w) for w in widths)),
            data=DataInfo(obj.get("data") or "", obj.get("pool", "calibration"), obj.get("per_class"),
                          tuple(obj["classes"]) if obj.get("classes") is not None else None,
                          tuple(obj.get("class_names") or ()), int(obj.get("num_images") or 0)),
            batch_size=int(obj.get("batch_size", 16)), command=obj.get("command", "discover"),
            vitprune_version=obj.get("vitprune_version", "?"), format="vitprune.discover-run/1",
        )


# --------------------------------------------------------------------------------------- runs
@dataclass
class PathRun:
    """A finished run: its records, header (None for imported reference files) and dense importance (method jas)."""

    records: list[PathRecord]
    header: RunHeader | None = None
    importance: ImportanceSums | None = None
    folder: Path | None = None
    # what this process's discovery of the run cost (PathFinder.cost); None when the run was loaded finished
    cost: dict | None = None

    @property
    def name(self) -> str:
        return str(self.folder) if self.folder is not None else "these path records"

    @property
    def method(self) -> str:
        methods = {r.method or "jas" for r in self.records}
        if len(methods) != 1:
            raise UserError(f"{self.name} mixes path methods {sorted(methods)}; pass one run per method")
        return methods.pop()

    @property
    def token_scope(self) -> str:
        if self.header is not None:
            return self.header.discovery.token_scope
        return (self.records[0].token_scope if self.records else None) or "auto"

    def check_fits(self, widths: list[int]) -> None:
        """Records of another model (other depth, or units beyond its widths) are one UserError."""
        for rec in self.records:
            for key, path in (("path", rec.path), ("base_path", rec.base_path)):
                if path is None:
                    continue
                if len(path) != len(widths):
                    raise UserError(f"the path records in {self.name} have {len(path)} layers but the model has {len(widths)} "
                                    "blocks; pass paths discovered on this model")
                for layer, units in enumerate(path):
                    if not all(0 <= u < widths[layer] for u in units):
                        raise UserError(f"the path records in {self.name} name units beyond this model's {widths[layer]} MLP "
                                        f"units in block {layer}; pass paths discovered on this model")

    def require_importance(self, what: str) -> ImportanceSums:
        """The dense importance, or one line saying how to get a run that has it."""
        if self.importance is None:
            raise UserError(
                f"{what} needs the dense path importance, which {self.name} does not have "
                "(reference .rlt.jsonl files, --method influence-pattern, or an older vitprune run); "
                "run 'vitprune discover --method jas' (or drop --paths and let compress discover) and pass that run"
            )
        return self.importance


def read_records(path: Path, *, finished: bool = False) -> list[PathRecord]:
    """The records of a JSONL file; ``finished``: a file that must be whole (a torn last line is damage, not a kill)."""
    if finished:
        with open(path, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            raise UserError(f"{path} ends in a torn line: the file is damaged; restore it or re-create the run")
    return [PathRecord.from_json(obj, f"{path} line {n}") for n, obj in enumerate(read_jsonl(path), 1)]


SETTING_FIELDS = ("method", "steps", "token_scope", "topk", "objective")


def check_integrity(run: "PathRun") -> None:
    """A finished run against its own header: one record per selected image (count and ids), none twice, and every
    line of the header's settings. A run without a header can only be checked for repeated images."""
    seen: set[str] = set()
    for rec in run.records:
        if rec.id in seen:
            raise UserError(f"{run.name} holds image '{rec.id}' more than once: the records are damaged; re-create the run")
        seen.add(rec.id)
    header = run.header
    if header is None:
        return
    data = header.data
    if data.num_images and len(run.records) != data.num_images:
        raise UserError(f"{run.name} holds {len(run.records)} records but its header says {data.num_images} images: the run is "
                        "damaged or was edited; re-create it")
    if data.image_ids is not None and ids_digest([r.id for r in run.records]) != data.image_ids:
        raise UserError(f"the records in {run.name} are not of the images its header names (or not in their order): the run "
                        "was edited; re-create it")
    d = header.discovery
    for n, rec in enumerate(run.records, 1):
        other = {k: getattr(rec, k) for k in SETTING_FIELDS
                 if getattr(rec, k) is not None and getattr(rec, k) != getattr(d, k, getattr(rec, k))}
        if other:
            raise UserError(f"record {n} of {run.name} was made with {', '.join(f'{k}={v}' for k, v in other.items())}, not "
                            "its header's settings: the run was edited; re-create it")


def write_records(path: Path, records: list[PathRecord]) -> None:
    atomic_write_text(path, "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records))


def read_header(folder: Path) -> RunHeader | None:
    path = Path(folder) / CONFIG
    if not path.is_file():
        return None
    obj = read_json(path)
    if isinstance(obj, dict) and obj.get("command") == "convert":
        return None  # records imported from reference files: no discovery header
    return RunHeader.from_json(obj, str(path))


def load_run(folder: Path) -> PathRun:
    """A finished run folder: vitprune ``paths.jsonl`` (+ header and importance) or reference ``*.rlt.jsonl`` files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass a finished 'vitprune discover' run folder")
    if (folder / PATHS).is_file():
        importance = ImportanceSums.load(folder / IMPORTANCE)[0] if (folder / IMPORTANCE).is_file() else None
        run = PathRun(read_records(folder / PATHS, finished=True), read_header(folder), importance, folder)
        check_integrity(run)
        return run
    if any(folder.glob("*.rlt.jsonl")):
        records, header = read_reference_run(folder)
        run = PathRun(records, header, None, folder)
        check_integrity(run)
        return run
    if (folder / PARTIAL).is_file():
        raise UserError(f"the run in {folder} is unfinished; complete it with 'vitprune discover ... --resume --out {folder}'")
    raise UserError(f"{folder} holds no path records (paths.jsonl or *.rlt.jsonl); run 'vitprune discover' first")


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


def _from_reference_line(obj: Any) -> list[dict]:
    """Reference lines: a JSON array of per-image dicts (main scripts, one line per batch),
    a per-image dict (top-K script), or an influence-pattern dict with one row per image."""
    if isinstance(obj, list):
        return [{"path": [[p] for p in _ints(r["ja"])[0]], "score": _scalar(r.get("ja_score")),
                 "base_path": [[p] for p in _ints(r["base"])[0]] if "base" in r else None,
                 "base_score": _scalar(r.get("base_score")), "method": "jas"} for r in obj]
    if "ja" in obj:
        return [{"path": _ints(obj["ja"]), "score": _scalar(obj.get("ja_score")),
                 "base_path": _ints(obj["base"]) if "base" in obj else None,
                 "base_score": _scalar(obj.get("base_score")), "method": "jas"}]
    if "path" in obj:
        scores = obj.get("score") or [None] * len(obj["path"])
        return [{"path": [[p] for p in row], "score": _scalar(s), "base_path": None, "base_score": None,
                 "method": "influence-pattern"} for row, s in zip(_ints(obj["path"]), scores)]
    raise UserError(f"unrecognised reference record with keys {sorted(obj)}")


def read_reference_run(folder: Path, prefix: str | None = None) -> tuple[list[PathRecord], RunHeader | None]:
    """Reference files as records, and the vitprune header ``convert`` stored beside them (``{prefix}.args.json`` keys
    ``vitprune`` and ``vitprune_ids``): with it, the records get their original image ids back, so the provenance
    checks hold across a round trip; without it, the records are of unknown provenance (header None)."""
    records = read_reference(folder, prefix)
    pfx = _reference_prefix(folder, prefix)
    args_file = Path(folder) / f"{pfx}.args.json"
    args = read_json(args_file) if args_file.is_file() else {}
    if not isinstance(args, dict) or not args.get("vitprune"):
        return records, None
    header = RunHeader.from_json(args["vitprune"], str(args_file))
    for rec in records:  # the reference format keeps no settings per line: the header's are the records'
        for name in SETTING_FIELDS:
            setattr(rec, name, getattr(header.discovery, name))
    ids = args.get("vitprune_ids")
    if isinstance(ids, dict):
        by_label: dict[int, list[PathRecord]] = {}
        for rec in records:
            by_label.setdefault(rec.label, []).append(rec)
        for label, recs in by_label.items():
            names = ids.get(str(label))
            if not isinstance(names, list) or len(names) != len(recs):
                raise UserError(f"{args_file} names {len(names) if isinstance(names, list) else 'no'} images of class {label} "
                                f"but its reference file holds {len(recs)}: the files were edited; re-create them with convert")
            for rec, name in zip(recs, names):
                rec.id = str(name)
        order = {i: n for n, i in enumerate(i for label in sorted(ids, key=int) for i in ids[label])}
        if header.data.image_ids is not None:  # back in the run's own image order
            records.sort(key=lambda r: order.get(r.id, len(order)))
    return records, header


def _reference_prefix(folder: Path, prefix: str | None) -> str:
    prefixes = {m["prefix"] for p in Path(folder).glob("*.rlt.jsonl") if (m := _REF_FILE.match(p.name))
                and (prefix is None or m["prefix"] == prefix)}
    if len(prefixes) != 1:
        raise UserError(f"{folder} holds reference prefixes {sorted(prefixes)}; pass --prefix")
    return prefixes.pop()


def read_reference(folder: Path, prefix: str | None = None) -> list[PathRecord]:
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
    args = read_json(folder / f"{pfx}.args.json") if (folder / f"{pfx}.args.json").is_file() else {}
    steps = int(args.get("ig_total_step", 20))
    records = []
    for label, _, path in sorted(files):
        n = 0
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read reference file {path} ({type(exc).__name__}); restore or re-create it") from exc
        for obj in lines:
            for rec in _from_reference_line(obj):
                rec.update(id=f"{label}/{n}", label=label, target=label, steps=steps, token_scope="cls", topk=len(rec["path"][0]))
                records.append(PathRecord.from_json(rec, str(path)))
                n += 1
    return records


def write_reference(records: list[PathRecord], folder: Path, prefix: str = "imgnet_all", args: dict | None = None) -> list[Path]:
    """Export records as reference files, one per label: K = 1 runs in the main scripts' format
    (a JSON array per line), K > 1 in the top-K script's format (one dict per line). ``{prefix}.args.json`` holds
    ``args`` and, in ``vitprune_ids``, each file's image ids in line order (so an import restores them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_label: dict[int, list[PathRecord]] = {}
    for rec in records:
        by_label.setdefault(rec.label, []).append(rec)
    args = {**(args or {}), "vitprune_ids": {str(label): [r.id for r in recs] for label, recs in sorted(by_label.items())}}
    written = []
    for label, recs in sorted(by_label.items()):
        lines = []
        for r in recs:
            topk = len(r.path[0])
            if topk == 1:
                item = {"ja": [[u[0] for u in r.path]], "ja_score": [[r.score]]}
                if r.base_path:
                    item.update(base=[[u[0] for u in r.base_path]], base_score=[[r.base_score]])
                lines.append(json.dumps([item]))
            else:
                item = {"ja": r.path, "ja_score": [[r.score]]}
                if r.base_path:
                    item.update(base=r.base_path, base_score=[[r.base_score]])
                lines.append(json.dumps(item))
        path = folder / f"{prefix}-{label}.rlt.jsonl"
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        written.append(path)
    atomic_write_json(folder / f"{prefix}.args.json", args)
    return written


def ids_digest(ids: list[str]) -> str:
    """sha256 of image ids in order: what a run header records of its selection."""
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


__all__ = ["ids_digest", "check_integrity", "read_reference_run", "SETTING_FIELDS", "PathRecord", "RunHeader", "ModelInfo", "DataInfo", "PathRun", "load_run", "read_records", "write_records",
           "read_header", "read_reference", "write_reference", "CONFIG", "PATHS", "PARTIAL", "RUN_FORMAT"]
