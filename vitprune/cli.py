"""Command line: a thin layer over the library. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import UserError


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """'0,3,5-7' -> (0, 3, 5, 6, 7)."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += range(int(lo), int(hi) + 1) if hi else [int(lo)]
    except ValueError as exc:
        raise UserError(f"--classes takes ids like 0,3,5-7 (got '{text}')") from exc
    return tuple(sorted(set(out)))


def _add_model_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="demo", help="demo | random:NAME | timm NAME | checkpoint file | vitprune folder (default: demo)")
    g.add_argument("--arch", default=None, help="timm architecture of a checkpoint file (inferred when omitted)")
    g.add_argument("--data", default="demo", help="demo | fashion-mnist[:DIR] | imagefolder:DIR | hf:NAME (default: demo)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")


def _add_discovery(p: argparse.ArgumentParser, per_class_default: int | None) -> None:
    g = p.add_argument_group("path discovery")
    g.add_argument("--per-class", type=int, default=per_class_default, help=f"images per class (default: {per_class_default})")
    g.add_argument("--classes", default=None, help="class ids, e.g. 0,3,5-7 (default: all)")
    g.add_argument("--topk", type=int, default=1, help="units per layer on each path (default: 1)")
    g.add_argument("--steps", type=int, default=20, help="interpolation steps m, alpha = k/m for k < m (default: 20)")
    g.add_argument("--method", default="jas", choices=["jas", "influence-pattern"])
    g.add_argument("--token-scope", default="auto", choices=["auto", "cls", "patches", "all"],
                   help="tokens a unit is scaled at: auto = what the head reads (cls, or patches when average-pooled)")
    g.add_argument("--label", default="truth", choices=["truth", "pred"], help="class whose probability is attributed")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-rows", type=int, default=None, help="scaled rows per forward/backward, bounds memory (default: all m*B)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitprune", description="Neuron-path discovery and FFN pruning for timm ViTs.")
    parser.add_argument("--version", action="version", version=f"vitprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="find per-image neuron paths (JAS) and write them as JSONL records")
    _add_model_data(d)
    _add_discovery(d, per_class_default=8)
    d.add_argument("--pool", default="calibration", choices=["calibration", "evaluation"])
    d.add_argument("--out", required=True, help="run folder")
    d.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    d.add_argument("--force", action="store_true", help="replace a different run in --out")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_discover)

    c = sub.add_parser("convert", help="convert path records between vitprune runs and the reference .rlt.jsonl format")
    c.add_argument("src", help="a vitprune run folder (-> reference files) or a folder of *.rlt.jsonl (-> vitprune run)")
    c.add_argument("dst", help="output folder")
    c.add_argument("--prefix", default=None, help="reference file prefix (default: imgnet_all when writing)")
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_convert)
    return parser


def cmd_discover(args: argparse.Namespace) -> int:
    from .discover import DiscoverOptions, run_discover

    opts = DiscoverOptions(
        model=args.model, arch=args.arch, data=args.data, pool=args.pool, per_class=args.per_class,
        classes=parse_classes(args.classes), topk=args.topk, steps=args.steps, method=args.method,
        token_scope=args.token_scope, label=args.label, batch_size=args.batch_size, max_rows=args.max_rows,
        device=args.device,
    )
    path = run_discover(opts, Path(args.out), resume=args.resume, force=args.force, quiet=args.quiet)
    print(f"paths: {path}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .records import CONFIG, PATHS, atomic_write_json, load_run_records, read_json, write_reference

    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; pass a run folder or a folder of *.rlt.jsonl files")
    if dst.exists() and any(dst.iterdir()) and not args.force:
        raise UserError(f"{dst} is not empty; pass --force to write into it")
    records = load_run_records(src)
    if (src / PATHS).is_file():
        cfg = read_json(src / CONFIG) if (src / CONFIG).is_file() else {}
        args_json = {"ig_total_step": cfg.get("steps"), "topK": cfg.get("topk"), "model_type": cfg.get("model"),
                     "dataset": cfg.get("data"), "vitprune": cfg}
        files = write_reference(records, dst, prefix=args.prefix or "imgnet_all", args=args_json)
        print(f"wrote {len(files)} reference files to {dst}")
    else:
        dst.mkdir(parents=True, exist_ok=True)
        from .records import atomic_write_text
        import json

        atomic_write_text(dst / PATHS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        atomic_write_json(dst / CONFIG, {"command": "convert", "source": str(src), "num_images": len(records)})
        print(f"wrote {len(records)} records to {dst / PATHS}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"vitprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vitprune: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
