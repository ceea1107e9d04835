"""``vitprune analyze {manipulate,scores,similarity,lens}``: a thin layer over the analysis API.

Each subcommand's parser is generated from its options dataclass (``vitprune.options.ANALYSES``), so it lists only
the options it uses; its settings file (``analysis.json``) is written from those typed options.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..options import ANALYSES, AnalyzeOptions, LensOptions, ManipulateOptions, ScoresOptions, SimilarityOptions
from .parser import add_options, add_run_controls, emit, option_values

EXAMPLES = {
    "manipulate": ["vitprune analyze manipulate --paths runs/demo-paths --eval-per-class 5",
                   "vitprune analyze manipulate --paths runs/jas --paths runs/influence --ops remove,enhance --out runs/edits"],
    "scores": ["vitprune analyze scores --paths runs/jas --paths runs/influence"],
    "similarity": ["vitprune analyze similarity --paths runs/demo-paths --top 3 --classes 0-2"],
    "lens": ["vitprune analyze lens --paths runs/demo-paths --per-class 4"],
}


def _published(opts: AnalyzeOptions, command: str, run: Callable[[Path], dict], *, out: str | None, force: bool) -> dict:
    """Run an analysis into a staged output folder published when complete, with vitprune's ownership rules
    (vitprune.outdir): reruns replace only what vitprune wrote, other settings need --force. The run folders read
    are never written, except their own ``analysis/`` folder."""
    from ..data import data_location
    from ..files import atomic_write_json
    from ..model.load import model_location
    from ..outdir import OutputFolder, check_inputs

    runs = [Path(p) for p in opts.paths]
    for r in runs:
        if not r.is_dir():
            raise UserError(f"--paths {r} is not a folder; pass a finished 'vitprune discover' run folder")
    target = Path(out) if out else runs[0] / "analysis" / command
    model, data = getattr(opts, "model", None), getattr(opts, "data", None)
    check_inputs(target, [model_location(model) if model else None, data_location(data) if data else None])
    check_inputs(target, runs, inside_ok=[r / "analysis" for r in runs])  # a run's own analysis/ folder is where analyses go
    settings = {"command": f"analyze {command}", **_jsonable(asdict(opts)), "runs": [_run_identity(r) for r in runs]}
    with OutputFolder(target, "analyze") as folder:
        folder.claim("analysis.json", settings, what=f"{command} analysis", force=force)
        report = run(folder.staging)
        atomic_write_json(folder.staging / "analysis.json", settings)
        folder.publish()
    report["out"] = str(target)
    return report


def _run_identity(run: Path) -> dict[str, Any]:
    """What an analysis of ``run`` is made from: the model fingerprint its header records and a digest of its records,
    so that another run behind the same folder name is another analysis (refused without --force)."""
    import hashlib

    from ..discovery.records import PATHS, read_header

    header = read_header(run)
    digest = hashlib.sha256()
    try:
        with open(run / PATHS, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        pass
    return {"model_fingerprint": header.model.fingerprint if header is not None else None, "records_digest": digest.hexdigest()}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _options(args: argparse.Namespace, cls: type) -> Any:
    return cls(**option_values(args, cls)).validate()


def cmd_manipulate(args: argparse.Namespace) -> int:
    from ..analysis.editing import MODES, manipulate

    opts: ManipulateOptions = _options(args, ManipulateOptions)
    modes = MODES if opts.mode == "both" else (opts.mode,)
    report = _published(opts, "manipulate", lambda out: manipulate(
        list(opts.paths), out, model=opts.model, data=opts.data, device=opts.device, modes=modes, operations=tuple(opts.ops),
        keep_fraction=opts.keep_fraction, eval_per_class=opts.eval_per_class, batch_size=opts.batch_size, seed=opts.seed,
        quiet=args.quiet), out=args.out, force=args.force)
    lines = [f"{r['mode']:9s} {r['operation']:9s} {r['method']:17s} prob {r['prob_deviation_pct']:+8.2f}%  "
             f"top-1 {100 * r['acc_deviation']:+7.2f} pts  ({r['n_images']} images)" for r in report["results"]]
    lines.append(f"wrote {report['out']}/manipulate.json, manipulate.csv, manipulate_per_class.csv and {len(report['figures'])} figures")
    return emit(args, {"command": "analyze manipulate", **report}, "\n".join(lines))


def cmd_scores(args: argparse.Namespace) -> int:
    from ..analysis.scores import compare_scores

    opts: ScoresOptions = _options(args, ScoresOptions)
    report = _published(opts, "scores", lambda out: compare_scores(list(opts.paths), out), out=args.out, force=args.force)
    lines = [f"{row['method']:17s} n={row['n']:5d} mean {row['mean']:.4g} median {row['median']:.4g}" for row in report["methods"]]
    for c in report["comparisons"]:
        frac = "n/a" if c["fraction"] is None else f"{100 * c['fraction']:.1f}%"
        lines.append(f"{c['comparison']}: {frac} of {c['n_pairs']} images")
    lines.append(f"wrote {report['out']}/scores.json, scores.csv, scores.png")
    return emit(args, {"command": "analyze scores", **report}, "\n".join(lines))


def cmd_similarity(args: argparse.Namespace) -> int:
    from ..analysis.similarity import run_similarity

    opts: SimilarityOptions = _options(args, SimilarityOptions)
    report = _published(opts, "similarity", lambda out: run_similarity(
        opts.paths[0], out, top=opts.top, classes=opts.classes, model=opts.model, quiet=args.quiet), out=args.out, force=args.force)
    text = (f"{len(report['classes'])} classes; wrote {report['out']}/similarity.json, similarity.csv, neighbours.csv "
            f"and {len(report['figures'])} figures")
    return emit(args, {"command": "analyze similarity", **report}, text)


def cmd_lens(args: argparse.Namespace) -> int:
    from ..analysis.lens import lens_analysis

    opts: LensOptions = _options(args, LensOptions)
    report = _published(opts, "lens", lambda out: lens_analysis(
        opts.paths[0], out, model=opts.model, data=opts.data, device=opts.device, per_class=opts.per_class,
        label_topk=opts.label_topk, batch_size=opts.batch_size, quiet=args.quiet), out=args.out, force=args.force)
    last = {g: v[-1] for g, v in report["identifiability"]["resid"].items()}
    text = ("last-block identifiability: " + ", ".join(f"{g} {v:.3f}" for g, v in last.items() if v is not None)
            + f"\nwrote {report['out']}/lens.json and {len(report['figures'])} figures")
    return emit(args, {"command": "analyze lens", **report}, text)


COMMANDS = {"manipulate": (cmd_manipulate, "remove / enhance / keep-only the path units; probability and accuracy deviation"),
            "scores": (cmd_scores, "JAS of jas / activation / influence-pattern paths side by side"),
            "similarity": (cmd_similarity, "class similarity of path unit usage, clustering, per-class path figures"),
            "lens": (cmd_lens, "class-embedding lens: identifiability, attention vs MLP, unit labels")}


def add_analyze_parser(subparsers) -> None:
    """Add ``analyze`` with its four sub-commands to a ``vitprune`` subparsers object."""
    a = subparsers.add_parser("analyze", help="analyses of a finished discover run (edits, scores, similarity, lens)",
                              description="analyses of a finished discover run (edits, scores, similarity, lens)",
                              epilog="examples:\n" + "\n".join(f"  {e[0]}" for e in EXAMPLES.values()))
    sub = a.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, (func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]))
        add_options(p, ANALYSES[name])
        add_run_controls(p, out_help="output folder (default: RUN_DIR/analysis/<analysis>/)",
                         force_help="replace an earlier analysis with other settings in --out")
        p.set_defaults(func=func, options=ANALYSES[name])


__all__ = ["add_analyze_parser", "COMMANDS", "EXAMPLES"]
