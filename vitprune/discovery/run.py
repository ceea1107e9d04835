"""A discovery run: model + image pool -> one path record per image (+ the dense importance), resumable on disk.

With a folder, the run is resumable: records are appended per batch, the dense importance is
committed with them (``ImportanceLog``), and a rerun continues where a kill stopped it. Without a
folder (the Python API's default), the run lives in memory. Under ``torchrun``/``accelerate launch``
each process takes every world-th batch; on disk each writes its own shard (resumable on its own)
and the main process merges them in image order; in memory the records and sums are gathered.
"""
from __future__ import annotations

import itertools
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..data import DataPools, ImagePool, model_transform
from ..model.load import model_fingerprint
from ..distributed import Dist
from ..errors import UserError
from ..files import JsonlAppender, atomic_write_json, atomic_write_text, read_json
from ..outdir import OutputFolder, differing
from ..progress import LOG, progress_bar
from .finder import PathFinder
from .importance import IMPORTANCE, ImportanceLog, ImportanceSums
from .records import CONFIG, PARTIAL, PATHS, DataInfo, ModelInfo, PathRecord, PathRun, RunHeader, ids_digest, load_run
from .settings import DiscoverySettings



def run_header(finder: PathFinder, model: nn.Module, pools: DataPools, pool: str, per_class: int | None,
               classes: tuple[int, ...] | None, ids: list[str], batch_size: int, digest: str | None = None) -> RunHeader:
    """The header of a run of ``finder`` over the selected images (token scope resolved): the weights' fingerprint,
    the MLP widths (and a pruned model's dense unit indices), the settings, the data and the image ids' digest."""
    kept = (getattr(model, "vitprune_meta", None) or {}).get("kept")
    return RunHeader(
        discovery=replace(finder.settings, token_scope=finder.scope),
        model=ModelInfo(dict(getattr(model, "vitprune_source", {"spec": f"<in-memory {type(model).__name__}>"})),
                        tuple(finder.adapter.hidden_widths), model_fingerprint(model),
                        tuple(tuple(int(u) for u in k) for k in kept) if kept else None),
        data=DataInfo(pools.spec, pool, per_class, tuple(classes) if classes is not None else None, tuple(pools.class_names),
                      len(ids), ids_digest(ids), digest),
        batch_size=batch_size,
    )


def discover(model: nn.Module, settings: DiscoverySettings, pools: DataPools, selected: ImagePool, *, pool: str,
             per_class: int | None, classes: tuple[int, ...] | None, batch_size: int, dist: Dist,
             out: Path | None = None, resume: bool = True, force: bool = False, quiet: bool = False,
             inputs: tuple = (), nested: bool = False) -> PathRun:
    """Paths of every image of ``selected`` (the chosen images of ``pools``'s pool ``pool``).

    ``out``: the run folder (resumable); ``nested``: it lies inside a result folder that owns and locks it (compress,
    evaluate); else it is an output folder of its own (``inputs`` are what it must not overlap)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
    finder = PathFinder(model, settings)
    selected.verify()
    ids = selected.ids()
    header = run_header(finder, model, pools, pool, per_class, classes, ids, batch_size, selected.digest())
    transform = model_transform(model)
    start = time.time()
    if out is None:
        run = _in_memory(finder, header, selected, transform, dist, quiet)
    else:
        folder = nullcontext() if nested else OutputFolder(out, "discover", inputs=inputs, dist=dist)
        with folder:
            run = _on_disk(finder, header, selected, transform, Path(out), dist, resume=resume, force=force, quiet=quiet,
                           folder=None if nested else folder)
    if finder.stats.images:  # this process discovered images (not a finished run loaded as it was)
        run.cost = finder.cost(time.time() - start)
    return run


def _postfix(finder: PathFinder, rows: int | None = None) -> str:
    """The progress bar's note: discovery GFLOP per image (the bar shows images/s) and, with ``rows``, the pass memory."""
    parts = [finder.describe_cost()]
    if rows is not None and finder.memory is not None:
        parts.append(finder.memory.describe(rows))
    return ", ".join(p for p in parts if p)


def _in_memory(finder: PathFinder, header: RunHeader, selected: ImagePool, transform, dist: Dist, quiet: bool) -> PathRun:
    batch = header.batch_size
    sums = ImportanceSums(tuple(header.model.widths)) if finder.dense_importance else None
    records: list[PathRecord] = []
    with progress_bar(total=len(selected) // dist.world, desc="discover", unit="img", disable=quiet or not dist.is_main) as bar:
        for batch_ids, images, labels in selected.batches(transform, batch, shard=dist):
            found = finder.find_batch(images, labels, batch_ids)
            _map_to_dense(found.records, header.model.unit_map)
            records += found.records
            if sums is not None:
                sums.add([r.target for r in found.records], found.step_scores, found.step_own)
            bar.set_postfix_str(_postfix(finder), refresh=False)
            bar.update(len(batch_ids))
    if dist.world > 1:
        parts = dist.gather({"records": records, "sums": sums})
        order = {i: n for n, i in enumerate(selected.ids())}
        records = sorted((r for p in parts for r in p["records"]), key=lambda r: order[r.id])
        sums = ImportanceSums.merged([p["sums"] for p in parts]) if sums is not None else None
    return PathRun(records, header, sums)


def _identity(header_json: dict) -> dict:
    return RunHeader.from_json(header_json).to_json()


def _claim(out: Path, config: dict, *, force: bool, folder: OutputFolder | None, dist: Dist) -> bool:
    """Whether ``out`` holds this very run (to resume); a run of other settings is refused unless ``force``, which
    replaces it (a run folder of its own: once the new run is complete). A run folder of its own is claimed through
    its OutputFolder; one inside a result folder (which owns it, and replaces it as a whole) directly."""
    if folder is not None:
        return folder.claim(CONFIG, config, what="discover run", force=force, normalise=_identity)
    error, same = None, False
    if dist.is_main and (out / CONFIG).is_file():
        changed = differing(_identity(read_json(out / CONFIG)), config)
        same = not changed
        if changed and not force:
            error = f"{out} holds a discover run with different settings ({', '.join(changed)}); pass --force to replace it"
        elif changed:
            shutil.rmtree(out)
    if dist.world > 1:
        error, same = dist.gather((error, same))[0]
    if error:
        raise UserError(error)
    return same


def _on_disk(finder: PathFinder, header: RunHeader, selected: ImagePool, transform, out: Path, dist: Dist, *, resume: bool,
             force: bool, quiet: bool, folder: OutputFolder | None) -> PathRun:
    config = header.to_json()
    ids = selected.ids()
    same = _claim(out, config, force=force, folder=folder, dist=dist)
    if same and (out / PATHS).is_file():
        if not quiet and dist.is_main:
            LOG.info(f"{out / PATHS} is up to date ({len(ids)} images of the same model, data and settings)")
        return load_run(out)
    if folder is not None and same and not resume:
        raise UserError(f"{out} holds an unfinished run of these settings; pass --resume to continue it or --force to start over")
    if folder is not None and folder.replacing:
        run_dir = folder.workdir()
    else:
        run_dir = out
        if folder is not None:
            folder.own(*run_files(dist.world))
    _check_shards(run_dir, dist.world)
    dist.barrier()
    if dist.is_main and not (same and run_dir == out):
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG, config)
    dist.barrier()
    run = _discover_into(finder, header, selected, transform, run_dir, dist, quiet=quiet)
    if run_dir != out:
        if dist.is_main:
            folder.publish()
        dist.barrier()
        return load_run(out)
    return run


def _discover_into(finder: PathFinder, header: RunHeader, selected: ImagePool, transform, out: Path, dist: Dist, *,
                   quiet: bool) -> PathRun:
    """The records (and dense importance) of every selected image in the run folder ``out``, resuming what is there."""
    ids = selected.ids()
    batch = header.batch_size
    n_batches = (len(ids) + batch - 1) // batch
    mine = dist.mine(n_batches)
    my_ids = [ids[k * batch : (k + 1) * batch] for k in mine]
    widths = list(header.model.widths)
    dense_log = ImportanceLog(out / importance_dir(dist.rank, dist.world), widths) if finder.dense_importance else None
    with JsonlAppender(out / shard_file(dist.rank, dist.world)) as sink:
        if dense_log is not None:
            if dense_log.records > len(sink.records):
                raise UserError(f"{out} is damaged (the dense importance covers more images than the records); "
                                "pass --force to start over")
        # resume at the last whole batch of this process whose records (and importance) were committed
        committed = min(len(sink.records), dense_log.records if dense_log is not None else len(sink.records))
        boundaries = [0, *itertools.accumulate(len(chunk) for chunk in my_ids)]
        sink.truncate(max(b for b in boundaries if b <= committed))
        done = len(sink.records)
        expected = [i for chunk in my_ids for i in chunk]
        if [r.get("id") for r in sink.records] != expected[:done]:
            raise UserError(f"{sink.path} does not match the selected images; pass --force to start over")
        _check_resumed(sink.records, header, sink.path)
        finished = set(expected[:done])  # whole batches only (the appender keeps batch-aligned prefixes)
        todo = [k for k, chunk in zip(mine, my_ids) if chunk[-1] not in finished]
        total = sum(len(c) for c in my_ids)
        with progress_bar(total=total, initial=done, desc="discover", unit="img", disable=quiet or not dist.is_main) as bar:
            for k in todo:
                chunk = selected.select(range(k * batch, min((k + 1) * batch, len(ids))))
                for batch_ids, images, labels in chunk.batches(transform, batch):
                    found = finder.find_batch(images, labels, batch_ids)
                    _map_to_dense(found.records, header.model.unit_map)
                    sink.append(r.to_json() for r in found.records)
                    done += len(found.records)
                    if dense_log is not None:
                        touched = dense_log.sums.add([r.target for r in found.records], found.step_scores, found.step_own)
                        dense_log.commit(touched, done)
                    bar.set_postfix_str(_postfix(finder, finder.settings.steps * len(batch_ids)), refresh=False)
                    bar.update(len(batch_ids))
    dist.barrier()
    if dist.is_main:
        logs = [ImportanceLog(out / importance_dir(r, dist.world), widths) for r in range(dist.world)] if dense_log else []
        if logs:  # before paths.jsonl marks the run finished
            d = header.discovery
            ImportanceSums.merged([log.sums for log in logs]).save(out / IMPORTANCE, {
                "method": d.method, "steps": d.steps, "token_scope": d.token_scope, "topk": d.topk, "objective": d.objective,
                "label": d.label, "num_images": header.data.num_images})
        _merge_shards(out, dist.world, ids)
        for log in logs:
            log.remove()
    dist.barrier()
    return load_run(out)


def _map_to_dense(records: list[PathRecord], unit_map) -> None:
    """On a pruned model: each record also names its path units by their index in the dense model."""
    if unit_map:
        for rec in records:
            rec.dense_path = [[unit_map[layer][u] for u in units] for layer, units in enumerate(rec.path)]


def _check_resumed(records: list[dict], header: RunHeader, path: Path) -> None:
    """Records already in a partial file must be of this run's settings (a file from another run is refused)."""
    d = header.discovery
    want = {"method": d.method, "topk": d.topk, "steps": d.steps, "token_scope": d.token_scope, "objective": d.objective}
    for n, rec in enumerate(records, 1):
        other = {k: rec.get(k) for k in want if rec.get(k) != want[k]}
        if other:
            raise UserError(f"{path} line {n} holds a record of other settings ({', '.join(f'{k}={v}' for k, v in other.items())}) "
                            "than the run's; pass --force to start over")


def run_files(world: int) -> tuple[str, ...]:
    """What a run writes in its folder, for ``world`` processes (``analysis`` is where analyses of it go)."""
    return (CONFIG, PATHS, IMPORTANCE, *(shard_file(r, world) for r in range(world)),
            *(importance_dir(r, world) for r in range(world)), "analysis")


def shard_file(rank: int, world: int) -> str:
    return PARTIAL if world == 1 else f"paths.partial.rank{rank}-of-{world}.jsonl"


def importance_dir(rank: int, world: int) -> str:
    """Where a process keeps the dense importance of its shard while the run is in progress."""
    return "importance.partial" if world == 1 else f"importance.partial.rank{rank}-of-{world}"


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


__all__ = ["discover", "run_header", "shard_file", "importance_dir", "run_files"]
