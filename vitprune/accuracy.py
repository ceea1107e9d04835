"""Accuracy of one or more models on the same images, in one pass over the data (at the run's precision)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .precision import precision_context
from .progress import progress_bar


@dataclass
class EvalResult:
    n: int
    top1: float  # a fraction of the images (0..1), as every value vitprune writes for a program to read
    mean_true_prob: float
    per_class: list[dict] = field(default_factory=list)  # {class, name, n, top1, mean_true_prob}
    hits: torch.Tensor | None = field(default=None, repr=False, compare=False)  # per image, in evaluation order (not saved)

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("hits")
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "EvalResult":
        return cls(int(obj["n"]), float(obj["top1"]), float(obj["mean_true_prob"]), list(obj.get("per_class") or []))


@torch.inference_mode()
def evaluate_models(
    models: Mapping[str, nn.Module],
    batches: Iterable[tuple[list[str], torch.Tensor, torch.Tensor]],
    *,
    class_names: tuple[str, ...],
    total: int | None = None,
    quiet: bool = False,
    desc: str = "evaluate",
    dist=None,
    precision: str = "fp32",
) -> dict[str, EvalResult]:
    """Top-1 and mean true-class softmax probability, overall and per class, for every model.

    With ``dist`` (several processes), each rank passes its own shard of batches
    (``iterate_batches(..., shard=dist)``) and the per-class sums are gathered, so each image
    is counted exactly once.
    """
    num_classes = len(class_names)
    correct = {k: torch.zeros(num_classes, dtype=torch.float64) for k in models}
    hits: dict[str, list[torch.Tensor]] = {k: [] for k in models}
    prob = {k: torch.zeros(num_classes, dtype=torch.float64) for k in models}
    count = torch.zeros(num_classes, dtype=torch.float64)
    for m in models.values():
        m.eval()
    with progress_bar(total=total, desc=desc, unit="img", disable=quiet) as bar:
        for _, images, labels in batches:
            count += torch.bincount(labels, minlength=num_classes).double()
            for name, model in models.items():
                device = next(model.parameters()).device
                with precision_context(precision, device):
                    logits = model(images.to(device)).float().cpu()
                p = logits.softmax(-1).gather(1, labels[:, None]).squeeze(1).double()
                hit = (logits.argmax(-1) == labels).double()
                hits[name].append(hit.bool())
                correct[name].index_add_(0, labels, hit)
                prob[name].index_add_(0, labels, p)
            bar.update(len(labels))
    hits = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool) for k, v in hits.items()}
    if dist is not None and dist.world > 1:
        parts = dist.gather({"count": count, "correct": correct, "prob": prob, "hits": hits})
        count = sum(p["count"] for p in parts)
        correct = {k: sum(p["correct"][k] for p in parts) for k in models}
        prob = {k: sum(p["prob"][k] for p in parts) for k in models}
        hits = {k: torch.cat([p["hits"][k] for p in parts]) for k in models}  # rank order: the same for every model
    n = int(count.sum())
    out = {}
    for name in models:
        per_class = [
            {"class": c, "name": class_names[c], "n": int(count[c]),
             "top1": float(correct[name][c] / count[c]) if count[c] else None,
             "mean_true_prob": float(prob[name][c] / count[c]) if count[c] else None}
            for c in range(num_classes)
        ]
        out[name] = EvalResult(n, float(correct[name].sum() / max(n, 1)), float(prob[name].sum() / max(n, 1)), per_class,
                               hits[name])
    return out


def paired_difference(before: EvalResult, after: EvalResult, z: float = 1.959964) -> dict:
    """``after``'s top-1 minus ``before``'s on the same images, with its 95% interval: the paired (Wald) interval of a
    difference of proportions from McNemar's discordant counts (b: right before only, c: right after only), and
    per class the difference and the worst class (the largest drop)."""
    import math

    a, b = before.hits, after.hits
    out: dict = {"top1_diff": after.top1 - before.top1}
    if a is not None and b is not None and len(a) == len(b) and len(a):
        n = len(a)
        lost, gained = int((a & ~b).sum()), int((~a & b).sum())
        diff = (gained - lost) / n
        se = math.sqrt(max((lost + gained) / n**2 - (gained - lost) ** 2 / n**3, 0.0))
        out.update(top1_diff=diff, ci95=[diff - z * se, diff + z * se], discordant={"lost": lost, "gained": gained},
                   interval="paired Wald interval from McNemar's discordant counts, 95%")
    classes = [{"class": p["class"], "name": p["name"], "n": p["n"], "before": p["top1"], "after": q["top1"],
                "diff": q["top1"] - p["top1"]} for p, q in zip(before.per_class, after.per_class)
               if p["n"] and p["top1"] is not None and q["top1"] is not None]
    out["per_class"] = classes
    out["worst_class"] = min(classes, key=lambda c: (c["diff"], c["class"])) if classes else None
    return out


__all__ = ["EvalResult", "evaluate_models", "paired_difference"]
