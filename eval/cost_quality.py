"""Cost against quality of the compression's path discovery on the zoo, and the discovery default it picks.

    .venv/bin/python eval/cost_quality.py                 # run the grid (resumable) + summarise -> eval/results/cost_quality/
    .venv/bin/python eval/cost_quality.py --summary-only  # re-write summary.{json,md} and the plot from the sweeps

For the compression defaults (criterion jas-freq + lsq, discovery token scope all, objective prob, top-5 paths) at
75 / 90% FFN sparsity and with --keep-topk 5 / 20, on every model that chose the defaults (eval/zoo.py MODELS),
one `vitprune evaluate` sweep per setting and model (resumable, a subprocess): one-shot top-1 on the test split
(reported) and on the 500 held-out training images per class that picked every default (selection, never the
test split) against the discovery FLOP count per image (``PassStats.flops``: counted block-rows of the passes,
measured on one calibration image of each model at each setting) and per class (times the calibration images).

The grid is one factor at a time around the default (m = 20 integrated-gradient steps, 16 calibration images per
class, fp32): m = 2, 4, 8 at 16 images per class, then 4 and 8 images per class at m = 4 (the candidate knee:
the cheapest m that holds quality; see the summary), then m = 4 with the whole compression under bf16 autocast
(``--precision bf16``: discovery, least squares and scoring; the FLOP count is fp32's, so it wins only on quality,
ties going to fp32). The default's own points are the zoo's committed sweeps
(eval/results/zoo/*/criteria-paths for 75 / 90%, keep-topk for K = 5 / 20), made by the same `evaluate` with the
same arguments but --steps 20 (`eval/zoo.py`); `make demo` reproduces their demo K = 5 point (84.94% test).

The winner: the cheapest setting (discovery FLOPs per class) whose zoo mean selection top-1 over 75 / 90% and over
K = 5 / 20 are each within TOLERANCE of the default's, ties to the cheaper; ``vitprune/defaults.py``
DISCOVERY_DEFAULT must equal it (tests/test_defaults.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from zoo import MODELS, RESULTS as ZOO, SELECTION, folder, load_points, pct, run_job  # noqa: E402

RESULTS = HERE / "results" / "cost_quality"
TARGETS = (0.75, 0.9)
KEEP_K = (5, 20)
TOLERANCE = 0.001  # zoo mean selection top-1 may lose at most 0.1 points against the default's
REFERENCE = {"steps": 20, "per_class": 16, "precision": "fp32"}  # today's (the reference's m) default
# one factor at a time around the default, then the calibration size at the candidate knee
GRID = [  # in the order they run
    {"steps": 4, "per_class": 16, "precision": "fp32"},
    {"steps": 2, "per_class": 16, "precision": "fp32"},
    {"steps": 8, "per_class": 16, "precision": "fp32"},
    {"steps": 4, "per_class": 8, "precision": "fp32"},
    {"steps": 4, "per_class": 4, "precision": "fp32"},
    {"steps": 4, "per_class": 16, "precision": "bf16"},  # the whole compression (discovery, lsq, scoring) under bf16 autocast
]
TOPK = 5  # discovery K of the sparsity points (evaluate --topk); the keep-topk points discover with K = their K


def name(s: dict) -> str:
    return f"m{s['steps']}-pc{s['per_class']}-{s['precision']}"


def sweep_args(model: str, s: dict) -> list[str]:
    """The `vitprune evaluate` arguments of one setting: the zoo's keep-topk / criteria sweeps' own, restricted to the
    compression default and with this setting's steps, calibration size and precision."""
    return ["--model", model, "--data", "demo", "--selection-per-class", str(SELECTION), "--quiet",
            "--per-class", str(s["per_class"]), "--steps", str(s["steps"]), "--precision", s["precision"],
            "--lsq-target", "output", "--lsq-weighting", "readout", "--token-scopes", "all", "--objectives", "prob",
            "--jas-aggregations", "ig", "--topk", str(TOPK), "--sparsities", ",".join(map(str, TARGETS)),
            "--criteria", "jas-freq", "--keep-topk", ",".join(map(str, KEEP_K)), "--compensate", "lsq"]


def run_sweep(model: str, s: dict, threads: int) -> tuple[float, int]:
    out = RESULTS / folder(model) / name(s)
    if (out / "results.json").is_file():
        return 0.0, 0
    _, seconds, rc = run_job(out, sweep_args(model, s), threads)
    return seconds, rc


# ----------------------------------------------------------------------------------- FLOP count
def discovery_flops(model_spec: str, s: dict, topk: int) -> dict:
    """Counted discovery work per image of one setting on one model (one calibration image; the count does not
    depend on the image): block-rows forward / backward / tangent and their FLOP count."""
    from vitprune.data import load_data, model_transform, select_per_class
    from vitprune.discovery.finder import PathFinder
    from vitprune.discovery.settings import DiscoverySettings
    from vitprune.model.load import load_model
    from vitprune.prune.macs import count_macs_params

    model = load_model(model_spec)
    pools = load_data("demo")
    ds = select_per_class(pools.calibration, 1, None, num_classes=10).select(range(1))
    (_, x, y), = list(ds.batches(model_transform(model), 1))
    finder = PathFinder(model, DiscoverySettings(topk=topk, steps=s["steps"], token_scope="all", objective="prob",
                                                 precision=s["precision"]))
    finder.find(x, y)
    st = finder.stats
    macs, _ = count_macs_params(model)
    depth = finder.adapter.depth
    return {"block_rows": st.block_rows, "backward_block_rows": st.backward_block_rows,
            "tangent_block_rows": st.tangent_block_rows, "macs_per_forward": macs, "depth": depth,
            "schedule": finder.engine.resolved_schedule(), "flop_per_image": st.flops(macs, depth)}


def flop_table(models: tuple[str, ...], settings: list[dict]) -> dict:
    """{model: {setting name: {topk: count}}}, cached in flops.json (the count is deterministic)."""
    path = RESULTS / "flops.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    for m in models:
        for s in settings:
            for k in sorted({TOPK, *KEEP_K}):
                key = f"{s['steps']}-{s['precision']}"  # the calibration size does not change the count per image
                if str(k) not in table.get(folder(m), {}).get(key, {}):
                    table.setdefault(folder(m), {}).setdefault(key, {})[str(k)] = discovery_flops(m, s, k)
                    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    return table


def flop_per_image(table: dict, m: str, s: dict) -> float:
    """Discovery FLOPs per calibration image of a compression at this setting (the K = 5 run: compress's default)."""
    return table[folder(m)][f"{s['steps']}-{s['precision']}"][str(TOPK)]["flop_per_image"]


# ----------------------------------------------------------------------------------- summary
def points_of(model: str, s: dict) -> dict[str, dict] | None:
    """{'0.75', '0.9', 'K5', 'K20': {'test', 'selection'}} of jas-freq[all,prob] + lsq at one setting, or None."""
    if s == REFERENCE:
        pts = [p for p in load_points(ZOO / folder(model) / "criteria-paths")
               if p["criterion"] == "jas-freq" and p["compensate"] == "lsq" and p["token_scope"] == "all"
               and p["objective"] == "prob" and p["target"] in TARGETS]
        pts += [p for p in load_points(ZOO / folder(model) / "keep-topk")
                if p["criterion"] == "jas-freq" and p["compensate"] == "lsq" and p["keep_topk"] in KEEP_K]
    else:
        pts = [p for p in load_points(RESULTS / folder(model) / name(s)) if p["criterion"] != "dense"]
    out = {}
    for p in pts:
        key = f"K{p['keep_topk']}" if p["keep_topk"] else str(p["target"])
        out[key] = {"test": p["top1"], "selection": p["top1_selection"], "sparsity": p["sparsity"]}
    want = {*(str(t) for t in TARGETS), *(f"K{k}" for k in KEEP_K)}
    return out if set(out) == want else None


def summarise(models: tuple[str, ...], table: dict) -> dict:
    rows, partial = [], []
    for s in [REFERENCE, *GRID]:
        per_model = {folder(m): points_of(m, s) for m in models}
        if not all(per_model.values()) or not all(f"{s['steps']}-{s['precision']}" in table.get(folder(m), {}) for m in models):
            done = {n: v for n, v in per_model.items() if v}
            if done:  # finished on some models only: shown, never a candidate
                partial.append({**s, "name": name(s), "per_model": done})
            continue
        flop = {folder(m): flop_per_image(table, m, s) for m in models}

        def mean(keys, split):
            return statistics.mean(per_model[n][k][split] for n in per_model for k in keys)

        sparsity_keys, keep_keys = [str(t) for t in TARGETS], [f"K{k}" for k in KEEP_K]
        rows.append({**s, "name": name(s), "per_model": per_model,
                     "flop_per_image": flop, "flop_per_class": {n: f * s["per_class"] for n, f in flop.items()},
                     "zoo_mean_flop_per_class": statistics.mean(f * s["per_class"] for f in flop.values()),
                     "zoo_mean_flop_per_image": statistics.mean(flop.values()),
                     "selection_sparsity": mean(sparsity_keys, "selection"), "selection_keep": mean(keep_keys, "selection"),
                     "test_sparsity": mean(sparsity_keys, "test"), "test_keep": mean(keep_keys, "test"),
                     **{f"test_{k}": mean([k], "test") for k in (*sparsity_keys, *keep_keys)},
                     **{f"selection_{k}": mean([k], "selection") for k in (*sparsity_keys, *keep_keys)}})
    out = {"models": list(models), "targets": list(TARGETS), "keep_topk": list(KEEP_K), "tolerance": TOLERANCE,
           "reference": REFERENCE, "selection_images_per_class": SELECTION, "rows": rows, "partial": partial}
    out["missing"] = [name(s) for s in GRID if name(s) not in {r["name"] for r in rows + partial}]
    ref = next((r for r in rows if r["name"] == name(REFERENCE)), None)
    if ref is not None and len(rows) > 1:  # the winner among the finished settings (``missing`` lists the others)
        ok = [r for r in rows if r["selection_sparsity"] >= ref["selection_sparsity"] - TOLERANCE - 1e-12
              and r["selection_keep"] >= ref["selection_keep"] - TOLERANCE - 1e-12]
        win = min(ok, key=lambda r: (r["zoo_mean_flop_per_class"], r["precision"] != "fp32"))
        out["winner"] = {"steps": win["steps"], "per_class": win["per_class"], "precision": win["precision"],
                         "cost_ratio_per_class": ref["zoo_mean_flop_per_class"] / win["zoo_mean_flop_per_class"],
                         "cost_ratio_per_image": ref["zoo_mean_flop_per_image"] / win["zoo_mean_flop_per_image"]}
    return out


def render(summary: dict) -> str:
    names = [folder(m) for m in summary["models"]]
    lines = ["# Discovery cost against compression quality (`eval/cost_quality.py`)", "",
             f"Models: {', '.join(summary['models'])}. Compression defaults: jas-freq + lsq (discovery: top-5 paths, token "
             "scope all, objective prob) at 75 / 90% FFN sparsity per block and with --keep-topk 5 / 20. One-shot top-1 (%) "
             f"on the 10k test images and on {summary['selection_images_per_class']} held-out training images per class "
             "(selection: what picks the default, never the test split). Discovery cost: the FLOP count of the passes "
             "per calibration image (K = 5; 2·MACs/L per counted block-row forward or backward, twice that per tangent "
             "block-row), zoo mean; per class = per image × calibration images per class. The first row is today's "
             "default (the zoo's committed sweeps); the others vary one factor at a time (m = integrated-gradient steps, "
             "calibration images per class), then the calibration size at m = 4, then m = 4 with the whole compression "
             "under bf16 autocast (discovery, least squares and scoring; same FLOP count).", "",
             "| setting | GFLOP/image | GFLOP/class | cost ÷ | selection 75 / 90 | selection K5 / K20 | zoo mean selection 75+90 | "
             "zoo mean selection keep | zoo mean test 75+90 | zoo mean test keep |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = summary["rows"]
    ref = rows[0] if rows and rows[0]["name"] == name(summary["reference"]) else None
    for r in rows:
        ratio = f"{ref['zoo_mean_flop_per_class'] / r['zoo_mean_flop_per_class']:.1f}×" if ref else "-"
        lines.append(f"| {r['name']} | {r['zoo_mean_flop_per_image'] / 1e9:.2f} | {r['zoo_mean_flop_per_class'] / 1e9:.1f} | {ratio} | "
                     f"{pct(r['selection_0.75'])} / {pct(r['selection_0.9'])} | {pct(r['selection_K5'])} / {pct(r['selection_K20'])} | "
                     f"{pct(r['selection_sparsity'])} | {pct(r['selection_keep'])} | {pct(r['test_sparsity'])} | {pct(r['test_keep'])} |")
    lines += ["", "Per model, test top-1 (%) at 75 / 90% and K = 5 / 20, and discovery GFLOP per image:", "",
              "| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        cells = []
        for n in names:
            v = r["per_model"][n]
            cells.append(f"{pct(v['0.75']['test'])} / {pct(v['0.9']['test'])}, K {pct(v['K5']['test'])} / {pct(v['K20']['test'])} "
                         f"({r['flop_per_image'][n] / 1e9:.2f})")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    w = summary.get("winner")
    if w:
        lines += ["", f"Default for compress / evaluate: **m = {w['steps']}, {w['per_class']} calibration images per class, "
                      f"{w['precision']}**: the cheapest setting whose zoo mean selection top-1 over 75 / 90% and over K = 5 / 20 "
                      f"are each within {100 * summary['tolerance']:.1f} points of today's default (ties to the cheaper); "
                      f"{w['cost_ratio_per_class']:.1f}× fewer discovery FLOPs per class ({w['cost_ratio_per_image']:.1f}× per "
                      "image). `vitprune discover` keeps m = 20; `compress --faithful-discovery` restores today's setting."]
    else:
        lines += ["", "No setting of the grid is finished: no winner yet."]
    for p in summary.get("partial", []):
        lines += ["", f"Unfinished: {p['name']} ran on {', '.join(p['per_model'])} only (not a candidate): "
                  + "; ".join(f"{n} test {pct(v['0.75']['test'])} / {pct(v['0.9']['test'])}, K {pct(v['K5']['test'])} / "
                              f"{pct(v['K20']['test'])}, selection {pct(v['0.75']['selection'])} / {pct(v['0.9']['selection'])}, "
                              f"K {pct(v['K5']['selection'])} / {pct(v['K20']['selection'])}" for n, v in p["per_model"].items())
                  + "."]
    if summary.get("missing"):
        lines += ["", "Not run (the grid was cut to fit the time this study had): " + ", ".join(summary["missing"])
                  + ". The winner is the cheapest among the settings above."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("selection_sparsity", "zoo mean selection top-1, 75 / 90%"), ("selection_keep", "zoo mean selection top-1, K = 5 / 20"),
              ("test_sparsity", "zoo mean test top-1, 75 / 90%"), ("test_keep", "zoo mean test top-1, K = 5 / 20")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.0))
    for ax, (key, title) in zip(axes, panels):
        for r in summary["rows"]:
            x = r["zoo_mean_flop_per_image"] / 1e9
            marker = "s" if r["name"] == name(summary["reference"]) else ("*" if summary.get("winner", {}).get("steps") == r["steps"]
                                                                          and summary["winner"]["per_class"] == r["per_class"] else "o")
            ax.scatter(x, 100 * r[key], marker=marker, s=60 if marker != "o" else 30, color=f"C{[4, 8, 16].index(r['per_class'])}")
            ax.annotate(f"m={r['steps']}, {r['per_class']}/cls", (x, 100 * r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ref = summary["rows"][0]
        if key.startswith("selection") and ref["name"] == name(summary["reference"]):
            ax.axhline(100 * (ref[key] - summary["tolerance"]), color="grey", ls=":", lw=1, label="default − 0.1")
            ax.legend(fontsize=7, loc="lower right")
        ys = [100 * r[key] for r in summary["rows"]]
        ax.set_ylim(min(ys) - 0.4, max(ys) + 0.4)
        ax.set_xscale("log")
        ax.set_xlabel("discovery GFLOP per calibration image (zoo mean)")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("top-1 (%)")
    fig.suptitle("square: m = 20 (today's default), star: the chosen default; colour: calibration images per class "
                 "(blue 4, orange 8, green 16)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each sweep (they run one after another)")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    models = tuple(args.models.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for s in GRID:  # setting by setting: each finished setting is a whole row of the table
            for m in models:
                seconds, rc = run_sweep(m, s, args.threads)
                print(f"{folder(m)}/{name(s)}: {'ok' if rc == 0 else f'exit {rc}, see its .log'} in {seconds:.0f}s", flush=True)
    table = flop_table(models, [REFERENCE, *GRID])
    summary = summarise(models, table)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (RESULTS / "summary.md").write_text(render(summary))
    if summary["rows"]:
        plot(summary, RESULTS / "cost_quality.png")
    print((RESULTS / "summary.md").read_text())


if __name__ == "__main__":
    main()
