"""The zoo evaluation: every compression choice measured on every zoo model, and the defaults it picks.

    .venv/bin/python eval/zoo.py                 # run (resumable) + summarise -> eval/results/zoo/
    .venv/bin/python eval/zoo.py --summary-only  # re-write summary.{json,md} and the plots from the sweeps

Each study is one `vitprune evaluate` sweep per model (resumable, run as a subprocess; --workers run
side by side, one torch thread each):

- ``criteria``: the path criteria in every discovery variant (token scope x objective x
  aggregation) x compensation none / lsq, and every baseline x compensation none / mean / lsq,
  at 50 / 75 / 90% FFN sparsity per block, on the two *screening* models (demo, avgpool-p7). The
  other models run the shortlist the screening picks (best token scope, two best aggregations, every
  objective; by held-out selection images) at 75 / 90%: the full grid costs ~1 h per model here.
- ``lsq``: the least-squares design (target local / output x token weighting uniform / readout)
  on the baselines and the path criterion at 75 / 90%.
- ``calibration``: 16 / 64 / 256 calibration images per class for the leading combinations (path
  criteria at 16 / 64 only: their discovery costs ~1.5-2 s per image on one thread here, 256 per
  class would take over an hour per model).
- ``keep``: the --keep-topk sets (K = 5, 20) of both path criteria x compensation.

Every point is scored on the test split (reported) and on 500 held-out *training* images per
class (never calibration images): defaults are picked on the latter, so nothing is tuned to the
test split. The winners go to summary.json; vitprune/defaults.py must equal them
(tests/test_defaults.py).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "zoo"
MODELS = ("demo", "zoo:avgpool-p7", "zoo:cls-wide", "zoo:gap-deep")
# Bundled after the defaults were fixed: they test the defaults on shapes (and, zoo:eva, a family) the choice never saw.
HELD_OUT = ("zoo:heads8", "zoo:swiglu", "zoo:eva")
# the models the heads study's head-criterion default was chosen on (eval/heads.py): zoo:eva came after it
CHOSE_HEADS = (*MODELS, "zoo:heads8", "zoo:swiglu")
SCREENING = ("demo", "zoo:avgpool-p7")  # run the full discovery-variant grid; the rest run its shortlist
BASELINES = ("activation", "magnitude", "taylor", "variance", "wanda", "random")
SELECTION = 500  # held-out training images per class that pick the defaults
TARGETS = (0.75, 0.9)  # the sparsities the defaults are chosen at
PER_CLASS = 16  # calibration images per class of every study but the calibration one
CALIBRATION = (PER_CLASS, 64, 256)
CALIBRATION_PATH = (16, 64)  # path criteria: discovery at 256 per class costs over an hour per model here
CALIBRATION_TOLERANCE = 0.003  # a larger calibration set must buy more than 0.3 points to become the default
KEEP_K = (5, 20)
STEPS = 20  # integrated-gradient steps of every discovery here (the reference's m)
SCOPES = ("auto", "all")
OBJECTIVES = ("prob", "logprob", "kl")
AGGREGATIONS = ("mean", "abs", "norm", "ig")
STAGES = ("lsq", "criteria", "keep", "calibration")
VARIANT_FLAGS = {"token_scope": "token-scope", "objective": "objective", "aggregation": "jas-aggregation"}


def folder(model: str) -> str:
    return model.replace("zoo:", "")


def studies(models: tuple[str, ...], stage: str, summary: dict, lsq: dict | None = None) -> list[tuple[Path, list[str]]]:
    """(output folder, evaluate arguments) of every sweep of one stage; later stages use earlier winners
    (``lsq`` pins the least-squares setting, for a run over part of the zoo)."""
    # pinned: every study ran at the reference's m = 20 (the cost-quality study, eval/cost_quality.py, moved the default later)
    common = ["--data", "demo", "--selection-per-class", str(SELECTION), "--quiet", "--steps", str(STEPS)]
    base = ["--per-class", str(PER_CLASS)]  # pinned: the calibration study may move the tool's default
    lsq = lsq or summary.get("lsq_default")
    lsq_args = ["--lsq-target", lsq["target"], "--lsq-weighting", lsq["weighting"]] if lsq else []
    jas = summary.get("defaults", {}).get("jas")
    jas_args = ["--token-scopes", jas["token_scope"], "--objectives", jas["objective"],
                "--jas-aggregations", jas["aggregation"]] if jas else []
    jobs = []
    for m in models:
        path = RESULTS / folder(m)
        if stage == "lsq":
            for target, weighting in itertools.product(("local", "output"), ("uniform", "readout")):
                jobs.append((path / f"lsq-{target}-{weighting}", [
                    "--model", m, *common, *base, "--sparsities", "0.75,0.9", "--criteria", ",".join(BASELINES[:-1]),
                    "--compensate", "lsq", "--lsq-target", target, "--lsq-weighting", weighting]))
        elif stage == "criteria":
            if m in SCREENING:
                sparsities, scopes, aggs = "0.5,0.75,0.9", SCOPES, AGGREGATIONS
            else:
                short = summary["shortlist"]
                sparsities, scopes, aggs = ",".join(map(str, TARGETS)), short["token_scopes"], short["aggregations"]
            jobs.append((path / "criteria-paths", ["--model", m, *common, *base, *lsq_args, "--sparsities", sparsities,
                                                   "--criteria", "jas,jas-freq", "--compensate", "none,lsq",
                                                   "--token-scopes", ",".join(scopes), "--objectives", ",".join(OBJECTIVES),
                                                   "--jas-aggregations", ",".join(aggs)]))
            jobs.append((path / "criteria-baselines", ["--model", m, *common, *base, *lsq_args, "--sparsities", sparsities,
                                                       "--criteria", ",".join(BASELINES), "--compensate", "none,mean,lsq"]))
        elif stage == "keep":
            jobs.append((path / "keep-topk", ["--model", m, *common, *base, *lsq_args, *jas_args, "--sparsities", "",
                                              "--criteria", "jas,jas-freq", "--keep-topk", ",".join(map(str, KEEP_K)),
                                              "--compensate", "none,mean,lsq"]))
        elif stage == "calibration":
            for n in CALIBRATION[1:]:  # the first size is PER_CLASS: the criteria sweeps hold those points
                leaders = [c for c in summary["leaders"] if n in CALIBRATION_PATH or c not in ("jas", "jas-freq")]
                jobs.append((path / f"calibration-{n}", [
                    "--model", m, *common, *lsq_args, *jas_args, "--per-class", str(n), "--sparsities", "0.75,0.9",
                    "--criteria", ",".join(leaders), "--compensate", "lsq"]))
    return jobs


def run_job(out: Path, args: list[str], threads: int = 1) -> tuple[Path, float, int]:
    """One `vitprune evaluate` sweep into ``out``; its command and output are appended to ``out``.log."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".log"), "a") as log:
        log.write(f"$ vitprune evaluate {' '.join(args)} --out {out.relative_to(ROOT)}\n")
        log.flush()
        seconds, rc = run_cli(["evaluate", *args, "--out", str(out)], log, threads)
    return out, seconds, rc


def run_cli(args: list[str], log=subprocess.DEVNULL, threads: int = 1) -> tuple[float, int]:
    """(seconds, exit code) of one vitprune command in a subprocess with ``threads`` torch threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    start = time.time()
    rc = subprocess.call([sys.executable, "-c", f"import sys, torch; torch.set_num_threads({threads}); "
                          "from vitprune.app.cli import main; sys.exit(main(sys.argv[1:]))", *args],
                         stdout=log, stderr=log, env=env, cwd=ROOT)
    return time.time() - start, rc


def load_points(path: Path) -> list[dict]:
    return json.loads((path / "results.json").read_text())["points"] if (path / "results.json").is_file() else []


def criteria_points(model: str) -> list[dict]:
    """The points of both criteria sweeps of a model (the path criteria's, and the baselines' with its dense point)."""
    paths, baselines = (load_points(RESULTS / folder(model) / f"criteria-{k}") for k in ("paths", "baselines"))
    return [p for p in paths if p["criterion"] != "dense"] + baselines if paths and baselines else []


# ----------------------------------------------------------------------------------- summary
def method(p: dict) -> str:
    var = [p.get(k) for k in ("token_scope", "objective", "aggregation") if p.get(k) is not None]
    return p["criterion"] + (f"[{','.join(var)}]" if var else "")


def combos(points: list[dict], targets=TARGETS) -> dict[tuple[str, str], dict[float, tuple[float, float]]]:
    """(method, compensation) -> {sparsity: (test top-1, selection top-1)}; random averaged over its seeds."""
    acc: dict[tuple[str, str], dict[float, list[tuple[float, float]]]] = {}
    for p in points:
        if p["criterion"] != "dense" and p["target"] in targets:
            acc.setdefault((method(p), p["compensate"]), {}).setdefault(p["target"], []).append((p["top1"], p["top1_selection"]))
    return {k: {t: (statistics.mean(a for a, _ in v), statistics.mean(b for _, b in v)) for t, v in d.items()}
            for k, d in acc.items() if set(d) == set(targets)}


def zoo_mean(per_model: dict[str, dict], combo, key: int, targets=TARGETS) -> float:
    """Mean over the models and the target sparsities of test (key 0) or selection (key 1) top-1."""
    return statistics.mean(per_model[m][combo][t][key] for m in per_model for t in targets)


def summarise(models: tuple[str, ...]) -> dict:
    """Everything the finished stages show; winners by the held-out selection images, never the test split."""
    out: dict = {"models": list(models), "selection_images_per_class": SELECTION, "targets": list(TARGETS)}
    out.update(_lsq_summary(models))
    out.update(_screening_summary())
    sweeps = {m: criteria_points(m) for m in models}
    if all(sweeps.values()):
        out.update(_criteria_summary(models, sweeps))
    out.update(_keep_summary(models))
    out.update(_calibration_summary(models, out))
    if "calibration" in out and "defaults" in out:
        out["calibration_default"] = _calibration_default(out)
    return out


def _calibration_default(summary: dict) -> dict:
    """The fewest calibration images per class whose zoo mean (selection images, default combination, 75 / 90%)
    is within CALIBRATION_TOLERANCE of the best size: more images cost more discovery and statistics."""
    d = summary["defaults"]["sparsity"]
    name = d["criterion"] + (f"[{','.join(d['variant'].values())}]" if "variant" in d else "")
    per_model = summary["calibration"].get(f"{name} + {d['compensate']}")
    if not per_model:
        return {}
    sizes = [n for n in CALIBRATION if all(str(n) in per_model[m][str(t)] for m in per_model for t in TARGETS)]
    means = {n: statistics.mean(per_model[m][str(t)][str(n)]["selection"] for m in per_model for t in TARGETS)
             for n in sizes}
    chosen = min(n for n in sizes if means[n] >= max(means.values()) - CALIBRATION_TOLERANCE)
    return {"method": name, "compensate": d["compensate"], "zoo_mean_selection": {str(n): v for n, v in means.items()},
            "per_class": chosen, "tolerance": CALIBRATION_TOLERANCE}


def _row(per_model: dict, sel: dict, c: tuple[str, str]) -> dict:
    return {"method": c[0], "compensate": c[1], "zoo_mean_selection": sel[c], "zoo_mean_test": zoo_mean(per_model, c, 0),
            **{f"zoo_mean_test_{t}": zoo_mean(per_model, c, 0, (t,)) for t in TARGETS},
            "per_model": {folder(m): {str(t): per_model[m][c][t][0] for t in TARGETS} for m in per_model}}


def _ranked(sweeps: dict[str, list[dict]]) -> tuple[dict, dict, list[tuple[str, str]]]:
    """(per-model combinations, zoo mean selection top-1, combinations best first) over the models' common set."""
    per_model = {m: combos(pts) for m, pts in sweeps.items()}
    common = set.intersection(*(set(c) for c in per_model.values()))
    sel = {c: zoo_mean(per_model, c, 1) for c in common}
    return per_model, sel, sorted(common, key=lambda c: (-sel[c], c))


def _screening_summary() -> dict:
    """The discovery-variant shortlist the screening models pick for the others: the token scope and the two
    aggregations with the best mean selection top-1 over their lsq combinations (lsq is every default's compensation)."""
    sweeps = {m: criteria_points(m) for m in SCREENING}
    if not all(sweeps.values()):
        return {}
    per_model, sel, ranked = _ranked(sweeps)

    def means(position: int, criteria: tuple[str, ...]) -> dict[str, float]:
        groups: dict[str, list[float]] = {}
        for c in ranked:
            variant = c[0].split("[", 1)[1].rstrip("]").split(",") if "[" in c[0] else []
            if c[1] == "lsq" and c[0].split("[")[0] in criteria and position < len(variant):
                groups.setdefault(variant[position], []).append(sel[c])
        return {k: statistics.mean(v) for k, v in groups.items()}

    scopes, aggregations = means(0, ("jas", "jas-freq")), means(2, ("jas",))
    return {"screening": {"models": list(SCREENING), "ranking": [_row(per_model, sel, c) for c in ranked],
                          "scope_mean_selection": scopes, "aggregation_mean_selection": aggregations},
            "shortlist": {"token_scopes": [max(scopes, key=scopes.get)],
                          "aggregations": sorted(aggregations, key=lambda a: -aggregations[a])[:2]}}


def _criteria_summary(models, sweeps) -> dict:
    per_model, sel, ranked = _ranked(sweeps)
    common = set(ranked)
    best = ranked[0]
    best_path = next(c for c in ranked if c[0].split("[")[0] in ("jas", "jas-freq"))
    # one discovery run serves both path criteria: its token scope and objective are the best path combination's,
    # and jas's aggregation is the best with those
    discovery = _variant(best_path[0])
    best_jas = next(c for c in ranked if c[0].startswith(f"jas[{discovery['token_scope']},{discovery['objective']},"))

    def row(c) -> dict:
        return _row(per_model, sel, c)

    dense = {folder(m): next(p["top1"] for p in pts if p["criterion"] == "dense") for m, pts in sweeps.items()}
    best_per_model = {folder(m): max(v[0.9][0] for v in per_model[m].values()) for m in models}
    return {
        "dense": dense,
        "ranking": [row(c) for c in ranked],
        "defaults": {"sparsity": _split(best), "jas": _variant(best_jas[0])},
        "best_path": row(best_path),
        "best_jas": row(best_jas),
        "best_baselines": {b: row(max((c for c in common if c[0] == b), key=lambda c: sel[c])) for b in BASELINES},
        "default_at_90": {folder(m): {"top1": per_model[m][best][0.9][0], "best": best_per_model[folder(m)],
                                      "gap_to_best": best_per_model[folder(m)] - per_model[m][best][0.9][0],
                                      "loss_from_dense": dense[folder(m)] - per_model[m][best][0.9][0]} for m in models},
        "leaders": _leaders(ranked),
    }


def _split(c: tuple[str, str]) -> dict:
    return {"criterion": c[0].split("[")[0], "compensate": c[1], **({"variant": _variant(c[0])} if "[" in c[0] else {})}


def _variant(name: str) -> dict:
    scope, objective, *agg = name.split("[", 1)[1].rstrip("]").split(",")
    return {"token_scope": scope, "objective": objective, **({"aggregation": agg[0]} if agg else {})}


def _leaders(ranked: list[tuple[str, str]]) -> list[str]:
    """The criteria of the three best lsq combinations, plus jas if it is not among them (calibration study)."""
    names: list[str] = []
    for name, comp in ranked:
        crit = name.split("[")[0]
        if comp == "lsq" and crit not in names and len(names) < 3:
            names.append(crit)
    return names if "jas" in names else [*names, "jas"]


def _keep_summary(models) -> dict:
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for m in models:
        for p in load_points(RESULTS / folder(m) / "keep-topk"):
            if p["keep_topk"]:
                rows.setdefault((p["criterion"], p["compensate"]), {})[f"{folder(m)} K={p['keep_topk']}"] = {
                    "test": p["top1"], "selection": p["top1_selection"], "sparsity": p["sparsity"]}
    if not rows or any(len(v) != len(models) * len(KEEP_K) for v in rows.values()):
        return {}
    ranked = sorted(rows, key=lambda k: (-statistics.mean(x["selection"] for x in rows[k].values()), k))
    return {"keep_topk": {f"{c} + {comp}": v for (c, comp), v in rows.items()},
            "keep_ranking": [f"{c} + {comp}" for c, comp in ranked],
            "keep_default": {"criterion": ranked[0][0], "compensate": ranked[0][1]}}


def _lsq_summary(models) -> dict:
    out = {}
    for target, weighting in itertools.product(("local", "output"), ("uniform", "readout")):
        vals = {}
        for m in models:
            pts = [p for p in load_points(RESULTS / folder(m) / f"lsq-{target}-{weighting}") if p["criterion"] != "dense"]
            if pts:
                vals[folder(m)] = {"test": statistics.mean(p["top1"] for p in pts),
                                   "selection": statistics.mean(p["top1_selection"] for p in pts)}
        if len(vals) == len(models):
            out[f"{target}-{weighting}"] = {"per_model": vals,
                                            "zoo_mean_selection": statistics.mean(v["selection"] for v in vals.values()),
                                            "zoo_mean_test": statistics.mean(v["test"] for v in vals.values())}
    if len(out) < 4:
        return {}
    target, weighting = max(out, key=lambda k: out[k]["zoo_mean_selection"]).split("-")
    return {"lsq": out, "lsq_default": {"target": target, "weighting": weighting}}


def _calibration_summary(models, summary: dict) -> dict:
    """Per leading combination, model and target: top-1 per calibration size (PER_CLASS from the criteria sweeps)."""
    if "leaders" not in summary:
        return {}
    jas = summary["defaults"]["jas"]

    def leading(p: dict) -> bool:
        if p["criterion"] not in summary["leaders"] or p["compensate"] != "lsq" or p["target"] not in TARGETS:
            return False
        return p["criterion"] not in ("jas", "jas-freq") or (
            p["token_scope"] == jas["token_scope"] and p["objective"] == jas["objective"]
            and p["aggregation"] == (jas.get("aggregation") if p["criterion"] == "jas" else None))

    out: dict = {}
    for n in CALIBRATION:
        for m in models:
            points = criteria_points(m) if n == PER_CLASS else load_points(RESULTS / folder(m) / f"calibration-{n}")
            for p in filter(leading, points):
                out.setdefault(f"{method(p)} + {p['compensate']}", {}).setdefault(folder(m), {}).setdefault(
                    str(p["target"]), {})[str(n)] = {"test": p["top1"], "selection": p["top1_selection"]}
    if not out:
        return {}
    cost = {}
    for m in models:
        for n in CALIBRATION:
            path = RESULTS / folder(m) / f"cost-{n}.json"
            if path.is_file():
                cost.setdefault(folder(m), {})[str(n)] = json.loads(path.read_text())
    return {"calibration": out, "calibration_cost": cost}


# ----------------------------------------------------------------------------------- rendering
def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def render(summary: dict) -> str:
    names = [folder(m) for m in summary["models"]]
    lines = ["# Zoo evaluation (`eval/zoo.py`)", "",
             f"Models: {', '.join(summary['models'])}. One-shot top-1 (%) on the 10k Fashion-MNIST test images; defaults are "
             f"chosen on {summary['selection_images_per_class']} held-out *training* images per class (never calibration "
             "images, never the test split) as the best mean over the models at "
             f"{' and '.join(f'{int(100 * t)}%' for t in summary['targets'])} FFN sparsity per block. Calibration: 16 training "
             "images per class unless a table says otherwise.", ""]
    if "lsq" in summary:
        lines += ["## Least-squares design (mean over activation, magnitude, taylor, variance, wanda at 75 / 90%)", "",
                  f"| target-weighting | {' | '.join(names)} | zoo mean (test) | zoo mean (selection) |",
                  "|---|" + "---|" * (len(names) + 2)]
        for k, v in sorted(summary["lsq"].items(), key=lambda kv: -kv[1]["zoo_mean_selection"]):
            lines.append(f"| {k} | {' | '.join(pct(v['per_model'][n]['test']) for n in names)} | {pct(v['zoo_mean_test'])} | "
                         f"{pct(v['zoo_mean_selection'])} |")
        lines += ["", f"Chosen: `--lsq-target {summary['lsq_default']['target']} --lsq-weighting "
                      f"{summary['lsq_default']['weighting']}`.", ""]
    if "ranking" in summary:
        d = summary["defaults"]["sparsity"]
        if "shortlist" in summary:
            sl, sc = summary["shortlist"], summary["screening"]
            lines += ["## Screening of the discovery variants", "",
                      f"{' and '.join(sc['models'])} ran every token scope x objective x aggregation "
                      f"({len(sc['ranking'])} combinations, `criteria.md`). By mean selection top-1 of their lsq combinations "
                      f"the other models run token scope **{', '.join(sl['token_scopes'])}** and aggregations "
                      f"**{', '.join(sl['aggregations'])}** with every objective.", ""]
        lines += ["## Criterion x compensation at 75 / 90% FFN sparsity", "",
                  "Dense: " + ", ".join(f"{n} {pct(summary['dense'][n])}" for n in names) + ".", "",
                  f"| # | method | compensation | {' | '.join(f'{n} 75 / 90' for n in names)} | zoo mean test | zoo mean selection |",
                  "|---|---|---|" + "---|" * (len(names) + 2)]
        shown = [r for i, r in enumerate(summary["ranking"]) if i < 12 or r["method"] in BASELINES
                 or r is summary["ranking"][0]]
        shown_ids = {(r["method"], r["compensate"]) for r in shown}
        for extra in (summary["best_path"], summary["best_jas"], *summary["best_baselines"].values()):
            if (extra["method"], extra["compensate"]) not in shown_ids:
                shown.append(extra)
                shown_ids.add((extra["method"], extra["compensate"]))
        rank = {(r["method"], r["compensate"]): i + 1 for i, r in enumerate(summary["ranking"])}
        for r in sorted(shown, key=lambda r: rank[(r["method"], r["compensate"])]):
            cells = " | ".join(f"{pct(r['per_model'][n]['0.75'])} / {pct(r['per_model'][n]['0.9'])}" for n in names)
            lines.append(f"| {rank[(r['method'], r['compensate'])]} | {r['method']} | {r['compensate']} | {cells} | "
                         f"{pct(r['zoo_mean_test'])} | {pct(r['zoo_mean_selection'])} |")
        lines += ["", f"All {len(summary['ranking'])} combinations: `criteria.md`. Default for `compress --sparsity`: "
                      f"**{d['criterion']}** with **{d['compensate']}**"
                      + (" (discovery: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d["variant"].items()) + ")"
                         if "variant" in d else "") + ".", "",
                  "| model | default at 90% | best at 90% | gap to best | loss from dense |", "|---|---|---|---|---|"]
        for n, v in summary["default_at_90"].items():
            lines.append(f"| {n} | {pct(v['top1'])} | {pct(v['best'])} | {pct(v['gap_to_best'])} | {pct(v['loss_from_dense'])} |")
        bp = summary["best_path"]
        lines += ["", "Best path criterion against every non-path baseline, each with its best compensation (zoo mean test top-1):", "",
                  "| method | compensation | 75% | 90% |", "|---|---|---|---|",
                  f"| **{bp['method']}** | {bp['compensate']} | {pct(bp['zoo_mean_test_0.75'])} | {pct(bp['zoo_mean_test_0.9'])} |"]
        for b, r in summary["best_baselines"].items():
            lines.append(f"| {r['method']} | {r['compensate']} | {pct(r['zoo_mean_test_0.75'])} | {pct(r['zoo_mean_test_0.9'])} |")
        lines.append("")
    if "keep_topk" in summary:
        cols = [f"{n} K={k}" for n in names for k in KEEP_K]
        lines += ["## --keep-topk sets (one-shot top-1 % / FFN sparsity)", "",
                  "| keep by + compensation | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for key in summary["keep_ranking"]:
            v = summary["keep_topk"][key]
            lines.append(f"| {key} | " + " | ".join(f"{pct(v[c]['test'])} / {pct(v[c]['sparsity'])}" for c in cols) + " |")
        kd = summary["keep_default"]
        lines += ["", f"Default for `compress --keep-topk`: **{kd['criterion']}** with **{kd['compensate']}**.", ""]
    if "calibration" in summary:
        lines += ["## Calibration images per class (lsq; test top-1 % at 75 / 90%)", "",
                  "| method | model | " + " | ".join(f"{n}/class" for n in CALIBRATION) + " |", "|---|---|" + "---|" * len(CALIBRATION)]
        for key, per_model in sorted(summary["calibration"].items()):
            for n, by_target in per_model.items():
                cells = []
                for c in CALIBRATION:
                    got = [by_target.get(str(t), {}).get(str(c)) for t in TARGETS]
                    cells.append(" / ".join(pct(g["test"]) if g else "-" for g in got))
                lines.append(f"| {key} | {n} | " + " | ".join(cells) + " |")
        cd = summary.get("calibration_default")
        if cd:
            lines += ["", f"Default `--per-class`: **{cd['per_class']}**, the fewest images per class within "
                          f"{100 * cd['tolerance']:.1f} points of the best zoo mean selection top-1 of {cd['method']} + "
                          f"{cd['compensate']} (" + ", ".join(f"{n}/class {pct(v)}" for n, v in cd["zoo_mean_selection"].items())
                      + ")."]
        if summary.get("calibration_cost"):
            lines += ["", "Cost of `vitprune compress` with the --sparsity default at 90% (seconds on this machine, 1 thread, "
                          "while the other studies ran beside it):", "",
                      "| model | " + " | ".join(f"{n}/class" for n in CALIBRATION) + " |", "|---|" + "---|" * len(CALIBRATION)]
            for n, by_n in summary["calibration_cost"].items():
                lines.append(f"| {n} | " + " | ".join(f"{by_n[str(c)]['total_s']:.0f}" if str(c) in by_n else "-" for c in CALIBRATION) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def render_all(summary: dict) -> str:
    lines = ["# Every criterion x compensation of the zoo (`eval/zoo.py`)", "",
             "Top-1 (%) at 75 / 90% FFN sparsity per block, test split; ranked by the mean over the models of top-1 on "
             "held-out training images (selection).", "", "## The whole zoo (shortlisted discovery variants)", ""]
    lines += _ranking_table(summary["ranking"], [folder(m) for m in summary["models"]])
    if "screening" in summary:
        sc = summary["screening"]
        lines += ["", f"## Screening: every discovery variant on {', '.join(sc['models'])}", "",
                  "Mean selection top-1 of the lsq path combinations by token scope: "
                  + ", ".join(f"{k} {pct(v)}" for k, v in sorted(sc["scope_mean_selection"].items(), key=lambda kv: -kv[1]))
                  + "; by aggregation (jas): "
                  + ", ".join(f"{k} {pct(v)}" for k, v in sorted(sc["aggregation_mean_selection"].items(), key=lambda kv: -kv[1]))
                  + f". Shortlist for the other models: scope {', '.join(summary['shortlist']['token_scopes'])}, aggregations "
                  f"{', '.join(summary['shortlist']['aggregations'])}, every objective.", ""]
        lines += _ranking_table(sc["ranking"], [folder(m) for m in sc["models"]])
    return "\n".join(lines) + "\n"


def _ranking_table(ranking: list[dict], names: list[str]) -> list[str]:
    lines = [f"| # | method | compensation | {' | '.join(f'{n} 75 / 90' for n in names)} | zoo mean test | zoo mean selection |",
             "|---|---|---|" + "---|" * (len(names) + 2)]
    for i, r in enumerate(ranking, 1):
        cells = " | ".join(f"{pct(r['per_model'][n]['0.75'])} / {pct(r['per_model'][n]['0.9'])}" for n in names)
        lines.append(f"| {i} | {r['method']} | {r['compensate']} | {cells} | {pct(r['zoo_mean_test'])} | {pct(r['zoo_mean_selection'])} |")
    return lines


def plot(summary: dict, models: tuple[str, ...], path: Path) -> None:
    """Per model: one-shot top-1 vs FFN sparsity of every criterion's best combination (zoo ranking), dense dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[str, tuple[str, str]] = {}
    for r in summary["ranking"]:
        crit = r["method"].split("[")[0]
        best.setdefault(crit, (r["method"], r["compensate"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.4), squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("tab10")
    for ax, m in zip(axes, models):
        pts = criteria_points(m)
        allc = combos(pts, targets=tuple(sorted({p["target"] for p in pts if p["target"]})))  # 50% on the screening models only
        for i, (crit, combo) in enumerate(sorted(best.items())):
            if combo in allc:
                xs = sorted(allc[combo])
                ax.plot(xs, [100 * allc[combo][x][0] for x in xs], "-o", ms=3, color=cmap(i % 10),
                        lw=2.5 if crit in ("jas", "jas-freq") else 1.2, label=f"{combo[0]} + {combo[1]}")
        ax.axhline(100 * summary["dense"][folder(m)], color="black", ls=":", lw=1, label="dense")
        ax.set_title(m)
        ax.set_xlim(0.47, 0.93)
        ax.set_xlabel("FFN sparsity per block")
    axes[0].set_ylabel("one-shot top-1 (%), test split")
    axes[-1].legend(fontsize=6.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list from {', '.join(STAGES)}, run in that order")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--lsq", default=None, metavar="TARGET-WEIGHTING",
                        help="pin the lsq setting of the later stages (e.g. output-readout) when running part of the zoo; "
                             "the summary over the whole zoo says whether it is the winner")
    args = parser.parse_args()
    pinned = dict(zip(("target", "weighting"), args.lsq.split("-"))) if args.lsq else None
    models = tuple(args.models.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for stage in (s for s in STAGES if s in args.stages.split(",")):
            jobs = studies(models, stage, summarise(models), pinned)
            with ThreadPoolExecutor(args.workers) as pool:
                for out, seconds, rc in pool.map(lambda j: run_job(*j), jobs):
                    print(f"{out.relative_to(ROOT)}: {'ok' if rc == 0 else f'exit {rc}, see evaluate.log'} in {seconds:.0f}s", flush=True)
            if stage == "calibration":
                calibration_cost(models, summarise(models))
    summary = summarise(models)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (RESULTS / "summary.md").write_text(render(summary))
    if "ranking" in summary:
        (RESULTS / "criteria.md").write_text(render_all(summary))
        plot(summary, models, RESULTS / "zoo_criteria.png")
    print((RESULTS / "summary.md").read_text())


def calibration_cost(models: tuple[str, ...], summary: dict) -> None:
    """Wall time of `vitprune compress` with the --sparsity default at 90% per calibration size on the demo
    (1 thread, no export; path criteria at CALIBRATION_PATH sizes only)."""
    d = summary["defaults"]["sparsity"]
    for m in models[:1]:
        for n in CALIBRATION_PATH if d["criterion"] in ("jas", "jas-freq") else CALIBRATION:
            target = RESULTS / folder(m) / f"cost-{n}.json"
            if target.is_file():
                continue
            with tempfile.TemporaryDirectory() as tmp:
                args = ["compress", "--model", m, "--data", "demo", "--sparsity", "0.9", "--per-class", str(n), "--steps", str(STEPS),
                        "--criterion", d["criterion"], "--compensate", d["compensate"], "--no-export", "--quiet",
                        *(a for k, v in d.get("variant", {}).items() for a in (f"--{VARIANT_FLAGS[k]}", v)),
                        "--lsq-target", summary["lsq_default"]["target"], "--lsq-weighting", summary["lsq_default"]["weighting"],
                        "--eval-per-class", "100", "--out", str(Path(tmp) / "c")]
                _, rc = run_cli(args)
                report = json.loads((Path(tmp) / "c" / "report.json").read_text()) if rc == 0 else None
            if report:
                t = report["timings"]
                target.write_text(json.dumps({**{k: round(v, 2) for k, v in t.items()}, "per_class": n}, indent=2) + "\n")


if __name__ == "__main__":
    main()
