"""`make demo` before and after the cheaper discovery default: discovery time, FLOPs per image and top-1.

    .venv/bin/python eval/demo_cost.py             # -> eval/results/demo_cost.{json,md}
    .venv/bin/python eval/demo_cost.py --rounds 2  # alternate the two settings twice (medians)

Runs `vitprune compress --model demo --data demo --keep-topk 5` (make demo's command) into fresh temporary
folders, alternating `--faithful-discovery` (the reference's m = 20: compress's default before
eval/cost_quality.py) and the default, in the same conditions (each a fresh process with the torch threads the
machine gives it), and reads each report.json: timings.discovery_s, the discovery's FLOPs per image and
images/s, and the pruned model's top-1 on the 10k test images.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results"
COMMAND = ["compress", "--model", "demo", "--data", "demo", "--keep-topk", "5"]
SETTINGS = {"faithful": ["--faithful-discovery"], "default": []}


def run(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="vitprune-demo-cost-") as tmp:
        out = Path(tmp) / "demo"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "vitprune", *COMMAND, *extra, "--quiet", "--out", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"vitprune {' '.join(COMMAND + extra)} failed:\n{proc.stderr[-2000:]}")
        r = json.loads((out / "report.json").read_text())
    cost = r["discovery"]["cost"]
    return {"discovery_s": r["timings"]["discovery_s"], "total_s": r["timings"]["total_s"], "steps": r["discovery"]["steps"],
            "per_class": r["options"]["per_class"], "images": cost["images"], "flop_per_image": cost["flop_per_image"],
            "images_per_s": cost["images_per_s"], "top1_pruned": r["accuracy"]["pruned"]["top1"],
            "top1_dense": r["accuracy"]["dense"]["top1"], "sparsity": r["mask"]["sparsity"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from machine import describe

    runs: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    for _ in range(args.rounds):
        for key, extra in SETTINGS.items():
            runs[key].append(run(extra))
            print(key, runs[key][-1], flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("discovery_s", "total_s", "images_per_s")} for k, v in runs.items()}
    f, d = runs["faithful"][0], runs["default"][0]
    result = {"machine": describe(), "command": "vitprune " + " ".join(COMMAND), "rounds": args.rounds, "runs": runs,
              "median": med, "discovery_time_ratio": med["faithful"]["discovery_s"] / med["default"]["discovery_s"],
              "flop_ratio": f["flop_per_image"] / d["flop_per_image"] * f["images"] / d["images"],
              "top1_change_points": 100 * (d["top1_pruned"] - f["top1_pruned"])}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "demo_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# `make demo`: discovery cost before and after (`eval/demo_cost.py`)", "",
             f"`{result['command']}` with `--faithful-discovery` (the reference's m = 20, compress's default before "
             f"`eval/cost_quality.py`) and with the default, alternating, {args.rounds} round(s), medians; "
             f"torch threads {result['machine'].get('torch_threads')}, on {result['machine'].get('cpu', 'this machine')}. "
             "Wall-clock seconds depend on what else the machine runs; the ratio is measured in the same conditions.", "",
             "| discovery | m | images | GFLOP/image | images/s | discovery_s | total_s | pruned top-1 | FFN sparsity |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, rs in runs.items():
        r = rs[0]
        lines.append(f"| {key} | {r['steps']} | {r['images']} | {r['flop_per_image'] / 1e9:.3g} | {med[key]['images_per_s']:.3g} | "
                     f"{med[key]['discovery_s']:.1f} | {med[key]['total_s']:.1f} | {100 * r['top1_pruned']:.2f}% | {100 * r['sparsity']:.2f}% |")
    lines += ["", f"Discovery time: **{result['discovery_time_ratio']:.2f}× lower**; discovery FLOPs: {result['flop_ratio']:.2f}× "
                  f"fewer; top-1 {result['top1_change_points']:+.2f} points."]
    (OUT / "demo_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
