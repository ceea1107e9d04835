"""Command line: argparse, recipes and the error policy over ``vitprune.api``. User errors print one line and exit 2.

No pipeline logic lives here: each command turns its flags into the API's keyword arguments, calls
it, and prints what came back. Choices of extensible options come from the registries.
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..criteria import CRITERIA, HEAD_CRITERIA
from ..defaults import (DISCOVERY_DEFAULT, FAITHFUL_DISCOVERY, HEAD_DEFAULT, JAS_DEFAULT, KEEP_DEFAULT, LSQ_DEFAULT, PER_CLASS_DEFAULT,
                        SPARSITY_DEFAULT)
from ..discovery import DISCOVERY_METHODS
from ..errors import ExportError, UserError
from ..model import SITE_KINDS
from ..options import (INT8_MODES, JAS_AGGREGATIONS, LABEL_SOURCES, LSQ_TARGETS, MASK_SCOPES, OBJECTIVES, POOLS, PRECISIONS,
                       TOKEN_SCOPES, TOKEN_WEIGHTINGS, CompressOptions, DiscoverOptions, EvaluateOptions)
from ..prune import COMPENSATIONS
from .args import floats, ints, names, parse_classes, parse_model_args
from .recipes import apply_recipe, config_path, load_recipe, resolved_config


def _add_model_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="demo", help="demo | zoo:NAME | random:NAME | timm NAME | checkpoint file | vitprune folder (default: demo)")
    g.add_argument("--arch", default=None, help="timm architecture of a plain state dict file, with the pretrained tag that "
                   "names its preprocessing (e.g. vit_base_patch16_224.mae)")
    g.add_argument("--model-args", default=None, metavar="KEY=VALUE,...",
                   help="timm.create_model arguments where the state dict differs from --arch (e.g. global_pool=avg,img_size=96) "
                        "or of a random:NAME model (e.g. num_classes=10)")
    g.add_argument("--data", default="demo", help="demo | fashion-mnist[:DIR] | imagefolder:DIR | hf:NAME (default: demo)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="model forwards of every stage: discovery, statistics, least squares, evaluation (default: fp32)")


def _add_discovery(p: argparse.ArgumentParser, per_class_default: int | None, *, compress: bool = False) -> None:
    g = p.add_argument_group("path discovery")
    g.add_argument("--per-class", type=int, default=per_class_default,
                   help=f"calibration images per class (default: {per_class_default})")
    g.add_argument("--classes", default=None, help="class ids, e.g. 0,3,5-7 (default: all)")
    if compress:
        g.add_argument("--topk", type=int, default=None, help="units per layer on each path (default: --keep-topk, else 5)")
    else:
        g.add_argument("--topk", type=int, default=1, help="units per layer on each path (default: 1)")
        g.add_argument("--method", default="jas", choices=DISCOVERY_METHODS.names(), help=DISCOVERY_METHODS.help())
    if compress:
        g.add_argument("--steps", type=int, default=None,
                       help=f"interpolation steps m, alpha = k/m for k < m (default: {DISCOVERY_DEFAULT['steps']}, the cost-quality "
                            f"study's knee; {FAITHFUL_DISCOVERY['steps']} with --faithful-discovery; with --paths the run's)")
        g.add_argument("--faithful-discovery", action="store_true",
                       help=f"discover with the reference's m = {FAITHFUL_DISCOVERY['steps']} steps instead of the cheaper default "
                            "(eval/results/cost_quality/summary.md)")
    else:
        g.add_argument("--steps", type=int, default=20, help="interpolation steps m, alpha = k/m for k < m (default: 20, the reference's)")
    scope, objective = (JAS_DEFAULT["token_scope"], JAS_DEFAULT["objective"]) if compress else ("auto", "prob")
    g.add_argument("--token-scope", default=None if compress else scope, choices=TOKEN_SCOPES,
                   help="tokens a unit is scaled at: auto = what the head reads (cls, or patches when average-pooled), "
                        f"all = every token, as physical pruning removes it (default: {scope})")
    g.add_argument("--label", default=None if compress else "truth", choices=LABEL_SOURCES,
                   help="class whose probability is attributed (default: truth" + (", or with --paths the run's)" if compress else ")"))
    g.add_argument("--objective", default=None if compress else objective, choices=OBJECTIVES,
                   help="F whose gradient is integrated: prob (the reference), logprob, or kl (minus the divergence from "
                        f"the clean output; label-free) (default: {objective})")
    if compress:
        g.add_argument("--jas-aggregation", default=None, choices=JAS_AGGREGATIONS,
                       help="how --criterion jas pools the greedy scores S of every unit over images: mean of S, of |S|, of "
                            f"S normalised per image, or |own integrated gradient|; class-balanced (default: {JAS_DEFAULT['aggregation']})")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-rows", type=int, default=None, help="scaled rows per forward/backward (default: as many as fit in 80%% of the free memory, measured on the first batch)")


def _add_int8(g) -> None:
    g.add_argument("--quantize", default=None, choices=["int8"], help="also write model.int8.onnx (onnxruntime quantization), "
                   "kept only if its top-1 on the evaluation images is within --max-int8-drop points of the fp32 model's")
    g.add_argument("--int8-mode", default="static", choices=INT8_MODES,
                   help="static: QDQ, calibrated on the calibration images; dynamic: activation scales at run time (default: static)")
    g.add_argument("--max-int8-drop", type=float, default=1.0, help="top-1 points int8 may lose against fp32 (default: 1)")


def _add_output(p: argparse.ArgumentParser, out_help: str, force_help: str, *, required: bool = False) -> None:
    """--out, --force, --quiet and --config, which every command that writes a result folder takes."""
    p.add_argument("--out", default=None, required=required, help=out_help)
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--config", default=None, metavar="RECIPE.yaml", help="options from a recipe (recipes/); flags given here override it")


class _Parser(argparse.ArgumentParser):
    """argparse with the tool's error format: one line naming the fix, exit code 2 (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"vitprune: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vitprune", description="Neuron-path discovery and structured pruning for timm ViTs.")
    parser.add_argument("--version", action="version", version=f"vitprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="find per-image neuron paths (JAS) and write them as JSONL records")
    _add_model_data(d)
    _add_discovery(d, per_class_default=8)
    d.add_argument("--pool", default="calibration", choices=POOLS)
    d.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_output(d, "run folder", "replace a different run in --out", required=True)
    d.set_defaults(func=cmd_discover)

    p = sub.add_parser("compress", help="keep the critical neurons, slice the MLPs, evaluate, export ONNX")
    _add_model_data(p)
    g = p.add_argument_group("what to keep (exactly one)")
    g.add_argument("--keep-topk", type=int, default=None,
                   help="keep each class's K top path units per layer (union over classes), ranked by --criterion")
    g.add_argument("--sparsity", type=float, default=None, help="remove this fraction of MLP hidden units, ranked by --criterion")
    g.add_argument("--target-macs", type=float, default=None,
                   help="prune to this fraction of the dense model's MACs (e.g. 0.5), ranked by --criterion, allocated by --scope")
    g = p.add_argument_group("budget")
    g.add_argument("--criterion", default=None, choices=CRITERIA.names(),
                   help=f"{CRITERIA.help()} (default: the zoo's best, {SPARSITY_DEFAULT['criterion']} for --sparsity, "
                        f"{KEEP_DEFAULT['criterion']} for --keep-topk; see README)")
    g.add_argument("--scope", default=None, choices=MASK_SCOPES,
                   help="per-block: the same fraction in every block; global: one ranking over all blocks of scores divided by "
                        "their block mean (per MAC for --target-macs); global-raw: of the raw scores (default: per-block; "
                        f"with --prune mlp,heads {HEAD_DEFAULT['scope']}, the heads study's choice)")
    _add_prune(g)
    g.add_argument("--head-criterion", default=None, choices=HEAD_CRITERIA.names(),
                   help=f"with --prune mlp,heads: how heads are ranked; {HEAD_CRITERIA.help()} (default: the zoo's best, "
                        f"{HEAD_DEFAULT['criterion']})")
    g.add_argument("--min-keep", type=int, default=1, help="units kept in every block at least (default: 1)")
    g.add_argument("--round-to", type=int, default=1, help="round kept counts to a multiple of this (default: 1)")
    g.add_argument("--compensate", default=None, choices=COMPENSATIONS.names(),
                   help=f"{COMPENSATIONS.help()} (default: the zoo's best, {SPARSITY_DEFAULT['compensate']} for --sparsity, "
                        f"{KEEP_DEFAULT['compensate']} for --keep-topk)")
    g.add_argument("--lsq-target", default=LSQ_DEFAULT["target"], choices=LSQ_TARGETS,
                   help="lsq: reproduce each block's own fc2 output on the pruned inputs (local) or the dense model's block "
                        f"output, undoing the drift of earlier blocks (output) (default: {LSQ_DEFAULT['target']})")
    g.add_argument("--lsq-weighting", default=LSQ_DEFAULT["weighting"], choices=TOKEN_WEIGHTINGS,
                   help="lsq: every token weighs the same (uniform), or the tokens a CLS-pooled head reads weigh as much as "
                        f"all others together (readout) (default: {LSQ_DEFAULT['weighting']})")
    g.add_argument("--seed", type=int, default=0)
    _add_discovery(p, per_class_default=PER_CLASS_DEFAULT, compress=True)
    p.add_argument("--paths", default=None, help="reuse a finished discover run (or a folder of reference .rlt.jsonl files)")
    g = p.add_argument_group("evaluation, recovery and export")
    g.add_argument("--eval-per-class", type=int, default=None, help="held-out images per class (default: the whole evaluation pool)")
    g.add_argument("--finetune-epochs", type=int, default=0, help="epochs of distillation from the dense model (default: 0)")
    g.add_argument("--finetune-lr", type=float, default=1e-4)
    g.add_argument("--finetune-per-class", type=int, default=None, help="training images per class for recovery (default: all)")
    g.add_argument("--no-export", action="store_true", help="skip ONNX export and latency")
    g.add_argument("--latency-rounds", type=int, default=30, help="interleaved onnxruntime timing rounds (default: 30)")
    _add_int8(g)
    _add_output(p, "output folder (default: exported/<name derived from the settings>)",
                "replace a different result in the output folder")
    p.set_defaults(func=cmd_compress)

    v = sub.add_parser("evaluate", help="accuracy vs FFN sparsity for several criteria (CSV, JSON, Markdown, PNG)")
    _add_model_data(v)
    v.add_argument("--sparsities", default="0.25,0.5,0.75,0.9", help="FFN sparsities to sweep (default: 0.25,0.5,0.75,0.9)")
    v.add_argument("--target-macs", default="", help="MAC budgets to sweep as fractions of the dense model's MACs, e.g. 0.5,0.7 "
                   "(allocated by --scope; default: none)")
    v.add_argument("--criteria", default=",".join(CRITERIA.names()), help=f"comma list from {', '.join(CRITERIA.names())} (default: all)")
    v.add_argument("--keep-topk", default="", help="K values of keep-topk points for the path criteria, e.g. 1,5,20 (default: none)")
    _add_prune(v)
    v.add_argument("--head-criteria", default=None,
                   help=f"with --prune mlp,heads: comma list from {', '.join(HEAD_CRITERIA.names())}; every budget point once per "
                        f"head criterion (keep-topk points prune MLPs only; default: {HEAD_DEFAULT['criterion']})")
    v.add_argument("--compensate", default=",".join(COMPENSATIONS.names()),
                   help=f"comma list of compensations from {', '.join(COMPENSATIONS.names())} (default: all)")
    v.add_argument("--seeds", default="0,1,2", help="seeds of the random criterion (default: 0,1,2)")
    v.add_argument("--token-scopes", default=JAS_DEFAULT["token_scope"],
                   help=f"discovery token scopes of the path criteria, from {', '.join(TOKEN_SCOPES)} (default: {JAS_DEFAULT['token_scope']})")
    v.add_argument("--objectives", default=JAS_DEFAULT["objective"],
                   help=f"discovery objectives of the path criteria, from {', '.join(OBJECTIVES)} (default: {JAS_DEFAULT['objective']})")
    v.add_argument("--jas-aggregations", default=JAS_DEFAULT["aggregation"],
                   help=f"aggregations of criterion jas, from {', '.join(JAS_AGGREGATIONS)} (default: {JAS_DEFAULT['aggregation']})")
    v.add_argument("--per-class", type=int, default=PER_CLASS_DEFAULT, help=f"calibration images per class (default: {PER_CLASS_DEFAULT})")
    v.add_argument("--classes", default=None)
    v.add_argument("--eval-per-class", type=int, default=None, help="held-out images per class (default: all)")
    v.add_argument("--selection-per-class", type=int, default=None,
                   help="also score every point on the last N images per class of the calibration pool (never calibration "
                        "images): choose settings there, report on the evaluation pool (default: off)")
    v.add_argument("--lsq-target", default=LSQ_DEFAULT["target"], choices=LSQ_TARGETS,
                   help=f"what --compensate lsq fits: local fc2 outputs or the dense block outputs (default: {LSQ_DEFAULT['target']})")
    v.add_argument("--lsq-weighting", default=LSQ_DEFAULT["weighting"], choices=TOKEN_WEIGHTINGS,
                   help=f"token weights of the lsq fit (default: {LSQ_DEFAULT['weighting']})")
    v.add_argument("--topk", type=int, default=5, help="discovery K of the run behind the path-criterion budget points (default: 5)")
    v.add_argument("--steps", type=int, default=DISCOVERY_DEFAULT["steps"],
                   help=f"interpolation steps m of the path criteria's discovery (default: {DISCOVERY_DEFAULT['steps']}, as compress; "
                        f"the reference's: {FAITHFUL_DISCOVERY['steps']})")
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--max-rows", type=int, default=None)
    v.add_argument("--scope", default=None, choices=MASK_SCOPES,
                   help=f"allocation of the budget over blocks (see compress; default: per-block, {HEAD_DEFAULT['scope']} with heads)")
    v.add_argument("--min-keep", type=int, default=1)
    v.add_argument("--round-to", type=int, default=1, help="round kept counts to a multiple of this (default: 1)")
    v.add_argument("--finetune-epochs", type=int, default=0, help="recovery epochs per point (default: 0 = one-shot)")
    v.add_argument("--finetune-per-class", type=int, default=None, help="training images per class for recovery")
    v.add_argument("--finetune-lr", type=float, default=1e-4)
    v.add_argument("--latency", action="store_true", help="ONNX-export every point and time it with onnxruntime")
    _add_output(v, "sweep folder (resumable)", "replace a different sweep in --out", required=True)
    v.set_defaults(func=cmd_evaluate)

    e = sub.add_parser("export", help="export a pruned (or any vitprune) checkpoint folder to ONNX")
    e.add_argument("checkpoint", help="folder with model.safetensors + vitprune.json")
    e.add_argument("--data", default=None, help="held-out images for the parity check (default: the data it was pruned on)")
    e.add_argument("--out", default=None, help="ONNX file (default: <checkpoint>/model.onnx)")
    e.add_argument("--force", action="store_true")
    g = e.add_argument_group("int8")
    _add_int8(g)
    g.add_argument("--per-class", type=int, default=PER_CLASS_DEFAULT,
                   help=f"calibration images per class for static int8 (default: {PER_CLASS_DEFAULT})")
    g.add_argument("--eval-per-class", type=int, default=None, help="evaluation images per class for the int8 gate (default: all)")
    e.set_defaults(func=cmd_export)

    from .analyze import add_analyze_parser

    add_analyze_parser(sub)

    c = sub.add_parser("convert", help="convert path records between vitprune runs and the reference .rlt.jsonl format")
    c.add_argument("src", help="a vitprune run folder (-> reference files) or a folder of *.rlt.jsonl (-> vitprune run)")
    c.add_argument("dst", help="output folder")
    c.add_argument("--prefix", default=None, help="reference file prefix (default: imgnet_all when writing)")
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_convert)
    parser.commands = {"discover": d, "compress": p, "evaluate": v}  # the commands that take --config
    return parser


def _options(args: argparse.Namespace, cls: type, **overrides) -> dict:
    """The API's keyword arguments: the parsed flags that are fields of ``cls`` (model and data apart)."""
    from dataclasses import fields

    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    values["model_args"] = parse_model_args(getattr(args, "model_args", None))
    values.update(overrides)
    values.pop("model"), values.pop("data")
    return values


def _add_prune(parser) -> None:
    parser.add_argument("--prune", default="mlp", type=names,
                        help=f"what is pruned, a comma list of {', '.join(SITE_KINDS.names())} with mlp always in it: mlp (the "
                             "MLP hidden units) or mlp,heads (also whole attention heads; --target-macs then spends one budget "
                             "over both, see --scope) (default: mlp)")


def cmd_discover(args: argparse.Namespace) -> int:
    from ..api import discover

    _check_recipe_input(args, Path(args.out))
    run = discover(args.model, args.data, out=Path(args.out), resume=args.resume, force=args.force, quiet=args.quiet,
                   **_options(args, DiscoverOptions, classes=parse_classes(args.classes)))
    if run is not None:
        print(f"paths: {run.folder / 'paths.jsonl'}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from ..api import compress, default_output

    kwargs = _options(args, CompressOptions, classes=parse_classes(args.classes), export=not args.no_export)
    budgets = [k for k in ("keep_topk", "sparsity", "target_macs") if kwargs.get(k) is not None]
    from_recipe = [k for k in budgets if k in args.recipe_keys]
    if len(budgets) > 1 and from_recipe:
        raise UserError(f"the recipe {args.config} sets {from_recipe[0].replace('_', '-')} and "
                        f"--{next(k for k in budgets if k != from_recipe[0]).replace('_', '-')} is given too: pass exactly one "
                        "budget (drop the flag, or the key from the recipe)")
    out = Path(args.out) if args.out else default_output(CompressOptions(model=args.model, data=args.data, **kwargs).resolve())
    _check_recipe_input(args, out)
    result = compress(args.model, args.data, out=out, force=args.force, quiet=args.quiet, recipe=_recipe(args), **kwargs)
    if result is None:  # not the main process
        return 0
    print(result.report.headline())
    return _int8_verdict(result.report.int8)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..api import evaluate

    kwargs = _options(args, EvaluateOptions, sparsities=floats(args.sparsities, "--sparsities"),
                      target_macs=floats(args.target_macs, "--target-macs"), criteria=names(args.criteria),
                      keep_topk=ints(args.keep_topk, "--keep-topk"), compensate=names(args.compensate),
                      seeds=ints(args.seeds, "--seeds"), token_scopes=names(args.token_scopes), objectives=names(args.objectives),
                      aggregations=names(args.jas_aggregations), classes=parse_classes(args.classes),
                      head_criteria=names(args.head_criteria) if args.head_criteria else None)
    _check_recipe_input(args, Path(args.out))
    result = evaluate(args.model, args.data, out=Path(args.out), force=args.force, quiet=args.quiet, recipe=_recipe(args), **kwargs)
    if result is None:  # not the main process
        return 0
    print(f"{len(result.points)} points -> {args.out}/results.csv, results.json, results.md, accuracy_vs_sparsity.png")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..api import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.out, data=args.data, force=args.force, quantize=args.quantize,
                               int8_mode=args.int8_mode, max_int8_drop=args.max_int8_drop, per_class=args.per_class,
                               eval_per_class=args.eval_per_class)
    print(f"wrote {result['out']} ({result['onnx']['bytes']:,} bytes); onnxruntime parity max |diff| "
          f"{result['onnx']['parity_max_abs']:.2e}")
    int8 = result.get("int8")
    if int8 and int8["written"]:
        print(f"wrote {result['int8_path']} ({int8['bytes']:,} bytes); top-1 on {int8['images']} evaluation images: int8 "
              f"{100 * int8['top1_int8']:.2f}%, fp32 {100 * int8['top1_fp32']:.2f}%")
    return _int8_verdict(int8)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..api import convert_run

    print(convert_run(args.src, args.dst, prefix=args.prefix, force=args.force))
    return 0


def _int8_verdict(int8: dict | None) -> int:
    """Exit code 1, with the reason on one line, when --quantize int8 wrote nothing (everything else stands)."""
    if int8 and not int8["written"]:
        print(f"vitprune: int8 gate: {int8['reason']}", file=sys.stderr)
        return 1
    return 0


def _recipe(args: argparse.Namespace) -> str:
    """The run's every option as a recipe (written beside its outputs as config.yaml: --config config.yaml repeats it)."""
    import yaml

    resolved = {k: v for k, v in args.resolved.items() if k not in ("out", "force", "quiet", "resume")}
    return ("# resolved options of this run: vitprune " + args.command + " --config config.yaml repeats it\n"
            + yaml.safe_dump(resolved, sort_keys=True))


def _check_recipe_input(args: argparse.Namespace, out: Path) -> None:
    """The recipe is an input too: --out must not overlap it."""
    if getattr(args, "config", None):
        from ..outdir import check_inputs

        check_inputs(out, [args.config])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    recipe_keys: set[str] = set()
    try:
        recipe = config_path(argv)
        if recipe is not None:
            command = next((a for a in argv if not a.startswith("-")), None)
            if command not in parser.commands:
                raise UserError(f"--config works with {', '.join(parser.commands)}")
            loaded = load_recipe(recipe)
            apply_recipe(parser.commands[command], loaded, recipe)
            recipe_keys = {str(k).replace("-", "_") for k in loaded}
    except UserError as exc:
        print(f"vitprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error (exit 2)
        return int(exc.code or 0)
    args.recipe_keys = recipe_keys
    if args.command in parser.commands:
        args.resolved = resolved_config(args, parser.commands[args.command])
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"vitprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ExportError as exc:
        print(f"vitprune: export failed: {exc}", file=sys.stderr)
        return 1
    except Terminated:
        return _interrupted(args.command, "terminated (SIGTERM)", 143)
    except KeyboardInterrupt:
        return _interrupted(args.command)
    except OSError as exc:
        print(f"vitprune: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        cause = _interrupt_cause(exc)
        if cause is None:
            raise
        return _interrupted(args.command, *((("terminated (SIGTERM)", 143),) if isinstance(cause, Terminated) else ()))
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops cleanly (outputs stay as they were) with one line."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _os_error(exc: OSError) -> str:
    """An operating-system error as one line naming the path and what to do."""
    import errno

    where = exc.filename or "a file"
    advice = {errno.ENOSPC: "free some space or write elsewhere", errno.EROFS: "the file system is read-only: write elsewhere",
              errno.EACCES: "no permission: write elsewhere or fix the permissions", errno.EPERM: "not permitted: write elsewhere",
              errno.ENOENT: "it does not exist (a dangling link or a removed folder?)", errno.EDQUOT: "over quota: free some space"}
    return f"cannot use {where}: {exc.strerror or exc}; {advice.get(exc.errno, 'check the path and try again')}"


def _interrupt_cause(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C or SIGTERM) behind ``exc``, if any: a library interrupted mid-way may turn it into
    its own error (onnxruntime's import raises ImportError "initialization failed" from it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _interrupted(command: str, what: str = "interrupted", code: int = 130) -> int:
    again = {"discover": "rerun the same command with --resume to continue",
             "compress": "rerun the same command to continue (finished discovery is reused)",
             "evaluate": "rerun the same command to continue (finished points are kept)"}
    print(f"vitprune: {what}; {again.get(command, 'nothing was written; rerun the same command')}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
