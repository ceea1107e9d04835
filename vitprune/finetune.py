"""Recovery after pruning: distillation from the dense model (logit KD + label loss) with accelerate.

accelerate places the models, turns on bf16 mixed precision where a GPU supports it, and
shards the batches when launched on several processes (``accelerate launch`` / ``torchrun``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .progress import progress_bar


def distill(
    student: nn.Module,
    teacher: nn.Module,
    loader,
    *,
    epochs: int,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    temperature: float = 2.0,
    kd_weight: float = 0.5,
    seed: int = 0,
    quiet: bool = False,
) -> list[dict]:
    """Train ``student`` in place for ``epochs`` over ``loader``; returns per-epoch mean losses."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    set_seed(seed)
    use_cuda = torch.cuda.is_available()
    precision = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"
    acc = Accelerator(cpu=not use_cuda, mixed_precision=precision)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    student, opt, loader, sched = acc.prepare(student, opt, loader, sched)
    teacher = teacher.to(acc.device).eval()
    history = []
    for epoch in range(epochs):
        student.train()
        total, n = 0.0, 0
        bar = progress_bar(total=len(loader), desc=f"recover {epoch + 1}/{epochs}", unit="batch",
                           disable=quiet or not acc.is_local_main_process)
        for images, labels in loader:
            with torch.no_grad():
                t_logits = teacher(images)
            with acc.autocast():
                s_logits = student(images)
            kd = F.kl_div(F.log_softmax(s_logits.float() / temperature, -1), F.softmax(t_logits.float() / temperature, -1),
                          reduction="batchmean") * temperature**2
            loss = kd_weight * kd + (1 - kd_weight) * F.cross_entropy(s_logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(labels)
            n += len(labels)
            bar.update(1)
            bar.set_postfix(loss=f"{total / n:.3f}")
        bar.close()
        history.append({"epoch": epoch + 1, "loss": total / max(n, 1)})
    acc.unwrap_model(student).eval()  # the caller's module, trained in place
    return history
