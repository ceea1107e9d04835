"""``vitprune.discover``: per-image top-K paths of a model's selected images, resumable on disk."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..data import select_per_class
from ..discovery.records import PathRun
from ..discovery.run import discover as run_discovery
from ..discovery.settings import DiscoverySettings
from ..distributed import get_dist
from ..options import DiscoverOptions
from ..outdir import check_inputs, output_path
from ..pipeline import Pipeline
from ..progress import stage
from .common import Plan, inputs_of, make_options, settings_of, spec_of


def discover(model: str | nn.Module = "demo", data: Any = "demo", *, out: str | Path | None = None, resume: bool = False,
             force: bool = False, quiet: bool = False, dry_run: bool = False, **options: Any) -> PathRun | Plan | None:
    """Top-K paths (``method``) of every selected image (``DiscoverOptions``: the reference's settings by default).

    Args:
        model / data: as for ``compress``.
        out: the run folder, resumable (``resume=True`` continues an interrupted run; a finished run of the same model,
            images and settings is returned as it is). Another run there needs ``force`` (it stays until the new one is
            complete).
        dry_run: return the ``Plan`` without discovering.
        options: ``DiscoverOptions``.

    Returns the finished run on the main process (None on the others under torchrun / accelerate launch).
    """
    opts = make_options(DiscoverOptions, {**options, "model": spec_of(model), "data": spec_of(data)}, "discover").validate()
    settings = DiscoverySettings(method=opts.method, topk=opts.topk, steps=opts.steps, token_scope=opts.token_scope,
                                 label=opts.label, objective=opts.objective, precision=opts.precision, max_rows=opts.max_rows).check()
    dist = get_dist(opts.device)
    out = output_path(out)
    if out is not None:
        check_inputs(out, inputs_of(model, data))
    with stage(f"loading model {spec_of(model)} and data {spec_of(data)}", quiet=quiet or not dist.is_main):
        pipeline = Pipeline(model, data, opts, dist=dist, quiet=quiet)
    pool = pipeline.pools.calibration if opts.pool == "calibration" else pipeline.pools.evaluation
    selected = select_per_class(pool, opts.per_class, opts.classes, num_classes=pipeline.pools.num_classes)
    if dry_run:
        stages = [f"load model {opts.model} ({pipeline.adapter.depth} blocks) and data {opts.data}",
                  f"discovery: {settings.method} top-{settings.topk} paths of {len(selected)} {opts.pool} images (m = "
                  f"{settings.steps}, token scope {settings.token_scope}, objective {settings.objective}, label {settings.label})"
                  + (f", resumable in {out}" if out is not None else "")]
        return Plan("discover", str(out) if out is not None else None, stages, {"images": len(selected), "options": settings_of(opts)})
    with stage(f"discovery: {settings.method} top-{settings.topk} paths of {len(selected)} {opts.pool} images (m = {settings.steps})",
               quiet=quiet or not dist.is_main):
        run = run_discovery(pipeline.dense, settings, pipeline.pools, selected, pool=opts.pool, per_class=opts.per_class,
                            classes=opts.classes, batch_size=opts.batch_size, dist=dist, out=out, resume=resume, force=force,
                            quiet=quiet or not dist.is_main, inputs=tuple(inputs_of(model, data)))
    return run if dist.is_main else None


__all__ = ["discover"]
