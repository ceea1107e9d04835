"""``vitprune analyze {manipulate,scores,similarity,lens}``: a thin argparse layer over the analysis API."""
from __future__ import annotations

import argparse

from pathlib import Path

from ..errors import UserError
from .args import parse_classes


def _paths(p: argparse.ArgumentParser, several: bool) -> None:
    help_text = "finished discover run folder" + (" (repeat to compare a jas and an influence-pattern run)" if several else "")
    p.add_argument("--paths", action="append" if several else "store", required=True, metavar="RUN_DIR", help=help_text)
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis/<command>/)")
    p.add_argument("--force", action="store_true", help="replace an earlier analysis with other settings in --out")


def _published(args: argparse.Namespace, command: str, run) -> dict:
    """Run an analysis into a staged output folder published when complete, with vitprune's ownership rules
    (vitprune.outdir): reruns replace only what vitprune wrote, other settings need --force. The run folders read
    are never written, except their own ``analysis/`` folder."""
    from ..data import data_location
    from ..files import atomic_write_json
    from ..model.load import model_location
    from ..outdir import OutputFolder, check_inputs

    runs = [Path(p) for p in (args.paths if isinstance(args.paths, list) else [args.paths])]
    for r in runs:
        if not r.is_dir():
            raise UserError(f"--paths {r} is not a folder; pass a finished 'vitprune discover' run folder")
    out = Path(args.out) if args.out else runs[0] / "analysis" / command
    check_inputs(out, [model_location(args.model) if args.model else None, data_location(args.data) if args.data else None])
    check_inputs(out, runs, inside_ok=[r / "analysis" for r in runs])  # a run's own analysis/ folder is where analyses go
    settings = {"command": f"analyze {command}", **{k: v for k, v in sorted(vars(args).items())
                                                   if k not in ("func", "out", "force", "quiet", "command", "analysis")}}
    settings = {k: [str(x) for x in v] if isinstance(v, list) else v for k, v in settings.items()}
    with OutputFolder(out, "analyze") as folder:
        folder.claim("analysis.json", settings, what=f"{command} analysis", force=args.force)
        report = run(folder.staging)
        atomic_write_json(folder.staging / "analysis.json", settings)
        folder.publish()
    report["out"] = str(out)
    return report


def _model_data(p: argparse.ArgumentParser, unused: str | None = None) -> None:
    """The options every analyze command takes, so one command line pattern serves them all; ``unused``
    says in --help why a command does not need them."""
    note = f" (not used here: {unused})" if unused else ""
    g = p.add_argument_group("model and data" + note)
    g.add_argument("--model", default=None, help="model spec (default: the run's config.json model)")
    g.add_argument("--data", default=None, help="data spec (default: the run's config.json data)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    g.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true")


def cmd_manipulate(args: argparse.Namespace) -> int:
    from ..analysis.editing import MODES, OPERATIONS, manipulate

    modes = MODES if args.mode == "both" else (args.mode,)
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    unknown = [o for o in ops if o not in OPERATIONS]
    if unknown or not ops:
        raise UserError(f"--ops takes a comma list from {', '.join(OPERATIONS)} (got '{args.ops}')")
    report = _published(args, "manipulate", lambda out: manipulate(
        args.paths, out, model=args.model, data=args.data, device=args.device, modes=modes, operations=ops,
        keep_fraction=args.keep_fraction, eval_per_class=args.eval_per_class, batch_size=args.batch_size, seed=args.seed,
        quiet=args.quiet))
    for r in report["results"]:
        print(f"{r['mode']:9s} {r['operation']:9s} {r['method']:17s} prob {r['prob_deviation_pct']:+8.2f}%  "
              f"top-1 {100 * r['acc_deviation']:+7.2f} pts  ({r['n_images']} images)")
    print(f"wrote {report['out']}/manipulate.json, manipulate.csv, manipulate_per_class.csv and {len(report['figures'])} figures")
    return 0


def cmd_scores(args: argparse.Namespace) -> int:
    from ..analysis.scores import compare_scores

    report = _published(args, "scores", lambda out: compare_scores(args.paths, out))
    for row in report["methods"]:
        print(f"{row['method']:17s} n={row['n']:5d} mean {row['mean']:.4g} median {row['median']:.4g}")
    for c in report["comparisons"]:
        frac = "n/a" if c["fraction"] is None else f"{100 * c['fraction']:.1f}%"
        print(f"{c['comparison']}: {frac} of {c['n_pairs']} images")
    print(f"wrote {report['out']}/scores.json, scores.csv, scores.png")
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    from ..analysis.similarity import run_similarity

    report = _published(args, "similarity", lambda out: run_similarity(
        args.paths, out, top=args.top, classes=parse_classes(args.classes), model=args.model, quiet=args.quiet))
    print(f"{len(report['classes'])} classes; wrote {report['out']}/similarity.json, similarity.csv, neighbours.csv "
          f"and {len(report['figures'])} figures")
    return 0


def cmd_lens(args: argparse.Namespace) -> int:
    from ..analysis.lens import lens_analysis

    report = _published(args, "lens", lambda out: lens_analysis(
        args.paths, out, model=args.model, data=args.data, device=args.device, per_class=args.per_class,
        label_topk=args.label_topk, batch_size=args.batch_size, quiet=args.quiet))
    last = {g: v[-1] for g, v in report["identifiability"]["resid"].items()}
    print("last-block identifiability: " + ", ".join(f"{g} {v:.3f}" for g, v in last.items() if v is not None))
    print(f"wrote {report['out']}/lens.json and {len(report['figures'])} figures")
    return 0


def add_analyze_parser(subparsers) -> None:
    """Add ``analyze`` with its four sub-commands to a ``vitprune`` subparsers object."""
    a = subparsers.add_parser("analyze", help="analyses of a finished discover run (edits, scores, similarity, lens)")
    sub = a.add_subparsers(dest="analysis", required=True)

    m = sub.add_parser("manipulate", help="remove / enhance / keep-only the path units; probability and accuracy deviation")
    _paths(m, several=True)
    _model_data(m)
    m.add_argument("--mode", default="both", choices=["per-image", "class", "both"],
                   help="per-image paths (in-sample) and/or class-level mode paths on held-out images (default: both)")
    m.add_argument("--ops", default="remove,enhance,keep-only", help="comma list of remove, enhance, keep-only")
    m.add_argument("--keep-fraction", type=float, default=1.0,
                   help="keep-only: fraction of the non-path units to zero, seeded (default: 1 = all)")
    m.add_argument("--eval-per-class", type=int, default=10, help="held-out images per class, class mode (default: 10)")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_manipulate)

    s = sub.add_parser("scores", help="JAS of jas / activation / influence-pattern paths side by side")
    _paths(s, several=True)
    _model_data(s, unused="the scores are read from the path records")
    s.set_defaults(func=cmd_scores)

    c = sub.add_parser("similarity", help="class similarity of path unit usage, clustering, per-class path figures")
    _paths(c, several=False)
    c.add_argument("--top", type=int, default=5, help="most/least similar classes listed per class (default: 5)")
    c.add_argument("--classes", default=None, help="classes to draw path figures for, e.g. 0,3,5-7 (default: all)")
    _model_data(c, unused="only --model, for the MLP widths when the run's config.json lacks them; no images are read")
    c.set_defaults(func=cmd_similarity)

    lens = sub.add_parser("lens", help="class-embedding lens: identifiability, attention vs MLP, unit labels")
    _paths(lens, several=False)
    _model_data(lens)
    lens.add_argument("--per-class", type=int, default=None, help="images per class (default: the run's selection)")
    lens.add_argument("--label-topk", type=int, default=None, help="classes per unit label (default: 5, or the class count if smaller)")
    lens.set_defaults(func=cmd_lens)
