"""What every analysis reads: finished discover runs, and the model and data they were made with."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..discovery.records import PathRecord, PathRun, load_run
from ..distributed import resolve_device
from ..errors import UserError
from ..files import atomic_write_text

METHODS = ("jas", "activation", "influence-pattern")


def load_runs(paths: Sequence[str | Path]) -> list[PathRun]:
    runs = [load_run(Path(p)) for p in paths]
    if not runs:
        raise UserError("pass at least one --paths run folder")
    for run in runs:
        if not run.records:
            raise UserError(f"{run.folder} holds no path records; rerun 'vitprune discover'")
    return runs


def default_out(run: PathRun, command: str) -> Path:
    return run.folder / "analysis" / command


def _header_value(run: PathRun, key: str) -> str | None:
    if run.header is None:
        return None
    return {"model": run.header.model.spec, "data": run.header.data.spec}[key]


def resolve_spec(runs: Sequence[PathRun], key: str, given: str | None) -> str:
    """``--model`` / ``--data`` if given, else the runs' common header value."""
    if given:
        return given
    values = {_header_value(r, key) for r in runs}
    if None in values:
        raise UserError(f"{runs[0].folder} has no run header value for '{key}' (imported reference files?); pass --{key}")
    if len(values) > 1:
        raise UserError(f"the runs were made with different {key}s {sorted(values)}; pass --{key} to choose one")
    return values.pop()


def load_run_model(runs: Sequence[PathRun], model: str | None, device: str) -> nn.Module:
    """``--model`` (default: the runs'), refused when its weights are not the ones the runs were discovered on."""
    from ..model.load import load_model, model_fingerprint

    spec = resolve_spec(runs, "model", model)
    source = runs[0].header.model.source if runs[0].header is not None else {}
    is_file = not (spec in ("demo",) or spec.startswith(("zoo:", "random:")))
    arch = source.get("arch") if not model and is_file and Path(spec).is_file() else None
    args = (source.get("model_args") or source.get("model_kwargs")) if not model and arch else None
    net = load_model(spec, arch=arch, model_args=args)
    mine = model_fingerprint(net)
    for run in runs:
        theirs = run.header.model.fingerprint if run.header is not None else None
        if theirs is not None and theirs != mine:
            raise UserError(f"{run.folder} was discovered on another model than '{spec}' (their weights differ); pass the "
                            "model the run was made with (--model)")
    return net.to(resolve_device(device)).eval()


def load_run_data(runs: Sequence[PathRun], data: str | None, num_classes: int):
    """The data pools of ``--data`` (default: the runs'), checked against the model's class count."""
    from ..data import load_data

    spec = resolve_spec(runs, "data", data)
    pools = load_data(spec)
    if pools.num_classes != num_classes:
        raise UserError(f"the data '{pools.spec}' has {pools.num_classes} classes but the model head has {num_classes}; "
                        "pass data that matches the model, or a model trained on this data")
    return spec, pools


def check_paths(records: Sequence[PathRecord], key: str, widths: Sequence[int], folder: Path | None) -> None:
    """Paths must have one entry per block and unit indices inside each block's MLP width."""
    for rec in records:
        path = getattr(rec, key)
        if path is None:
            raise UserError(f"a record of {folder} has no '{key}'; rerun 'vitprune discover' for that method")
        if len(path) != len(widths):
            raise UserError(f"paths in {folder} have {len(path)} layers but the model has {len(widths)} blocks; "
                            "pass the model the run was made with (--model)")
        for layer, units in enumerate(path):
            if any(not 0 <= int(u) < widths[layer] for u in units):
                raise UserError(f"paths in {folder} use unit indices beyond block {layer}'s MLP width "
                                f"{widths[layer]}; pass the model the run was made with (--model)")


def method_sources(runs: Sequence[PathRun]) -> dict[str, tuple[PathRun, str]]:
    """method -> (run, record field): jas/influence-pattern from each run's 'path', activation from 'base_path'."""
    out: dict[str, tuple[PathRun, str]] = {}
    for run in runs:
        method = run.method
        if method not in ("jas", "influence-pattern"):
            raise UserError(f"{run.folder} holds '{method}' paths; analyze handles jas and influence-pattern runs")
        if method in out:
            raise UserError(f"two {method} runs given ({out[method][0].folder}, {run.folder}); pass one run per method")
        out[method] = (run, "path")
    for run in sorted(runs, key=lambda r: r.method != "jas"):
        if all(r.base_path for r in run.records):
            out.setdefault("activation", (run, "base_path"))
    return {m: out[m] for m in METHODS if m in out}


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


__all__ = ["load_runs", "default_out", "resolve_spec", "load_run_model", "load_run_data", "check_paths", "method_sources",
           "write_csv", "METHODS"]
