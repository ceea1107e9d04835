"""Recovery study (issue 29): what a short distillation from the dense model buys after one-shot compression, the
recovery defaults it chooses, and two baselines at the same budget.

    .venv/bin/python eval/recovery.py                 # run every stage (resumable) + summarise -> eval/results/recovery/
    .venv/bin/python eval/recovery.py --summary-only  # re-write summary.{json,md} and recovery.png from what has run
    .venv/bin/python eval/recovery.py --stage tune --models demo   # one stage, some models

On the four zoo models that chose the one-shot defaults (eval/zoo.py MODELS), at compress's one-shot defaults with
heads (``--prune mlp,heads``: criterion jas-freq + lsq, head criterion ig, global allocation, 16 calibration images
per class, discovery m = 4), every point scored on the 10k Fashion-MNIST test images (reported) and on 500 held-out
*training* images per class (``--selection-per-class 500``: never calibration or recovery images; the choices are
made there). A recovery trains on the training split less those 500 and less its own 50 per class that pick its best
check (``--finetune-selection-per-class``), i.e. on 54,500 images; an epoch is one pass over them.

Stages (each a set of `vitprune evaluate` sweeps, or, for the baselines, one process per model, all resumable):

- ``tune``: at 0.15x MACs and 0.5 epoch, learning rate 1e-4 / 3e-4 / 1e-3 / 3e-3 x block-output distillation weight 0 / 1
  on the screening models (eval/zoo.py SCREENING, as the zoo's discovery screening), then the SHORTLIST best of those
  (mean selection top-1 on them) on the other models. The setting with the best mean selection top-1 over every model
  becomes the default (vitprune/defaults.py RECOVERY_DEFAULT must equal it: tests/test_defaults.py).
- ``main``: the chosen setting at 0.25 and 0.15x MACs, 0.5 and 1 epoch (the 0.5-epoch point at 0.15x is the chosen tune
  run).
- ``baselines`` (0.15x MACs, 1 epoch, the chosen setting): ``scratch`` — vitprune's pruned architecture at that
  budget, re-initialised (timm's init) and trained by the same recovery (distillation from the dense model; the
  learning rate chosen on the selection images among the tuned one and 1e-3, which training from scratch usually
  wants); ``tp`` — Torch-Pruning's pruning at the same budget (the best of Taylor / magnitude x local / global on the
  selection images, one-shot; eval/tp_heads.py), then the same recovery. Where Torch-Pruning's head and MLP pruning
  cannot reach the budget (it keeps a head per block and some width), its smallest model, at more MACs, stands in.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from zoo import MODELS, SCREENING, folder, load_points, run_job  # noqa: E402

RESULTS = HERE / "results" / "recovery"
BUDGETS = (0.25, 0.15)
EPOCHS = (0.5, 1.0)
SHORTLIST = 3
TUNE_BUDGET, TUNE_EPOCHS = 0.15, 0.5
LRS = (1e-4, 3e-4, 1e-3, 3e-3)
FEATURES = (0.0, 1.0)
SCRATCH_LR = 1e-3
SELECTION = 500
RECOVERY_SELECTION = 50
STAGES = ("tune", "main", "baselines")
TARGETS = {0.25: 0.5, 0.15: 2.0}  # points below dense after at most 1 epoch (the targets)


def common(model: str) -> list[str]:
    from vitprune.defaults import SPARSITY_DEFAULT

    return ["--model", model, "--data", "demo", "--selection-per-class", str(SELECTION), "--quiet", "--seed", "0",
            "--criterion", SPARSITY_DEFAULT["criterion"], "--compensate", "lsq", "--prune", "mlp,heads", "--sparsity", "",
            "--finetune-selection-per-class", str(RECOVERY_SELECTION)]


def tune_name(lr: float, features: float) -> str:
    return f"tune-lr{lr:g}-f{features:g}"


def shortlist() -> list[tuple[float, float]]:
    """The SHORTLIST best (lr, features) by mean selection top-1 on the screening models (which must have run all)."""
    grid = summarise(SCREENING)["tune"]
    complete = [v for v in grid.values() if len(v["per_model"]) == len(SCREENING)]
    if len(complete) < len(LRS) * len(FEATURES):
        sys.exit(f"the tune stage's shortlist needs the full grid on {', '.join(SCREENING)}: run --stage tune --models "
                 f"{','.join(SCREENING)} first")
    ranked = sorted(complete, key=lambda v: -statistics.mean(r["selection"] for r in v["per_model"].values()))
    return [(v["lr"], v["features"]) for v in ranked[:SHORTLIST]]


def jobs(stage: str, models: tuple[str, ...], chosen: dict | None) -> list[tuple[Path, list[str]]]:
    out = []
    for m in models:
        if stage == "tune":
            settings = [(lr, f) for lr in LRS for f in FEATURES] if m in SCREENING else shortlist()
            out += [(RESULTS / folder(m) / tune_name(lr, f), [*common(m), "--target-macs", str(TUNE_BUDGET), "--finetune-epochs",
                                                              str(TUNE_EPOCHS), "--finetune-lr", str(lr), "--finetune-features", str(f)])
                    for lr, f in settings]
        elif stage == "main":  # the tune budget's 0.5-epoch point is the chosen tune run
            out += [(RESULTS / folder(m) / f"main-ep{e:g}", [*common(m), "--target-macs", ",".join(map(str, budgets)),
                                                             "--finetune-epochs", str(e), "--finetune-lr", str(chosen["lr"]),
                                                             "--finetune-features", str(chosen["features"])])
                    for e in EPOCHS if (budgets := [b for b in BUDGETS if (b, e) != (TUNE_BUDGET, TUNE_EPOCHS)])]
    return out


# ----------------------------------------------------------------------------------- baselines
def run_baselines(model: str, chosen: dict) -> None:
    """``scratch`` and ``tp`` of one model (see the module docstring), each written to baselines/<name>.json once done;
    a recovery killed midway resumes from its state folder."""
    import torch
    import torch.nn.functional as F

    import vitprune
    from vitprune.data import materialize, model_transform, select_holdout_per_class, select_per_class, split_holdout
    from vitprune.pipeline import resolve_data
    from vitprune.files import atomic_write_json
    from vitprune.prune.macs import count_macs_params
    from vitprune.recovery import RecoverySettings, recover

    base = RESULTS / folder(model) / "baselines"
    base.mkdir(parents=True, exist_ok=True)
    todo = [name for name in ("scratch", "tp") if not (base / f"{name}.json").is_file()]
    if not todo:
        return
    dense = vitprune.load_model(model).eval()
    pools = resolve_data("demo", 10)
    transform = model_transform(dense)
    nc = pools.num_classes
    test = materialize(pools.evaluation, transform)
    selection = materialize(select_holdout_per_class(pools.calibration, SELECTION, num_classes=nc, skip=16), transform)
    train, held = split_holdout(pools.calibration, RECOVERY_SELECTION, num_classes=nc, reserve=SELECTION)
    held_images = materialize(held, transform)
    dense_macs = count_macs_params(dense)[0]

    def top1(m) -> dict:
        m.eval()
        with torch.no_grad():
            return {k: float(sum(int((m(x[s:s + 500]).argmax(-1) == y[s:s + 500]).sum()) for s in range(0, len(x), 500)) / len(x))
                    for k, (x, y) in (("test", test), ("selection", selection))}

    def recovered(name: str, student, lr: float) -> dict:
        settings = RecoverySettings(epochs=1.0, lr=lr, features=chosen["features"], seed=0)
        before = top1(student)
        result = recover(student, dense, train, transform, settings, selection=held_images, state=base / f".{name}-lr{lr:g}")
        return {"lr": lr, "before": before, "after": top1(student), "seconds": round(result.seconds, 1),
                "best": result.best, "history": result.history}

    if "scratch" in todo:
        t0 = time.time()
        pruned = vitprune.compress(dense, "demo", target_macs=TUNE_BUDGET, prune="mlp,heads", eval_per_class=1, quiet=True).model
        runs = []
        for lr in sorted({chosen["lr"], SCRATCH_LR}):
            student = copy.deepcopy(pruned)
            torch.manual_seed(0)
            student.init_weights() if hasattr(student, "init_weights") else None
            runs.append(recovered("scratch", student, lr))
        best = max(runs, key=lambda r: r["after"]["selection"])
        atomic_write_json(base / "scratch.json", {"model": model, "macs_ratio": count_macs_params(pruned)[0] / dense_macs,
                                                  "chosen_lr": best["lr"], "runs": runs, "seconds": round(time.time() - t0, 1)})
    if "tp" in todo:
        from tp_heads import IMPORTANCES, R_MAX, fit_budget, pruned_at, shape

        t0 = time.time()
        cal_x, cal_y = materialize(select_per_class(pools.calibration, 16, num_classes=nc), transform)
        dense.zero_grad(set_to_none=True)
        F.cross_entropy(dense(cal_x), cal_y).backward()
        grads = {n: p.grad.detach().clone() for n, p in dense.named_parameters() if p.grad is not None}
        dense.zero_grad(set_to_none=True)
        candidates = []
        for name in IMPORTANCES:
            for scope in ("local", "global"):
                at = pruned_at(dense, name, scope, cal_x[:1], grads, dense_macs)
                try:
                    r, m, ratio = fit_budget(at, TUNE_BUDGET)
                except RuntimeError:  # its floor is above the budget: its smallest model (more MACs than ours)
                    r, (m, ratio) = R_MAX, at(R_MAX)
                candidates.append({"importance": name, "scope": scope, "r": r, "macs_ratio": ratio, "oneshot": top1(m),
                                   **shape(m), "model": m})
                at.cache.clear()
        reach = [c for c in candidates if c["macs_ratio"] <= TUNE_BUDGET + 1e-9] or candidates
        pick = max(reach, key=lambda c: c["oneshot"]["selection"])
        run = recovered("tp", pick.pop("model"), chosen["lr"])
        atomic_write_json(base / "tp.json", {"model": model, "picked": pick, "run": run, "seconds": round(time.time() - t0, 1),
                                             "candidates": [{k: v for k, v in c.items() if k != "model"} for c in candidates]})


# ----------------------------------------------------------------------------------- summary
def _point(points: list[dict], macs: float) -> dict | None:
    return next((p for p in points if p.get("target_macs") is not None and abs(p["target_macs"] - macs) < 1e-9), None)


def summarise(models: tuple[str, ...]) -> dict:
    tune: dict = {}
    for m in models:
        for lr in LRS:
            for f in FEATURES:
                p = _point(load_points(RESULTS / folder(m) / tune_name(lr, f)), TUNE_BUDGET)
                if p is not None:
                    tune.setdefault(tune_name(lr, f), {"lr": lr, "features": f, "per_model": {}})["per_model"][m] = {
                        "selection": p["top1_selection"], "test": p["top1"], "oneshot_selection": p.get("top1_selection_oneshot")}
    complete = {k: v for k, v in tune.items() if len(v["per_model"]) == len(models)}
    for v in complete.values():
        v["mean_selection"] = statistics.mean(r["selection"] for r in v["per_model"].values())
    chosen = max(complete.values(), key=lambda v: (v["mean_selection"], -v["lr"], -v["features"])) if complete else None
    out: dict = {"models": list(models), "tune": tune, "chosen": {"lr": chosen["lr"], "features": chosen["features"]} if chosen else None,
                 "per_model": {}, "machine": f"{platform.machine()} CPU, 1 torch thread (2 shared cores)"}
    for m in models:
        row: dict = {}
        sources = [(e, f"main-ep{e:g}") for e in EPOCHS]
        if chosen:  # the chosen tune run is the 0.5-epoch point at the tune budget
            sources.append((TUNE_EPOCHS, tune_name(chosen["lr"], chosen["features"])))
        for e, name in sources:
            points = load_points(RESULTS / folder(m) / name)
            dense = next((p for p in points if p["criterion"] == "dense"), None)
            if dense is not None:
                row["dense"] = {"test": dense["top1"], "selection": dense["top1_selection"]}
            for b in BUDGETS:
                p = _point(points, b)
                if p is not None and f"ep{e:g}" not in row.get(f"{b:g}", {}):
                    row.setdefault(f"{b:g}", {})["oneshot"] = p["top1_oneshot"]
                    row[f"{b:g}"][f"ep{e:g}"] = {"test": p["top1"], "selection": p["top1_selection"], "ci95": p.get("top1_diff_ci95"),
                                                "worst_class_drop": p.get("worst_class_drop"), "macs_ratio": p["macs_ratio"],
                                                "seconds": p.get("recovery_s"), "best_epoch": p.get("recovery_best_epoch"),
                                                "s_per_epoch": round(p["recovery_s"] / e, 1) if p.get("recovery_s") else None}
        for name in ("scratch", "tp"):
            path = RESULTS / folder(m) / "baselines" / f"{name}.json"
            if path.is_file():
                b = json.loads(path.read_text())
                run = b["run"] if name == "tp" else next(r for r in b["runs"] if r["lr"] == b["chosen_lr"])
                row[name] = {"test": run["after"]["test"], "selection": run["after"]["selection"], "oneshot": run["before"]["test"],
                             "lr": run["lr"], "macs_ratio": b.get("macs_ratio", (b.get("picked") or {}).get("macs_ratio")),
                             **({"picked": {k: b["picked"][k] for k in ("importance", "scope")}} if name == "tp" else {})}
        out["per_model"][m] = row
    return out


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def render(s: dict) -> str:
    lines = ["# Recovery after one-shot compression (`eval/recovery.py`)", "",
             "Made by `.venv/bin/python eval/recovery.py` on " + s["machine"] + ". One-shot at compress's defaults with heads "
             "(`--prune mlp,heads --target-macs R`), then distillation from the dense model (vitprune.recovery) on the "
             "training split less 550 images per class; top-1 (%) on the 10k test images, [in brackets] on 500 held-out "
             "training images per class (the choices are made there).", ""]
    if s["tune"]:
        lines += [f"## Tuning ({TUNE_BUDGET}x MACs, {TUNE_EPOCHS} epoch): selection top-1 after recovery", "",
                  "| lr | feature weight | " + " | ".join(s["models"]) + " | mean |", "|---|---|" + "---|" * (len(s["models"]) + 1)]
        for v in s["tune"].values():
            cells = [pct(v["per_model"].get(m, {}).get("selection")) for m in s["models"]]
            lines.append(f"| {v['lr']:g} | {v['features']:g} | " + " | ".join(cells) + f" | {pct(v.get('mean_selection'))} |")
        if s["chosen"]:
            lines += ["", f"Chosen (best mean selection top-1): lr {s['chosen']['lr']:g}, block-output distillation weight "
                      f"{s['chosen']['features']:g}.", ""]
    lines += ["## Test top-1 per model", "",
              "| model | dense | MACs | one-shot | 0.5 epoch | 1 epoch | 1 epoch vs dense (95% CI) | worst class | target | s / epoch |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m, row in s["per_model"].items():
        dense = row.get("dense", {}).get("test")
        for b in BUDGETS:
            r = row.get(f"{b:g}")
            if not r or dense is None:
                continue
            one = r.get("ep1")
            half = r.get("ep0.5")
            diff = f"{100 * (one['test'] - dense):+.2f}" if one else ""
            ci = f" ({100 * one['ci95'][0]:+.2f} .. {100 * one['ci95'][1]:+.2f})" if one and one.get("ci95") else ""
            met = ("met" if 100 * (dense - one["test"]) <= TARGETS[b] else "missed") + f" (<= {TARGETS[b]:g})" if one else ""
            worst = f"{100 * one['worst_class_drop']:+.2f}" if one and one.get("worst_class_drop") is not None else ""
            per_epoch = (one or half or {}).get("s_per_epoch")
            lines.append(f"| {m} | {pct(dense)} | {b:g}x | {pct(r.get('oneshot'))} | {pct((half or {}).get('test'))} "
                         f"[{pct((half or {}).get('selection'))}] | {pct((one or {}).get('test'))} [{pct((one or {}).get('selection'))}] | "
                         f"{diff}{ci} | {worst} | {met} | {per_epoch or ''} |")
    lines += ["", f"## Baselines at {TUNE_BUDGET}x MACs, 1 epoch of the same recovery", "",
              "| model | vitprune one-shot + recovery | scratch (same architecture, random init) | Torch-Pruning + recovery |",
              "|---|---|---|---|"]
    for m, row in s["per_model"].items():
        ours = (row.get(f"{TUNE_BUDGET:g}") or {}).get("ep1")
        sc, tp = row.get("scratch"), row.get("tp")
        lines.append(f"| {m} | {pct((ours or {}).get('test'))} | "
                     + (f"{pct(sc['test'])} (lr {sc['lr']:g})" if sc else "") + " | "
                     + (f"{pct(tp['test'])} at {tp['macs_ratio']:.3f}x (one-shot {pct(tp['oneshot'])}; {tp['picked']['importance']}, "
                        f"{tp['picked']['scope']})"
                        if tp else "") + " |")
    return "\n".join(lines) + "\n"


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in s["models"] if s["per_model"].get(m, {}).get("dense")]
    if not models:
        return
    fig, axes = plt.subplots(1, len(BUDGETS), figsize=(6 * len(BUDGETS), 4.5), squeeze=False)
    for ax, b in zip(axes[0], BUDGETS):
        for i, m in enumerate(models):
            row = s["per_model"][m]
            r = row.get(f"{b:g}") or {}
            dense = row["dense"]["test"]
            xs, ys = [0.0], [r.get("oneshot")]
            for e in EPOCHS:
                xs.append(e)
                ys.append((r.get(f"ep{e:g}") or {}).get("test"))
            pts = [(x, 100 * (y - dense)) for x, y in zip(xs, ys) if y is not None]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=m, color=f"C{i}")
        ax.axhline(0, color="black", lw=1, ls=":")
        ax.axhline(-TARGETS[b], color="red", lw=1, ls="--", label=f"target (-{TARGETS[b]:g})")
        ax.set_xlabel("recovery epochs (0 = one-shot)")
        ax.set_ylabel("test top-1 vs dense (points)")
        ax.set_title(f"{b:g}x MACs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(models: tuple[str, ...]) -> dict:
    from vitprune.files import atomic_write_json, atomic_write_text

    s = summarise(models)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "summary.json", s)
    atomic_write_text(RESULTS / "summary.md", render(s))
    plot(s, RESULTS / "recovery.png")
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--stage", default=",".join(STAGES))
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    models = tuple(args.models.split(","))
    if not args.summary_only:
        for stage in args.stage.split(","):
            chosen = write_summary(MODELS)["chosen"] if stage != "tune" else None
            if stage != "tune" and chosen is None:
                sys.exit(f"stage {stage} needs the tune stage's choice on every model of {MODELS}: run --stage tune first")
            if stage == "baselines":
                for m in models:
                    t0 = time.time()
                    run_baselines(m, chosen)
                    print(f"{m} baselines: {time.time() - t0:.0f} s", flush=True)
                continue
            for out, args_ in jobs(stage, models, chosen):
                out_, seconds, rc = run_job(out, args_)
                print(f"{out_.relative_to(ROOT)}: exit {rc} after {seconds:.0f} s", flush=True)
    write_summary(MODELS)
    print(f"wrote {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
