"""Provenance: path records are used only with the model, data, settings and classes they were made for.

A run header carries a fingerprint of the weights as loaded, the MLP widths (and, for a pruned
model, the dense index of every unit), the discovery settings, the data spec, pool, class names and
a digest of the image ids. ``check_run`` compares it with what a consumer is about to do and refuses,
in one line naming the difference. Reference ``.rlt.jsonl`` imports carry no header: only their
shape can be checked.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields

from ..errors import UserError
from .records import PathRun
from .settings import DiscoverySettings


def check_run(run: PathRun, *, fingerprint: str, widths: Sequence[int], data_spec: str, given: DiscoverySettings | None = None,
              given_fields: Iterable[str] = (), classes: Iterable[int] = (), evaluation_ids: Iterable[str] = ()) -> None:
    """Refuse records made on another model, with other settings than ``given`` (its ``given_fields``), that miss
    one of ``classes``, or that used images of the evaluation pool."""
    run.check_fits(list(widths))
    header = run.header
    if header is not None:
        model = header.model
        if tuple(model.widths) and tuple(model.widths) != tuple(widths):
            pruned = " (a pruned model's records on the dense model?)" if sum(model.widths) < sum(widths) else ""
            raise UserError(f"the path records in {run.name} were discovered on a model with MLP widths {list(model.widths)}, "
                            f"not this model's {list(widths)}{pruned}; discover on this model")
        if model.fingerprint is not None and model.fingerprint != fingerprint:
            raise UserError(f"the path records in {run.name} were discovered on another model ({model.spec}: its weights differ "
                            "from this model's); discover on this model")
        if header.data.spec and header.data.spec != data_spec:
            raise UserError(f"the path records in {run.name} were discovered on data '{header.data.spec}', not '{data_spec}'; "
                            "discover on this data or pass the data they were made with")
        if given is not None:
            for name in given_fields:
                mine, theirs = getattr(given, name), getattr(header.discovery, name)
                if name == "token_scope" and mine == "auto":
                    continue
                if mine != theirs:
                    raise UserError(f"the path records in {run.name} were discovered with {name}={theirs}, not the "
                                    f"--{name.replace('_', '-')} {mine} given; drop the option or discover again with it")
    missing = sorted(set(classes) - {r.target for r in run.records})
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise UserError(f"the path records in {run.name} cover no image of class(es) {shown}, which this run needs; "
                        "discover on every class (or pass --classes)")
    shared = {r.id for r in run.records} & set(evaluation_ids)
    if shared and (header is None or header.data.spec == data_spec):
        raise UserError(f"the path records in {run.name} were discovered on {len(shared)} images of the evaluation pool "
                        f"(e.g. '{sorted(shared)[0]}'); discover on the calibration pool so evaluation stays held out")


DISCOVERY_FIELDS = tuple(f.name for f in fields(DiscoverySettings))

__all__ = ["check_run", "DISCOVERY_FIELDS"]
