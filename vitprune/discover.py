"""A ``discover`` run: model + data spec -> resumable per-image path records in a run folder."""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import __version__
from .attribution import DiscoveryConfig, PathFinder
from .data import DataPools, iterate_batches, load_data, model_transform, select_per_class
from .errors import UserError
from .models import load_model
from .records import CONFIG, PARTIAL, PATHS, JsonlAppender, atomic_write_json, read_json
from .progress import progress_bar

RUN_FILES = (CONFIG, PATHS, PARTIAL)
# options that do not change what is computed; a resumed run may change them
NON_IDENTITY_KEYS = ("device", "out")


@dataclass(frozen=True)
class DiscoverOptions:
    model: str = "demo"
    arch: str | None = None
    data: str = "demo"
    pool: str = "calibration"
    per_class: int | None = 8
    classes: tuple[int, ...] | None = None
    topk: int = 1
    steps: int = 20
    method: str = "jas"
    token_scope: str = "auto"
    label: str = "truth"
    batch_size: int = 16
    max_rows: int | None = None
    device: str = "auto"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for but no CUDA GPU is visible; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown --device '{name}'; use auto, cpu or cuda[:N]") from exc


def check_pairing(pools: DataPools, num_classes: int) -> None:
    if pools.num_classes != num_classes:
        raise UserError(
            f"the data '{pools.spec}' has {pools.num_classes} classes but the model head has {num_classes}; "
            "pass data that matches the model, or a model trained on this data"
        )


def prepare_run_dir(out: Path, config: dict, *, resume: bool, force: bool) -> str:
    """'fresh', 'resume' or 'complete'; refuses to touch a different run without --force."""
    out = Path(out)
    if (out / CONFIG).is_file() and not force:
        old = read_json(out / CONFIG)
        same = {k: v for k, v in old.items() if k not in NON_IDENTITY_KEYS} == {
            k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS
        }
        if not resume:
            raise UserError(f"{out} already holds a run; pass --resume to continue it or --force to replace it")
        if not same:
            changed = sorted(k for k in set(old) | set(config) if k not in NON_IDENTITY_KEYS and old.get(k) != config.get(k))
            raise UserError(f"{out} holds a run with different settings ({', '.join(changed)}); pass --force to replace it")
        return "complete" if (out / PATHS).is_file() else "resume"
    if force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for extra in ("reference",):
            shutil.rmtree(out / extra, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG, config)
    return "fresh"


def verify_image_files(ds) -> None:
    """Fail before any output exists if a selected image file cannot be opened."""
    import datasets
    from PIL import Image, UnidentifiedImageError

    raw = ds.cast_column("image", datasets.Image(decode=False))
    for ident, img in zip(raw["id"], raw["image"]):
        if img.get("bytes") is None and img.get("path"):
            try:
                with Image.open(img["path"]) as pil:
                    pil.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise UserError(f"unreadable image '{ident}' ({type(exc).__name__}); remove or replace the file") from exc


def run_discover(opts: DiscoverOptions, out: Path, *, resume: bool = False, force: bool = False, quiet: bool = False) -> Path:
    """Discover paths for the selected images; returns the path of the finished ``paths.jsonl``."""
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {opts.batch_size})")
    if opts.pool not in ("calibration", "evaluation"):
        raise UserError(f"--pool must be calibration or evaluation (got '{opts.pool}')")
    device = resolve_device(opts.device)
    model = load_model(opts.model, arch=opts.arch).to(device)
    cfg = DiscoveryConfig(opts.topk, opts.steps, opts.method, opts.token_scope, opts.label, opts.max_rows)
    finder = PathFinder(model, cfg)
    pools = load_data(opts.data)
    check_pairing(pools, finder.adapter.num_classes)
    pool = pools.calibration if opts.pool == "calibration" else pools.evaluation
    selected = select_per_class(pool, opts.per_class, opts.classes, num_classes=pools.num_classes)
    verify_image_files(selected)
    ids = list(selected["id"])
    config = {
        **asdict(opts),
        "classes": list(opts.classes) if opts.classes is not None else None,
        "token_scope": finder.scope,
        "model_source": model.vitprune_source,
        "depth": finder.adapter.depth,
        "mlp_hidden": finder.adapter.hidden_widths,
        "class_names": list(pools.class_names),
        "num_images": len(ids),
        "vitprune_version": __version__,
        "command": "discover",
    }
    state = prepare_run_dir(out, config, resume=resume, force=force)
    out = Path(out)
    if state == "complete":
        if not quiet:
            print(f"{out / PATHS} is already complete ({len(ids)} images)")
        return out / PATHS
    with JsonlAppender(out / PARTIAL, batch=opts.batch_size) as sink:
        done = len(sink.records)
        if [r["id"] for r in sink.records] != ids[:done]:
            raise UserError(f"{out / PARTIAL} does not match the selected images; pass --force to start over")
        transform = model_transform(model)
        remaining = selected.select(range(done, len(ids)))
        extra = {"method": cfg.method, "steps": cfg.steps, "token_scope": finder.scope, "topk": cfg.topk}
        with progress_bar(total=len(ids), initial=done, desc="discover", unit="img", disable=quiet) as bar:
            for batch_ids, images, labels in iterate_batches(remaining, transform, opts.batch_size):
                records = finder.find(images, labels)
                sink.append({"id": i, **extra, **r} for i, r in zip(batch_ids, records))
                bar.update(len(batch_ids))
    os.replace(out / PARTIAL, out / PATHS)
    return out / PATHS
