"""Provenance: path records are used only with the model, data, settings and classes they were made for.

A run header carries a fingerprint of the weights as loaded, the MLP widths (and, for a pruned
model, the dense index of every unit), the discovery settings, the data spec, pool, class names and
a digest of the image ids and of their content. ``check_run`` compares it with what a consumer is about to do and
refuses, in one line naming the difference. Records without a vitprune header (reference ``.rlt.jsonl`` files, a
conversion that lost it) are of unknown provenance: accepted with a warning, their per-line settings compared with
the options given, and never claimed to be held out of the evaluation images.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields

from ..errors import UserError
from ..progress import LOG
from .records import PathRun, RunHeader
from .settings import DiscoverySettings


def check_run(run: PathRun, *, fingerprint: str, widths: Sequence[int], data_spec: str, given: DiscoverySettings | None = None,
              given_fields: Iterable[str] = (), classes: Iterable[int] = (), evaluation_ids: Iterable[str] = (),
              data_digest: Callable[[RunHeader], str | None] | None = None) -> None:
    """Refuse records made on another model, on other images behind the same data spec (``data_digest(header)``: the
    digest of the header's selection in the data as it is now), with other settings than ``given`` (its
    ``given_fields``), that miss one of ``classes``, or that used images of the evaluation pool."""
    run.check_fits(list(widths))
    header = run.header
    given_fields = list(given_fields)
    if header is None:
        LOG.warning(f"the path records in {run.name} carry no vitprune header (unknown provenance): the model, data and images "
                    "they were made on cannot be checked, and they are not counted as held out of the evaluation images")
        if given is not None:
            for name in given_fields:
                mine = getattr(given, name)
                theirs = {getattr(r, name, None) for r in run.records}
                if name == "token_scope" and mine == "auto":
                    continue
                if theirs != {mine}:
                    said = ", ".join(sorted(map(str, theirs)))
                    raise UserError(f"the path records in {run.name} (unknown provenance) say {name}={said}, not the "
                                    f"--{name.replace('_', '-')} {mine} given; drop the option or pass records made with it")
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
        if header.data.digest is not None and data_digest is not None and data_digest(header) not in (None, header.data.digest):
            raise UserError(f"the images behind '{data_spec}' changed since the path records in {run.name} were discovered "
                            "(their content digest differs); discover again on the data as it is")
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
