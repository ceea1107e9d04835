"""Dense path importance: the greedy step's score of every unit, accumulated per class.

Discovery's greedy step t scores every unit j of block t, S_t(j), conditioned on the path units
already chosen in the earlier blocks, and keeps only the K best. Here all of them are kept: per
class c and block t, running sums over the class's images of S, of |S|, of S normalised per
image (S / sum_j |S_j|) and of |I|, where I_t(j) = sum_tau G_t[tau, j] a_t[tau, j] / m is the
unit's own term of S (its integrated gradient, without the cross terms with the earlier path
units), plus the image count. A criterion ranks units by the class-balanced mean
(the average over classes of the per-class means, so every class weighs the same).

On disk, next to ``paths.jsonl``: ``importance.safetensors`` with, per statistic and block, a
(classes, H_block) fp64 array (keys ``sum/{b}``, ``abs/{b}``, ``norm/{b}``, ``ig/{b}``), ``count`` and
``classes``. While a run is in progress every process keeps ``importance.partial[...]/``: one
file per class and a manifest that commits how many of the shard's records the sums cover; the
records file is cut back to that count on resume, so sums and records never disagree.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_write_json, read_json, replace_atomically, safetensors_os_error

STATS = ("sum", "abs", "norm", "ig")  # S, |S|, S / sum_j |S_j|, |I|
AGGREGATIONS = {"mean": "sum", "abs": "abs", "norm": "norm", "ig": "ig"}  # criterion option -> statistic
IMPORTANCE = "importance.safetensors"
MANIFEST = "state.json"


@dataclass
class ImportanceSums:
    """Per-class running sums of the dense greedy scores, one (H_b,) fp64 vector per statistic and block."""

    widths: tuple[int, ...]
    per_class: dict[int, dict[str, list[torch.Tensor]]] = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)

    def _class(self, c: int) -> dict[str, list[torch.Tensor]]:
        if c not in self.per_class:
            self.per_class[c] = {s: [torch.zeros(w, dtype=torch.float64) for w in self.widths] for s in STATS}
            self.count[c] = 0
        return self.per_class[c]

    def add(self, classes: Sequence[int], step_scores: Sequence[torch.Tensor], step_own: Sequence[torch.Tensor]) -> set[int]:
        """Add one batch: ``classes`` (B,) and per block the scores S and own terms I (B, H_b); returns the classes touched."""
        if len(step_scores) != len(self.widths) or len(step_own) != len(self.widths):
            raise ValueError("one score matrix per block")
        scores = [s.detach().double().cpu() for s in step_scores]
        own = [s.detach().double().cpu() for s in step_own]
        for i, c in enumerate(int(c) for c in classes):
            acc = self._class(c)
            for b, s in enumerate(scores):
                row = s[i]
                total = row.abs().sum()
                acc["sum"][b] += row
                acc["abs"][b] += row.abs()
                acc["norm"][b] += row / total if total > 0 else torch.zeros_like(row)
                acc["ig"][b] += own[b][i].abs()
            self.count[c] += 1
        return {int(c) for c in classes}

    @property
    def images(self) -> int:
        return sum(self.count.values())

    def class_means(self, aggregation: str) -> dict[int, list[torch.Tensor]]:
        """Per class and block, the mean of the chosen statistic over the class's images."""
        stat = _stat(aggregation)
        return {c: [t / self.count[c] for t in acc[stat]] for c, acc in sorted(self.per_class.items()) if self.count[c]}

    def class_balanced(self, aggregation: str) -> list[torch.Tensor]:
        """Per block, the average over classes of the per-class means (higher = more important)."""
        means = self.class_means(aggregation)
        if not means:
            raise UserError("the dense path importance holds no images; re-run discovery")
        return [torch.stack([m[b] for m in means.values()]).mean(0) for b in range(len(self.widths))]

    def class_topk(self, k: int, aggregation: str) -> dict[int, list[list[int]]]:
        """Per class and block, the ``k`` units of largest class-mean importance (ties: lower index)."""
        if k < 1:
            raise UserError(f"--keep-topk must be >= 1 (got {k})")
        return {c: [sorted(torch.sort(t, descending=True, stable=True).indices[:k].tolist()) for t in blocks]
                for c, blocks in self.class_means(aggregation).items()}

    @staticmethod
    def merged(parts: Sequence["ImportanceSums"]) -> "ImportanceSums":
        """The sums of several processes' shards (summed in the order given)."""
        out = ImportanceSums(parts[0].widths)
        for part in parts:
            for c, acc in sorted(part.per_class.items()):
                mine = out._class(c)
                for s in STATS:
                    for b in range(len(out.widths)):
                        mine[s][b] += acc[s][b]
                out.count[c] += part.count[c]
        return out

    # ------------------------------------------------------------------------------- files
    def save(self, path: Path, meta: dict) -> None:
        """One safetensors file, written atomically: (classes, H_b) arrays per statistic and block."""
        from safetensors.torch import save_file

        classes = sorted(self.per_class)
        tensors = {"classes": torch.as_tensor(classes, dtype=torch.long),
                   "count": torch.as_tensor([self.count[c] for c in classes], dtype=torch.float64)}
        for s in STATS:
            for b, w in enumerate(self.widths):
                rows = [self.per_class[c][s][b] for c in classes]
                tensors[f"{s}/{b}"] = torch.stack(rows) if rows else torch.zeros(0, w, dtype=torch.float64)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata={"vitprune": json.dumps({**meta, "widths": list(self.widths)}, sort_keys=True)})
        except Exception as exc:  # safetensors reports a full disk as its own error type
            tmp.unlink(missing_ok=True)
            raise safetensors_os_error(exc, tmp) from exc
        replace_atomically(tmp, path)

    @classmethod
    def load(cls, path: Path) -> tuple["ImportanceSums", dict]:
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("vitprune", "{}"))
            tensors = load_file(str(path))
            widths = tuple(meta["widths"])
            out = cls(widths)
            for i, c in enumerate(tensors["classes"].tolist()):
                out.per_class[c] = {s: [tensors[f"{s}/{b}"][i].clone() for b in range(len(widths))] for s in STATS}
                out.count[c] = int(tensors["count"][i])
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {path} ({type(exc).__name__}); re-run discovery with --force") from exc
        return out, meta


def _stat(aggregation: str) -> str:
    if aggregation not in AGGREGATIONS:
        raise UserError(f"--jas-aggregation must be one of {', '.join(AGGREGATIONS)} (got '{aggregation}')")
    return AGGREGATIONS[aggregation]


class ImportanceLog:
    """The resumable, per-process store of a run in progress: one file per class + a manifest.

    ``commit`` writes the touched classes under new names, then the manifest (atomically: the
    commit point), then drops the superseded files, so a kill at any moment leaves a manifest
    whose files exist and whose sums cover exactly ``records`` records.
    """

    def __init__(self, folder: Path, widths: Sequence[int]) -> None:
        self.folder = Path(folder)
        self.sums = ImportanceSums(tuple(widths))
        self.records = 0
        self.files: dict[int, str] = {}
        if (self.folder / MANIFEST).is_file():
            state = read_json(self.folder / MANIFEST)
            self.records, self.files = int(state["records"]), {int(c): f for c, f in state["files"].items()}
            for c, name in self.files.items():
                part, _ = ImportanceSums.load(self.folder / name)
                if tuple(part.widths) != tuple(widths):
                    raise UserError(f"{self.folder} belongs to another model; pass --force to start over")
                self.sums.per_class[c] = part.per_class[c]
                self.sums.count[c] = part.count[c]
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self.folder.iterdir():  # files a kill left behind before their commit
            if path.name != MANIFEST and path.name not in self.files.values():
                path.unlink()

    def commit(self, touched: set[int], records: int) -> None:
        names = dict(self.files)
        for c in sorted(touched):
            part = ImportanceSums(self.sums.widths, {c: self.sums.per_class[c]}, {c: self.sums.count[c]})
            names[c] = f"class-{c}-r{records}.safetensors"
            part.save(self.folder / names[c], {})
        atomic_write_json(self.folder / MANIFEST, {"records": records, "files": {str(c): n for c, n in sorted(names.items())}})
        for c in touched:
            old = self.files.get(c)
            if old and old != names[c]:
                (self.folder / old).unlink(missing_ok=True)
        self.files, self.records = names, records

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


__all__ = ["ImportanceSums", "ImportanceLog", "AGGREGATIONS", "IMPORTANCE"]
