"""What every API function shares: options from keyword arguments, how inputs are named and identified, the settings
files that identify a result, the metadata of checkpoints and ONNX files, and a run's plan (``--dry-run``)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from .. import __version__
from ..data import DataPools, absolute_spec, data_location
from ..model.load import model_location
from ..options import coerce, option_fields, renamed

COMPRESS_SETTINGS = "compress.json"
SWEEP_SETTINGS = "sweep.json"
POINTS = "points.jsonl"


def make_options(cls: type, given: dict[str, Any], what: str) -> Any:
    """``cls`` from an API call's keyword arguments: evaluate's old plural names mapped, unknown names a TypeError (a
    programming error), values checked against their types (one UserError naming the argument)."""
    given = renamed(given, cls)
    known = option_fields(cls)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"{what}() got unknown option(s) {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    return with_data_options(cls(**coerce(cls, given)))


def with_data_options(opts: Any) -> Any:
    """``--split`` / ``--eval-split`` / ``--image-column`` / ``--label-column`` written into the ``hf:`` data spec (and
    cleared): from here on the spec alone names the data, in settings, run headers and checkpoints."""
    from dataclasses import fields as _fields

    from ..data.sources import HF_OPTIONS, hf_spec

    names = {f.name for f in _fields(opts)}
    given = {k: getattr(opts, k) for k in HF_OPTIONS if k in names and getattr(opts, k) is not None}
    if not given or not isinstance(getattr(opts, "data", None), str):
        return opts
    return replace(opts, data=hf_spec(opts.data, **given), **{k: None for k in given})


def spec_of(obj: Any) -> str:
    """How a model or data argument is named in settings and reports."""
    if isinstance(obj, (str, Path)):
        return str(obj)
    if isinstance(obj, DataPools):
        return obj.spec
    if isinstance(obj, nn.Module):
        return getattr(obj, "vitprune_source", {}).get("spec") or f"<in-memory {type(obj).__name__}>"
    if isinstance(obj, (tuple, list)):
        return f"<datasets {'+'.join(type(d).__name__ for d in obj)}>"
    return f"<{type(obj).__name__}>"


def settings_of(opts: Any, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options (and what the result was made from: ``identity``) as they are written to and compared with a settings file."""
    return json.loads(json.dumps({**asdict(opts), **(identity or {}), "vitprune_version": __version__}))


# compress options whose default became None ("not given"; --paths then takes the run's own setting)
_NONE_DEFAULTS = {"steps": 20, "label": "truth"}


def with_defaults(cls: type):
    """Settings of an older run, read as this version's: the options it did not know at their defaults (the same run as
    before they existed), evaluate's old plural names under their current ones."""
    defaults = json.loads(json.dumps(option_fields(cls)))
    legacy = getattr(cls, "legacy_names", {})

    def normalise(old: dict) -> dict:
        if not isinstance(old, dict):
            return old
        old = {legacy.get(k, k): v for k, v in old.items()}
        old = {**defaults, **old}
        for key, value in _NONE_DEFAULTS.items():
            if defaults.get(key, 0) is None and old.get(key) == value:
                old[key] = None
        return old

    return normalise


def inputs_of(model: Any, data: Any, *more: Any) -> list[Path]:
    """The files and folders a run reads: an output must not equal, contain or lie inside any of them."""
    found = [model_location(model) if isinstance(model, (str, Path)) else None,
             data_location(data) if isinstance(data, (str, Path)) else None, *more]
    return [Path(p) for p in found if p]


def checkpoint_meta(dense: nn.Module, mask, *, compensate: str, finetune_epochs: int, data: str,
                    class_names: list[str]) -> dict[str, Any]:
    """What a pruned checkpoint records: how to rebuild it (timm architecture, arguments, pruned widths), its data
    configuration and class names, and where it came from."""
    from ..model.adapter import pretrained_config

    from ..model import SITE_KINDS

    source = dense.vitprune_source
    kinds = {kind: SITE_KINDS.load(kind) for kind in mask.kinds}  # every kind's kept counts and indices, under its keys
    pruned = {key: value for kind, site_kind in kinds.items() for key, value in
              ((site_kind.checkpoint_key, mask.sites[kind].kept_counts), (site_kind.kept_key, [list(k) for k in mask.sites[kind].kept]))}
    return {"arch": source["arch"], "model_args": source.get("model_args", source.get("model_kwargs", {})),
            "pretrained_cfg": pretrained_config(dense), "source_model": source, **pruned, "criterion": mask.criterion, "sparsity": mask.sparsity, "compensate": compensate, "finetune_epochs": finetune_epochs,
            "data": data, "data_resolved": absolute_spec(data) if not data.startswith("<") else data,
            "class_names": list(class_names), "vitprune_version": __version__}


def onnx_metadata(meta: dict[str, Any], *, input_size: list[int], class_names: list[str], data_config: dict) -> dict[str, Any]:
    """The metadata every exported ONNX model carries (one place: compress, the result API and ``vitprune export``):
    where it came from, what was kept, and what a user needs to feed it (input size, mean, std, class names)."""
    keep = ("mean", "std", "interpolation", "crop_pct", "crop_mode")
    return {"source_model": (meta.get("source_model") or {}).get("spec", ""), "criterion": meta.get("criterion", ""),
            "kept_units": meta.get("mlp_hidden"), **({"kept_heads": meta["attn_heads"]} if meta.get("attn_heads") else {}),
            "sparsity": round(meta["sparsity"], 6) if meta.get("sparsity") is not None else None,
            "vitprune_version": __version__, "input_size": list(input_size), "class_names": list(class_names),
            **{k: data_config[k] for k in keep if k in data_config}}


@dataclass
class Plan:
    """What a run would do (``--dry-run`` / ``dry_run=True``): its stages in order, where it writes, and its size."""

    command: str
    out: str | None
    stages: list[str]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps({"command": self.command, "out": self.out, "stages": self.stages, **self.details},
                                     default=str))

    def text(self) -> str:
        lines = [f"plan of vitprune {self.command}" + (f" -> {self.out}" if self.out else "") + ":"]
        lines += [f"  {i + 1}. {s}" for i, s in enumerate(self.stages)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


__all__ = ["make_options", "spec_of", "settings_of", "with_defaults", "inputs_of", "checkpoint_meta", "onnx_metadata", "Plan",
           "COMPRESS_SETTINGS", "SWEEP_SETTINGS", "POINTS"]
