"""``vitprune export`` and ``vitprune convert``: ship a checkpoint folder as ONNX; path records to and from the
reference code's files."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..data import data_location, load_data, materialize, model_transform, select_per_class
from ..distributed import get_dist
from ..errors import UserError
from ..export import ONNX_FILE
from ..files import atomic_write_json
from ..model.adapter import data_config
from ..model.load import load_model
from ..options import CompressOptions, ExportOptions
from ..outdir import OutputFolder, check_inputs, output_path, plain_name
from ..pipeline import Pipeline
from ..progress import LOG, stage
from .common import make_options, onnx_metadata
from ..export.onnx import metadata_value
from .shipping import FINGERPRINT_KEY, check_quantize, file_target, fp16_path, int8_path, ship

CHECKPOINT_READS = ("model.safetensors", "vitprune.json", "config.json", "pytorch_model.bin")


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *, data: str | None = None, force: bool = False,
                      quiet: bool = True, **options: Any) -> dict[str, Any]:
    """ONNX of a vitprune checkpoint folder, parity-checked on held-out images of ``data`` (default: the data it was
    pruned on, wherever the command runs from), with the checkpoint's own class names in its metadata; with
    ``quantize="int8"`` the gated int8 model beside it (``ExportOptions``).

    ``out`` (default ``CHECKPOINT/model.onnx``) never replaces a file vitprune did not write: an existing file is
    replaced with ``force`` only if it is vitprune's, never a file the export reads. An ONNX model vitprune already
    exported from these very weights (and int8 settings) is left as it is: up to date."""
    opts = make_options(ExportOptions, {**options, "model": str(checkpoint), "data": data}, "export_checkpoint").validate()
    check_quantize(opts.quantize, opts.int8_mode, opts.max_int8_drop)
    ckpt = Path(checkpoint)
    target = output_path(out) if out is not None else ckpt / ONNX_FILE
    with stage(f"loading the checkpoint {ckpt}", quiet=quiet):
        model = load_model(str(ckpt))
    meta = model.vitprune_meta
    if not meta:
        raise UserError(f"{ckpt} is not a vitprune checkpoint folder (model.safetensors + vitprune.json); pass one written by "
                        "vitprune compress or result.save()")
    fingerprint = model.vitprune_fingerprint
    if not force and _up_to_date(target, fingerprint, opts):
        if not quiet:
            LOG.info(f"vitprune: {target} is up to date (exported from these weights); --force exports it again")
        return {"out": str(target), "up_to_date": True, "onnx": {"bytes": target.stat().st_size}}
    target, guard = file_target(target, force=force, reads=tuple(ckpt / name for name in CHECKPOINT_READS))
    data = opts.data or meta.get("data_resolved") or meta.get("data")
    if not data:
        raise UserError("pass --data with held-out images for the onnxruntime parity check")
    check_inputs(target, [data_location(data)] if data else [])
    specialized = ((meta.get("source_model") or {}).get("specialized_from") or {}).get("classes")
    pools = load_data(data).restricted(tuple(specialized)) if specialized else data  # a specialist: its classes' images
    pipeline = Pipeline(model, pools, CompressOptions(model=str(ckpt), data=data, per_class=opts.per_class), dist=get_dist("cpu"),
                        quiet=True)
    names = list(pipeline.pools.class_names)
    recorded = meta.get("class_names")
    if recorded is not None and list(recorded) != names:
        raise UserError(f"the data '{data}' names its classes {names[:3]}..., the checkpoint {list(recorded)[:3]}...; pass the "
                        "data the model was pruned on (--data) so the ONNX metadata names its classes right")
    held_out = select_per_class(pipeline.pools.evaluation, 2, None, num_classes=pipeline.pools.num_classes)
    images = next(held_out.batches(pipeline.transform, 16))[1]
    metadata = {**onnx_metadata({**meta, "source_model": meta.get("source_model") or {"spec": str(ckpt)}},
                                input_size=list(images.shape[1:]), class_names=names, data_config=data_config(pipeline.dense)),
                FINGERPRINT_KEY: fingerprint, "int8_settings": _int8_settings(opts)}
    with guard as folder:
        if folder is not None:
            folder.own(target.name, *([int8_path(target).name] if opts.quantize else []), *([fp16_path(target).name] if opts.fp16 else []))
        calibration = select_per_class(pipeline.pools.calibration, opts.per_class, None, num_classes=pipeline.pools.num_classes)
        shipped = ship(model, target, metadata=metadata, parity_images=images, quantize=opts.quantize, int8_mode=opts.int8_mode,
                       max_int8_drop=opts.max_int8_drop,
                       evaluation=lambda: materialize(pipeline.evaluation_pool(opts.eval_per_class), pipeline.transform),
                       calibration=lambda: materialize(calibration, model_transform(model))[0], quiet=quiet,
                       runtime=opts.runtime, fp16=opts.fp16, keep_slower_int8=opts.keep_slower_int8)
    result: dict[str, Any] = {"out": str(target), "onnx": shipped.onnx}
    if shipped.int8 is not None:
        result["int8"] = shipped.int8
        result["int8_path"] = str(int8_path(target))
    if shipped.fp16 is not None:
        result["fp16"] = shipped.fp16
    return result


def _int8_settings(opts: ExportOptions) -> str:
    """What the files beside the ONNX model depend on: int8 gates, fp16, opset (recorded in its metadata)."""
    int8 = f"{opts.quantize}:{opts.int8_mode}:{opts.max_int8_drop:g}:{'keep-slower' if opts.keep_slower_int8 else 'faster'}"
    return f"{int8 if opts.quantize else 'none'};fp16={opts.fp16};opset={opts.opset}"


def _up_to_date(target: Path, fingerprint: str, opts: ExportOptions) -> bool:
    """Whether ``target`` is vitprune's export of these weights with these int8 settings (its int8 file, if asked, there)."""
    if not target.is_file() or target.is_symlink():
        return False
    try:
        import onnx

        proto = onnx.load(str(target), load_external_data=False)
    except Exception:
        return False
    props = {p.key: p.value for p in proto.metadata_props}
    return (proto.producer_name == "vitprune" and metadata_value(props, FINGERPRINT_KEY) == fingerprint
            and metadata_value(props, "int8_settings") == _int8_settings(opts))


def convert_run(src: str | Path, dst: str | Path, *, prefix: str | None = None, force: bool = False) -> str:
    """Path records between a vitprune run folder and the reference code's ``{prefix}-{label}.rlt.jsonl`` files. The run
    header travels both ways (in ``{prefix}.args.json``), with the image ids, so records keep their provenance."""
    from ..discovery.records import CONFIG, PATHS, load_run, write_records, write_reference

    src, dst = Path(src), output_path(dst)
    if prefix is not None and not plain_name(prefix):
        raise UserError(f"--prefix '{prefix}' must be a plain file-name prefix (letters, digits, - _ . +), without folders")
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; pass a run folder or a folder of *.rlt.jsonl files")
    check_inputs(dst, [src])
    run = load_run(src)
    to_reference = (src / PATHS).is_file()
    source_digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(src.glob("*.json*")) if p.is_file())).hexdigest()
    settings = {"command": "convert", "source": str(src.resolve()), "source_digest": source_digest, "prefix": prefix,
                "to": "reference" if to_reference else "run"}
    with OutputFolder(dst, "convert") as folder:
        folder.claim("convert.json", settings, what="conversion", force=force)
        staged = folder.staging
        if to_reference:
            header = run.header
            args_json = {"ig_total_step": header.discovery.steps if header else None, "topK": header.discovery.topk if header else None,
                         "model_type": header.model.spec if header else None, "dataset": header.data.spec if header else None,
                         "vitprune": header.to_json() if header else None}
            files = write_reference(run.records, staged, prefix=prefix or "imgnet_all", args=args_json)
            message = f"wrote {len(files)} reference files to {dst}"
        else:
            write_records(staged / PATHS, run.records)
            config = run.header.to_json() if run.header is not None else {"command": "convert", "source": str(src),
                                                                              "num_images": len(run.records)}
            atomic_write_json(staged / CONFIG, config)
            message = f"wrote {len(run.records)} records to {dst / PATHS}" + ("" if run.header else " (no vitprune header: "
                                                                             "unknown provenance)")
        atomic_write_json(staged / "convert.json", settings)
        folder.publish()
        return message


__all__ = ["export_checkpoint", "convert_run"]
