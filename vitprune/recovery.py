"""Recovery after pruning: distillation of the pruned model from the dense one, as a stage of its own.

The student learns the teacher's softened logits (KL at temperature T, weight ``kd_weight``) and the labels
(cross-entropy), and, with ``features > 0``, the teacher's residual stream after every block (mean squared error
relative to its energy) — the dense model offers it for free, the pruned one keeps the width. AdamW, one-cycle
schedule over the whole budget (``epochs`` may be a fraction of an epoch). Every ``1 / checks_per_epoch`` epoch the
student is scored on held-out selection images (never training images) and the best state is kept: a recovery never
ends worse, on those images, than its best moment. Without feature distillation the teacher's logits of an image are
computed once and reused by later epochs.

Resumable: with a ``state`` folder, the run's state (weights, optimizer, schedule, history, best) is written there at
every check, and a rerun of the same recovery on the same pruned model continues from it to the same weights as an
uninterrupted run (the data order of every epoch is a function of the seed and the epoch). accelerate places the
models and turns on bf16 mixed precision where a GPU supports it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImagePool
from .defaults import RECOVERY_DEFAULT
from .progress import LOG, progress_bar

STATE = "recovery.pt"


@dataclass(frozen=True)
class RecoverySettings:
    """How a pruned model is recovered (``--finetune-*``)."""

    epochs: float = 1.0  # passes over the training images; a fraction is allowed
    lr: float = RECOVERY_DEFAULT["lr"]  # peak learning rate (one-cycle)
    features: float = RECOVERY_DEFAULT["features"]  # weight of the block-output distillation (0: logits only)
    kd_weight: float = 0.5  # share of the logit distillation in the logit loss (the rest: the labels)
    temperature: float = 2.0
    weight_decay: float = 0.01
    batch_size: int = 128
    checks_per_epoch: int = 2  # selection scores per epoch (the best is kept)
    seed: int = 0


@dataclass
class RecoveryResult:
    """What a recovery did: per check the step, epoch, training loss and selection top-1; the best check kept."""

    settings: dict[str, Any]
    images: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    seconds: float = 0.0
    resumed_at_step: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fingerprint(model: nn.Module) -> str:
    from .model.load import fingerprint

    return fingerprint(model)


def recover(student: nn.Module, teacher: nn.Module, train: ImagePool, transform, settings: RecoverySettings, *,
            selection: tuple[torch.Tensor, torch.Tensor] | None = None, state: Path | None = None, quiet: bool = False
            ) -> RecoveryResult:
    """Train ``student`` (in place) by distillation from ``teacher`` on ``train``'s images (see the module docstring);
    returns what happened. ``selection``: held-out (images, labels) scored at every check; ``state``: a folder where
    the run's state is kept so that a killed recovery resumes."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    start = time.time()
    set_seed(settings.seed)
    use_cuda = torch.cuda.is_available()
    acc = Accelerator(cpu=not use_cuda, mixed_precision="bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no")
    if not acc.is_main_process:
        state = None  # every process trains the same student the same way; one writes its state
    n = len(train)
    per_epoch = max(1, math.ceil(n / settings.batch_size))
    steps = max(1, math.ceil(settings.epochs * per_epoch))
    check_every = max(1, per_epoch // max(1, settings.checks_per_epoch))
    checks = sorted({*range(check_every, steps + 1, check_every), steps})
    student.to(acc.device)
    teacher = teacher.to(acc.device).eval()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=settings.lr,
                            weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps, pct_start=0.1)
    result = RecoveryResult(asdict(settings), n, steps)
    identity = {"settings": asdict(settings), "start": _fingerprint(student), "images": train.digest()}
    best_state: dict[str, torch.Tensor] | None = None
    done = 0
    saved = _load_state(state, identity)
    if saved is not None:
        student.load_state_dict(saved["student"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        result.history, result.best, best_state = saved["history"], saved["best"], saved["best_state"]
        done = result.resumed_at_step = saved["step"]
        if not quiet:
            LOG.info(f"vitprune: recovery resumes at step {done} of {steps} ({state / STATE})")
    teacher_logits: dict[int, torch.Tensor] = {}  # the teacher's logits of each training image, when they can be reused
    feature_taps = _BlockTaps(student, teacher) if settings.features > 0 else None
    bar = progress_bar(total=steps, initial=done, desc="recovery", unit="step", disable=quiet or not acc.is_local_main_process)
    try:
        for step in range(done, steps):
            epoch, within = divmod(step, per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
            index = order[within * settings.batch_size:(within + 1) * settings.batch_size].tolist()
            _, images, labels = next(train.select(index).batches(transform, len(index)))
            images, labels = images.to(acc.device), labels.to(acc.device)
            student.train()
            loss = _loss(student, teacher, images, labels, index, teacher_logits, feature_taps, settings, acc)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step + 1 in checks:
                top1 = _score(student, selection, acc.device) if selection is not None else None
                entry = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 3), "loss": loss.item(), "top1_selection": top1}
                result.history.append(entry)
                if result.best is None or (top1 is not None and top1 > result.best["top1_selection"]):
                    result.best = entry
                    best_state = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
                _save_state(state, identity, step + 1, student, opt, sched, result, best_state)
    finally:
        bar.close()
        if feature_taps is not None:
            feature_taps.remove()
    if best_state is not None and selection is not None:
        student.load_state_dict(best_state)
    student.eval()
    result.seconds = time.time() - start
    return result


def _loss(student, teacher, images, labels, index, cache, taps, settings: RecoverySettings, acc) -> torch.Tensor:
    """The distillation loss of one batch (logits, labels and, with ``taps``, the block outputs)."""
    with taps.recording() if taps is not None else nullcontext():
        if taps is not None or any(i not in cache for i in index):
            with torch.no_grad():
                t_logits = teacher(images).float()
            if taps is None:
                for i, row in zip(index, t_logits):
                    cache[i] = row.cpu()
        else:
            t_logits = torch.stack([cache[i] for i in index]).to(images.device)
        with acc.autocast():
            s_logits = student(images)
    t = settings.temperature
    kd = F.kl_div(F.log_softmax(s_logits.float() / t, -1), F.softmax(t_logits / t, -1), reduction="batchmean") * t * t
    loss = settings.kd_weight * kd + (1 - settings.kd_weight) * F.cross_entropy(s_logits.float(), labels)
    if taps is not None:
        loss = loss + settings.features * taps.loss()
    return loss


class _BlockTaps:
    """The student's and the teacher's residual stream after every block, for the feature loss, kept only inside
    ``recording()`` (the selection checks run the student too); hooks removed by ``remove``."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        from .model.adapter import adapter_for

        self.student: list[torch.Tensor] = []
        self.teacher: list[torch.Tensor] = []
        self.on = False
        self.handles = [block.register_forward_hook(lambda _m, _i, out, store=store: store.append(out) if self.on else None)
                        for model, store in ((student, self.student), (teacher, self.teacher))
                        for block in adapter_for(model).blocks]

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Keep the block outputs of the forwards inside (of one training batch), none before."""
        self.student.clear()
        self.teacher.clear()
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def loss(self) -> torch.Tensor:
        """Mean over blocks of ||s - t||^2 / ||t||^2 (the teacher's outputs carry no gradient); clears the taps."""
        terms = [F.mse_loss(s.float(), t.detach().float()) / (t.detach().float().pow(2).mean() + 1e-12)
                 for s, t in zip(self.student, self.teacher)]
        self.student.clear()
        self.teacher.clear()
        return torch.stack(terms).mean()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def _score(model: nn.Module, selection: tuple[torch.Tensor, torch.Tensor], device, batch: int = 512) -> float:
    model.eval()
    images, labels = selection
    hits = sum(int((model(images[s:s + batch].to(device)).argmax(-1).cpu() == labels[s:s + batch]).sum())
               for s in range(0, len(images), batch))
    return hits / max(len(images), 1)


def _load_state(folder: Path | None, identity: dict) -> dict | None:
    """The saved state of this very recovery (same settings, starting weights and images), if any."""
    if folder is None or not (Path(folder) / STATE).is_file():
        return None
    try:
        saved = torch.load(Path(folder) / STATE, map_location="cpu", weights_only=False)
    except Exception:
        return None  # a damaged state file: start over (it is rewritten at the first check)
    return saved if isinstance(saved, dict) and saved.get("identity") == identity else None


def _save_state(folder: Path | None, identity: dict, step: int, student, opt, sched, result: RecoveryResult, best_state) -> None:
    if folder is None:
        return
    from .files import replace_atomically

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE}.tmp"
    torch.save({"identity": identity, "step": step, "student": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": result.history, "best": result.best,
                "best_state": best_state}, tmp)
    replace_atomically(tmp, folder / STATE)


__all__ = ["recover", "RecoverySettings", "RecoveryResult", "STATE"]
