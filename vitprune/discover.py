"""A ``discover`` run: model + data spec -> resumable per-image path records in a run folder."""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path


from . import __version__
from .attribution import DiscoveryConfig, PathFinder
from .data import DataPools, iterate_batches, load_data, model_transform, open_image, select_per_class
from .errors import UserError
from .importance import IMPORTANCE, ImportanceLog, ImportanceSums
from .locks import output_lock
from .options import CalibrationOptions
from .models import load_model
from .distributed import Dist, get_dist
from .records import CONFIG, PARTIAL, PATHS, JsonlAppender, atomic_write_json, atomic_write_text, check_output_dir
from .progress import progress_bar

RUN_FILES = (CONFIG, PATHS, PARTIAL, IMPORTANCE)
# options that do not change what is computed; a resumed run may change them
NON_IDENTITY_KEYS = ("device", "out")  # max_rows and precision stay: they change floating-point results


@dataclass(frozen=True)
class DiscoverOptions(CalibrationOptions):
    per_class: int | None = 8
    pool: str = "calibration"
    topk: int = 1
    method: str = "jas"
    token_scope: str = "auto"
    label: str = "truth"
    objective: str = "prob"


def check_pairing(pools: DataPools, num_classes: int) -> None:
    if pools.num_classes != num_classes:
        raise UserError(
            f"the data '{pools.spec}' has {pools.num_classes} classes but the model head has {num_classes}; "
            "pass data that matches the model, or a model trained on this data"
        )


def check_run_dir(out: Path, config: dict, *, resume: bool, force: bool) -> str:
    """'fresh', 'resume' or 'complete', without writing; refuses a different run without --force."""
    out = Path(out)
    if (out / CONFIG).is_file() and not force and not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --force to replace it")
    if check_output_dir(out, CONFIG, config, what="discover run", force=force, ignore=NON_IDENTITY_KEYS):
        return "complete" if (out / PATHS).is_file() else "resume"
    return "fresh"


def start_run_dir(out: Path, config: dict, *, force: bool) -> None:
    """(Re)create the folder of a run ``check_run_dir`` found fresh and write its config.json."""
    out = Path(out)
    if force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for extra in ("reference",):
            shutil.rmtree(out / extra, ignore_errors=True)
        for shard in out.glob("paths.partial*.jsonl") if out.is_dir() else []:
            shard.unlink()
        for partial in out.glob("importance.partial*") if out.is_dir() else []:
            shutil.rmtree(partial)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG, config)


def verify_image_files(ds) -> None:
    """Fail before any output exists if a selected image file cannot be opened."""
    import datasets

    raw = ds.cast_column("image", datasets.Image(decode=False))
    for ident, img in zip(raw["id"], raw["image"]):
        if img.get("bytes") is None and img.get("path"):
            open_image(ident, img["path"], verify_only=True).close()


def shard_file(rank: int, world: int) -> str:
    return PARTIAL if world == 1 else f"paths.partial.rank{rank}-of-{world}.jsonl"


def importance_dir(rank: int, world: int) -> str:
    """Where a process keeps the dense importance of its shard while the run is in progress."""
    return "importance.partial" if world == 1 else f"importance.partial.rank{rank}-of-{world}"


def run_discover(opts: DiscoverOptions, out: Path, *, resume: bool = False, force: bool = False, quiet: bool = False,
                 dist: Dist | None = None) -> Path:
    """Discover paths for the selected images; returns the path of the finished ``paths.jsonl``.

    Under ``torchrun``/``accelerate launch`` each process takes every world-th batch and writes
    its own shard (resumable on its own); the main process merges them in image order.
    """
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {opts.batch_size})")
    if opts.pool not in ("calibration", "evaluation"):
        raise UserError(f"--pool must be calibration or evaluation (got '{opts.pool}')")
    dist = dist or get_dist(opts.device)
    model = load_model(opts.model, arch=opts.arch).to(dist.device)
    cfg = DiscoveryConfig(topk=opts.topk, steps=opts.steps, method=opts.method, token_scope=opts.token_scope, label=opts.label,
                          max_rows=opts.max_rows, precision=opts.precision, objective=opts.objective)
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
    out = Path(out)
    with output_lock(out, "discover", dist):
        state = check_run_dir(out, config, resume=resume, force=force)
        if state == "complete":
            if not quiet and dist.is_main:
                print(f"{out / PATHS} is already complete ({len(ids)} images)")
            return out / PATHS
        if not force:
            _check_shards(out, dist.world)
        dist.barrier()
        if dist.is_main and state == "fresh":
            start_run_dir(out, config, force=force)
        dist.barrier()

        batch = opts.batch_size
        n_batches = (len(ids) + batch - 1) // batch
        mine = dist.mine(n_batches)
        my_ids = [ids[k * batch : (k + 1) * batch] for k in mine]
        widths = finder.adapter.hidden_widths
        dense_log = ImportanceLog(out / importance_dir(dist.rank, dist.world), widths) if cfg.method == "jas" else None
        with JsonlAppender(out / shard_file(dist.rank, dist.world), batch=batch) as sink:
            if dense_log is not None:
                if dense_log.records > len(sink.records):
                    raise UserError(f"{out} is damaged (the dense importance covers more images than the records); "
                                    "pass --force to start over")
                sink.truncate(dense_log.records)  # records whose importance was not committed are redone
            done = len(sink.records)
            expected = [i for chunk in my_ids for i in chunk]
            if [r["id"] for r in sink.records] != expected[:done]:
                raise UserError(f"{sink.path} does not match the selected images; pass --force to start over")
            transform = model_transform(model)
            finished = set(expected[:done])  # whole batches only (the appender keeps batch-aligned prefixes)
            todo = [k for k, chunk in zip(mine, my_ids) if chunk[-1] not in finished]
            extra = {"method": cfg.method, "steps": cfg.steps, "token_scope": finder.scope, "topk": cfg.topk,
                     "objective": cfg.objective}
            total = sum(len(c) for c in my_ids)
            with progress_bar(total=total, initial=done, desc="discover", unit="img", disable=quiet or not dist.is_main) as bar:
                for k in todo:
                    chunk = selected.select(range(k * batch, min((k + 1) * batch, len(ids))))
                    for batch_ids, images, labels in iterate_batches(chunk, transform, batch):
                        found = finder.find_batch(images, labels)
                        sink.append({"id": i, **extra, **r} for i, r in zip(batch_ids, found.records))
                        done += len(found.records)
                        if dense_log is not None:
                            touched = dense_log.sums.add([r["target"] for r in found.records], found.step_scores, found.step_own)
                            dense_log.commit(touched, done)
                        if finder.memory is not None and k == todo[0]:
                            bar.set_postfix_str(finder.memory.describe(cfg.steps * len(batch_ids)), refresh=False)
                        bar.update(len(batch_ids))
        dist.barrier()
        if dist.is_main:
            logs = [ImportanceLog(out / importance_dir(r, dist.world), widths) for r in range(dist.world)] if dense_log else []
            if logs:  # before paths.jsonl marks the run finished
                ImportanceSums.merged([log.sums for log in logs]).save(out / IMPORTANCE, {
                    k: config[k] for k in ("method", "steps", "token_scope", "topk", "objective", "label", "num_images")})
            _merge_shards(out, dist.world, ids)
            for log in logs:
                log.remove()
        dist.barrier()
        return out / PATHS


def _check_shards(out: Path, world: int) -> None:
    """A resumed run must use the same number of processes as the run that wrote its shards."""
    expected = {shard_file(r, world) for r in range(world)}
    for path in out.glob("paths.partial*.jsonl") if out.is_dir() else []:
        if path.name not in expected:
            raise UserError(f"{out} was started with a different number of processes ({path.name}); resume it with the "
                            "same launch command or pass --force")


def _merge_shards(out: Path, world: int, ids: list[str]) -> None:
    """Write the shards' records in image order as ``paths.jsonl`` (atomically), then drop the shards."""
    if world == 1:
        os.replace(out / PARTIAL, out / PATHS)
        return
    shards = [out / shard_file(r, world) for r in range(world)]
    by_id = {rec["id"]: line for path in shards for rec, line in _lines(path)}
    if len(by_id) != len(ids):
        raise UserError(f"the shards in {out} hold {len(by_id)} of {len(ids)} images; resume the run")
    atomic_write_text(out / PATHS, "".join(by_id[i] for i in ids))
    for path in shards:
        path.unlink()


def _lines(path: Path):
    import json

    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                yield json.loads(line), line
