"""Command line: the parser (generated from ``vitprune.options``), recipes and the error policy over ``vitprune.api``.
User errors print one line and exit 2.

No pipeline logic lives here: each command turns its flags into the API's keyword arguments, calls it, and prints
what came back (``--json``: one JSON object on stdout; stage lines, progress and warnings go to stderr).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ExportError, UserError
from ..options import ConvertOptions, CompressOptions, DiscoverOptions, EvaluateOptions, ExportOptions
from ..outdir import output_path
from ..progress import LOG, configure_logging
from .parser import Parser, add_options, add_run_controls, emit, log_level, option_values
from .recipes import apply_recipe, config_path, load_recipe, resolved_config

EXAMPLES = {
    "discover": [
        "vitprune discover --model demo --data demo --per-class 2 --topk 5 --out runs/demo-paths",
        "vitprune discover --model zoo:cls-wide --data demo --classes 0-2 --token-scope all --out runs/wide-paths",
        "vitprune discover --model demo --data demo --out runs/demo-paths --resume",
    ],
    "compress": [
        "vitprune compress --model demo --data demo --keep-topk 5",
        "vitprune compress --model zoo:heads8 --data demo --target-macs 0.35 --prune mlp,heads --eval-per-class 100",
        "vitprune compress --model demo --data demo --sparsity 0.75 --criterion wanda --out exported/demo-wanda --dry-run",
    ],
    "evaluate": [
        "vitprune evaluate --model demo --data demo --criterion jas-freq,wanda --compensate none,lsq --sparsity 0.5,0.75 "
        "--per-class 4 --eval-per-class 50 --out runs/demo-sweep",
        "vitprune evaluate --model zoo:heads8 --data demo --prune mlp,heads --target-macs 0.5,0.35 --sparsity '' "
        "--criterion wanda --compensate lsq --out runs/heads8-sweep --dry-run",
    ],
    "export": [
        "vitprune export --model exported/demo-keep-top5",
        "vitprune export --model exported/demo-keep-top5 --quantize int8 --out exported/demo-keep-top5/model.onnx --force",
    ],
    "convert": [
        "vitprune convert runs/demo-paths runs/demo-reference --prefix demo",
        "vitprune convert runs/demo-reference runs/demo-paths-again",
    ],
}


def epilog(command: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vitprune", description="Neuron-path discovery and structured pruning for timm ViTs.")
    parser.add_argument("--version", action="version", version=f"vitprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=epilog(name))

    d = command("discover", "find per-image neuron paths (JAS) and write them as JSONL records")
    add_options(d, DiscoverOptions)
    add_run_controls(d, out_help="run folder", out_required=True, force_help="replace a different run in --out", recipe=True,
                     dry_run=True, resume=True)
    d.set_defaults(func=cmd_discover, options=DiscoverOptions)

    c = command("compress", "keep the critical units, slice the MLPs (and heads), evaluate, export ONNX")
    add_options(c, CompressOptions)
    add_run_controls(c, out_help="output folder (default: exported/<name derived from the settings>)",
                     force_help="replace a different result in the output folder", recipe=True, dry_run=True)
    c.set_defaults(func=cmd_compress, options=CompressOptions)

    v = command("evaluate", "accuracy vs budget for several criteria and compensations (CSV, JSON, Markdown, PNG)")
    add_options(v, EvaluateOptions)
    add_run_controls(v, out_help="sweep folder (resumable)", out_required=True, force_help="replace a different sweep in --out",
                     recipe=True, dry_run=True)
    v.set_defaults(func=cmd_evaluate, options=EvaluateOptions)

    e = command("export", "export a pruned (or any vitprune) checkpoint folder to ONNX (parity-checked)")
    e.add_argument("checkpoint", nargs="?", default=None, help=argparse.SUPPRESS)  # vitprune 0.1's positional form
    add_options(e, ExportOptions, required=False)
    add_run_controls(e, out_help="ONNX file (default: CHECKPOINT/model.onnx)", force_help="replace an ONNX file vitprune wrote")
    e.set_defaults(func=cmd_export, options=ExportOptions)

    from .analyze import add_analyze_parser

    add_analyze_parser(sub)

    k = command("convert", "convert path records between vitprune runs and the reference .rlt.jsonl format")
    add_options(k, ConvertOptions)
    add_run_controls(k, out_help=None, force_help="replace an earlier conversion in DST")
    k.set_defaults(func=cmd_convert, options=ConvertOptions)
    parser.commands = {"discover": d, "compress": c, "evaluate": v}  # the commands that take --config
    return parser


def _api_options(args: argparse.Namespace, cls: type, **overrides: Any) -> dict[str, Any]:
    """The API's keyword arguments: the parsed flags that are fields of ``cls`` (model and data apart)."""
    values = {**option_values(args, cls), **overrides}
    values.pop("model", None), values.pop("data", None)
    return values


def _controls(args: argparse.Namespace) -> dict[str, Any]:
    return {"force": getattr(args, "force", False), "quiet": getattr(args, "quiet", False) or log_level(args) in ("warning", "error")}


def cmd_discover(args: argparse.Namespace) -> int:
    from ..api import discover

    kwargs = _api_options(args, DiscoverOptions)
    _check_recipe_input(args, output_path(args.out))
    if args.dry_run:
        return emit(args, discover(args.model, args.data, out=args.out, resume=args.resume, dry_run=True, **_controls(args),
                                    **kwargs))
    run = discover(args.model, args.data, out=args.out, resume=args.resume, **_controls(args), **kwargs)
    if run is None:  # not the main process
        return 0
    summary = {"command": "discover", "out": str(run.folder), "paths": str(run.folder / "paths.jsonl"), "images": len(run.records),
               "settings": run.header.discovery.to_json() if run.header else None, "cost": run.cost}
    return emit(args, summary, f"paths: {run.folder / 'paths.jsonl'} ({len(run.records)} images)")


def cmd_compress(args: argparse.Namespace) -> int:
    from ..api import compress, default_output

    kwargs = _api_options(args, CompressOptions)
    budgets = [k for k in ("keep_topk", "sparsity", "target_macs") if kwargs.get(k) is not None]
    from_recipe = [k for k in budgets if k in args.recipe_keys]
    if len(budgets) > 1 and from_recipe:
        raise UserError(f"the recipe {args.config} sets {from_recipe[0].replace('_', '-')} and "
                        f"--{next(k for k in budgets if k != from_recipe[0]).replace('_', '-')} is given too: pass exactly one "
                        "budget (drop the flag, or the key from the recipe)")
    out = output_path(args.out) if args.out is not None else default_output(CompressOptions(model=args.model, data=args.data,
                                                                                               **kwargs).resolve())
    _check_recipe_input(args, out)
    if args.dry_run:
        return emit(args, compress(args.model, args.data, out=out, dry_run=True, **_controls(args), **kwargs))
    result = compress(args.model, args.data, out=out, recipe=_recipe(args), **_controls(args), **kwargs)
    if result is None:  # not the main process
        return 0
    code = emit(args, result.report.summary(), result.report.headline())
    return code or _int8_verdict(result.report.int8)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..api import evaluate

    kwargs = _api_options(args, EvaluateOptions)
    _check_recipe_input(args, output_path(args.out))
    if args.dry_run:
        return emit(args, evaluate(args.model, args.data, out=args.out, dry_run=True, **_controls(args), **kwargs))
    result = evaluate(args.model, args.data, out=args.out, recipe=_recipe(args), **_controls(args), **kwargs)
    if result is None:  # not the main process
        return 0
    summary = {"command": "evaluate", "out": args.out, "points": len(result.points), "results": result.summary()}
    return emit(args, summary, f"{len(result.points)} points -> {args.out}/results.csv, results.json, results.md, "
                                "accuracy_vs_sparsity.png")


def cmd_export(args: argparse.Namespace) -> int:
    from ..api import export_checkpoint

    kwargs = _api_options(args, ExportOptions)
    model = args.model or args.checkpoint
    if args.model and args.checkpoint and Path(args.model) != Path(args.checkpoint):
        raise UserError(f"two checkpoints given ({args.checkpoint} and --model {args.model}); pass one, with --model")
    if not model:
        raise UserError("pass the checkpoint folder to export: vitprune export --model DIR")
    result = export_checkpoint(model, args.out, data=args.data, **_controls(args), **kwargs)
    if result.get("up_to_date"):
        return emit(args, {"command": "export", **result}, f"{result['out']} is up to date (exported from these weights; "
                                                              "--force exports it again)")
    lines = [f"wrote {result['out']} ({result['onnx']['bytes']:,} bytes); onnxruntime parity max |diff| "
             f"{result['onnx']['parity_max_abs']:.2e}"]
    int8 = result.get("int8")
    if int8 and int8["written"]:
        lines.append(f"wrote {result['int8_path']} ({int8['bytes']:,} bytes); top-1 on {int8['images']} evaluation images: int8 "
                     f"{100 * int8['top1_int8']:.2f}%, fp32 {100 * int8['top1_fp32']:.2f}%")
    code = emit(args, {"command": "export", **result}, "\n".join(lines))
    return code or _int8_verdict(int8)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..api import convert_run

    message = convert_run(args.src, args.dst, prefix=args.prefix, force=args.force)
    return emit(args, {"command": "convert", "src": args.src, "dst": args.dst, "message": message}, message)


def _int8_verdict(int8: dict | None) -> int:
    """Exit code 1, with the reason on one line, when --quantize int8 wrote nothing (everything else stands)."""
    if int8 and not int8["written"]:
        LOG.error(f"int8 gate: {int8['reason']}")
        return 1
    return 0


def _recipe(args: argparse.Namespace) -> str:
    """The run's every option as a recipe (written beside its outputs as config.yaml: --config config.yaml repeats it)."""
    import yaml

    resolved = {k: v for k, v in args.resolved.items() if k in {f.replace("_", "-") for f in option_values(args, args.options)}}
    return ("# resolved options of this run: vitprune " + args.command + " --config config.yaml repeats it\n"
            + yaml.safe_dump(resolved, sort_keys=True))


def _check_recipe_input(args: argparse.Namespace, out: Path) -> None:
    """The recipe is an input too: --out must not overlap it (a run's own config.yaml, which repeats it, may be read)."""
    if getattr(args, "config", None):
        from ..outdir import check_inputs

        config = Path(args.config)
        if config.name == "config.yaml" and config.resolve().parent == out.resolve():
            return
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
            recipe_keys = apply_recipe(parser.commands[command], loaded, recipe)
    except UserError as exc:
        print(f"vitprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error (exit 2)
        return int(exc.code or 0)
    configure_logging(log_level(args))
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
