"""``PathFinder``: one discovery method on the shared pass engine -> one ``PathRecord`` per image."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..precision import at_least_fp32
from . import DISCOVERY_METHODS
from .engine import Goal, PassEngine, PassStats, stable_topk
from .memory import PassMemory
from .records import PathRecord
from .settings import DiscoverySettings


@dataclass
class PathBatch:
    """One batch's records and, for methods with dense importance, the greedy scores S_t (B, H_t) of every block t
    and their own term I_t."""

    records: list[PathRecord]
    step_scores: list[torch.Tensor] | None
    step_own: list[torch.Tensor] | None = None


class PathFinder:
    """Finds top-K paths (``settings.method``) for batches of preprocessed images."""

    def __init__(self, model: nn.Module, settings: DiscoverySettings = DiscoverySettings()) -> None:
        settings.check()
        self.engine = PassEngine(model, settings)
        self.method = DISCOVERY_METHODS.load(settings.method)()
        widths = self.adapter.hidden_widths
        if settings.topk > min(widths):
            raise UserError(f"--topk must be between 1 and the narrowest MLP width {min(widths)} (got {settings.topk})")

    @property
    def model(self) -> nn.Module:
        return self.engine.model

    @property
    def adapter(self):
        return self.engine.adapter

    @property
    def settings(self) -> DiscoverySettings:
        return self.engine.settings

    @property
    def scope(self) -> str:
        """The resolved token scope ('cls', 'patches' or 'all')."""
        return self.engine.scope

    @property
    def stats(self) -> PassStats:
        return self.engine.stats

    def flop_count(self) -> float:
        """FLOP count of the passes run so far (``PassStats.flops`` at this model's MACs per forward)."""
        if getattr(self, "_macs", None) is None:
            from ..prune.macs import count_macs_params

            self._macs = count_macs_params(self.model)[0]
        return self.stats.flops(self._macs, self.adapter.depth)

    def cost(self, seconds: float) -> dict:
        """What the images found so far cost: their number, FLOPs per image and images per second over ``seconds``."""
        n = self.stats.images
        return {"images": n, "seconds": round(seconds, 3), "flop_per_image": self.flop_count() / n if n else None,
                "images_per_s": n / seconds if n and seconds > 0 else None}

    def describe_cost(self) -> str:
        """The progress bar's note: discovery GFLOP per image so far."""
        n = self.stats.images
        return f"{self.flop_count() / n / 1e9:.3g} GFLOP/img" if n else ""

    @property
    def memory(self) -> PassMemory | None:
        return self.engine.memory

    @property
    def schedule(self) -> str:
        return self.engine.schedule

    @schedule.setter
    def schedule(self, value: str) -> None:
        self.engine.schedule = value

    @property
    def dense_importance(self) -> bool:
        return self.method.dense_importance

    def find(self, images: torch.Tensor, labels: torch.Tensor, ids: Sequence[str] | None = None) -> list[PathRecord]:
        """One record per image (see ``PathRecord``)."""
        return self.find_batch(images, labels, ids).records

    def find_batch(self, images: torch.Tensor, labels: torch.Tensor, ids: Sequence[str] | None = None) -> PathBatch:
        """The records of ``find`` plus the dense greedy scores of every unit (methods with dense importance)."""
        device = next(self.model.parameters()).device
        images, labels = images.to(device), labels.to(device)
        if self.settings.max_rows is None and self.engine.memory is None:
            self.engine.memory = self.engine.measure_memory(images[:1], labels[:1])
        requires = [p.requires_grad for p in self.model.parameters()]
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            return self._find(images, labels, [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(images))])
        finally:
            for p, r in zip(self.model.parameters(), requires):
                p.requires_grad_(r)

    def _find(self, images: torch.Tensor, labels: torch.Tensor, ids: list[str]) -> PathBatch:
        engine, cfg = self.engine, self.settings
        acts, logits = engine.clean_forward(images)
        probs = at_least_fp32(logits).softmax(-1)
        pred = probs.argmax(-1)
        target = labels if cfg.label == "truth" else pred
        if int(target.max()) >= probs.shape[-1] or int(target.min()) < 0:
            raise UserError(f"label {int(target.max())} is outside the model's {probs.shape[-1]} classes; use data that matches the model")
        goal = Goal(target, probs.detach())
        base_path = [stable_topk(a.sum(dim=1), cfg.topk) for a in acts]
        found = self.method.paths(engine, images, goal, acts)
        score = found.score if found.score is not None else engine.path_score(images, goal, acts, found.path)
        base_score = engine.path_score(images, goal, acts, base_path)
        engine.stats.images += len(images)
        records = [
            PathRecord(id=ids[i], label=int(labels[i]), target=int(target[i]), path=[p[i].tolist() for p in found.path],
                       score=float(score[i]), base_path=[p[i].tolist() for p in base_path], base_score=float(base_score[i]),
                       pred=int(pred[i]), prob=float(probs[i, target[i]]), method=cfg.method, steps=cfg.steps,
                       token_scope=engine.scope, topk=cfg.topk, objective=cfg.objective)
            for i in range(len(images))
        ]
        return PathBatch(records, found.step_scores, found.step_own)


def find_paths(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    topk: int = 1,
    steps: int = 20,
    method: str = "jas",
    token_scope: str = "auto",
    label: str = "truth",
    max_rows: int | None = None,
    precision: str = "fp32",
    objective: str = "prob",
) -> list[PathRecord]:
    """Top-K neuron paths of preprocessed ``images`` (B, C, H, W): one ``PathRecord`` per image.

    Each record has ``path`` ([L][K] unit indices, best first), ``score`` (its JAS),
    ``base_path`` / ``base_score`` (the activation baseline: the K largest clean units per
    layer, scored the same way), ``label``, ``target`` (the class F is taken for), ``pred``
    and ``prob`` (clean softmax probability of the target).
    """
    settings = DiscoverySettings(method=method, topk=topk, steps=steps, token_scope=token_scope, label=label,
                                 objective=objective, precision=precision, max_rows=max_rows)
    return PathFinder(model, settings).find(images, labels)


__all__ = ["PathFinder", "PathBatch", "find_paths"]
