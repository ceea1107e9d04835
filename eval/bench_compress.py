"""`make demo` end to end, against an earlier commit, with its stage breakdown and each stage's arithmetic floor.

    .venv/bin/python eval/bench_compress.py                      # -> eval/results/bench_compress.{json,md}
    .venv/bin/python eval/bench_compress.py --baseline a7efa93 --rounds 2

Runs make demo's command (`vitprune compress --model demo --data demo --keep-topk 5`) of this checkout and of
``--baseline`` (a git worktree of that commit, same Python environment), alternating, each round in fresh output
folders and a fresh cache (the first run of a fresh clone), then the same command again on the finished folder (a
rerun), and reads every report.json: the stage timings, the mask and the top-1 (which must be identical). Then, in this
process:

- this machine's GEMM throughput (torch matmul at the demo's shapes and at a large square size, the run's threads);
- each stage's floor: its multiply-accumulates ÷ that throughput (discovery: the FLOPs the report counts; evaluation:
  the dense and pruned forwards of the 10k images; least squares: the calibration forwards), and the ratio of the
  measured stage to it;
- the evaluation throughput against the model's bare batched forward on preprocessed tensors (inference mode, the
  fastest batch size of 64..1024), from the idx files' pixels and from the same images as PNG files (decoded in the
  main process, and in DataLoader workers).

Nothing else should run on the machine (the results file says what the load average was).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results"
COMMAND = ["compress", "--model", "demo", "--data", "demo", "--keep-topk", "5"]
STAGES = ("load_s", "discovery_s", "statistics_s", "compensation_s", "evaluation_s", "save_s", "export_s", "total_s")


def worktree(commit: str) -> Path:
    """A git worktree of ``commit`` (made once, under the system's temporary folder)."""
    path = Path(tempfile.gettempdir()) / f"vitprune-bench-{commit}"
    if not (path / "vitprune").is_dir():
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(path), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return path


def run(code: Path, out: Path, cache: Path) -> dict:
    """One `vitprune compress` of the checkout at ``code`` into ``out``: wall time and its report."""
    env = {**os.environ, "PYTHONPATH": str(code), "VITPRUNE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vitprune", *COMMAND, "--quiet", "--out", str(out)], cwd=out.parent, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{code}: vitprune {' '.join(COMMAND)} failed:\n{proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": round(wall, 2), "timings": report.get("timings", {}), "top1_dense": report["accuracy"]["dense"]["top1"],
            "top1_pruned": report["accuracy"]["pruned"]["top1"], "mask": json.loads((out / "mask.json").read_text()),
            "discovery": report.get("discovery"), "macs": report["macs"], "evaluation_images": report["data"]["evaluation_images"]}


def gemm_rate(threads: int) -> dict:
    """Multiply-accumulates per second of torch matmul: at the demo's MLP shape and at 2048² (the CPU's best)."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, (m, k, n) in {"demo_mlp": (256 * 50, 96, 384), "square": (2048, 2048, 2048)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            a @ b
            reps += 1
        out[name] = m * k * n * reps / (time.perf_counter() - start)
    return out


def bare_forward(threads: int) -> dict:
    """The demo model's bare batched forward on the 10k preprocessed test images: images/s at the fastest batch size,
    and vitprune's evaluation of the same model and images (decoding included), from an empty cache."""
    import torch

    import vitprune
    from vitprune.data import materialize, model_transform
    from vitprune.distributed import get_dist
    from vitprune.options import CompressOptions
    from vitprune.pipeline import Pipeline

    torch.set_num_threads(threads)
    model = vitprune.load_model("demo").eval()
    pools = vitprune.load_data("demo")
    images, _ = materialize(pools.evaluation, model_transform(model))
    rates = {}
    with torch.inference_mode():
        for batch in (64, 128, 256, 512, 1024):
            model(images[:batch])
            start = time.perf_counter()
            for s in range(0, len(images), batch):
                model(images[s:s + batch])
            rates[batch] = len(images) / (time.perf_counter() - start)
    best = max(rates, key=rates.get)
    def evaluation(data: str) -> float:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["VITPRUNE_CACHE"] = cache
            pipeline = Pipeline("demo", data, CompressOptions(), dist=get_dist("cpu"), quiet=True)
            start = time.perf_counter()
            pipeline.evaluate_pool({"dense": pipeline.dense}, pipeline.pools.evaluation)
            return len(pipeline.pools.evaluation) / (time.perf_counter() - start)

    out = {"bare_images_per_s": rates, "best_batch": best, "best_images_per_s": rates[best],
           "vitprune_evaluation_images_per_s": evaluation("demo")}
    out["ratio"] = out["vitprune_evaluation_images_per_s"] / rates[best]
    with tempfile.TemporaryDirectory() as folder:  # the same 10k test images as PNG files: decoding in workers or not
        from PIL import Image

        from vitprune.data import fashion_mnist_arrays

        x, y = fashion_mnist_arrays(split="test")
        for split, (xs, ys) in (("train", (x[:10], y[:10])), ("val", (x, y))):
            for i, (image, label) in enumerate(zip(xs, ys)):
                path = Path(folder) / split / f"{label:02d}" / f"{i:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
        from vitprune.data.pools import DECODE_WORKERS_ENV, decode_workers

        files = {}
        for workers in ("0", str(max(1, decode_workers()))):
            os.environ[DECODE_WORKERS_ENV] = workers
            files[workers] = evaluation(f"imagefolder:{folder}")
        os.environ.pop(DECODE_WORKERS_ENV)
    out["png_files_images_per_s"] = files
    return out


def floors(run: dict, gemm: dict) -> dict:
    """Each stage's arithmetic floor (seconds) at the demo-shape GEMM rate: its MACs ÷ the rate."""
    rate = gemm["demo_mlp"]
    cost = (run.get("discovery") or {}).get("cost") or {}
    n = run["evaluation_images"]
    out = {}
    if cost.get("flop_per_image"):
        out["discovery_s"] = cost["flop_per_image"] / 2 * cost["images"] / rate
    out["evaluation_s"] = (run["macs"]["dense"] + run["macs"]["pruned"]) * n / rate
    calibration = (cost.get("images") or 160)
    out["compensation_s"] = (run["macs"]["dense"] + run["macs"]["pruned"]) * calibration / rate
    return out


def summarise(runs: dict[str, dict[str, list[dict]]], gemm: dict, bare: dict, baseline: str, load: list[float]) -> dict:
    med = {code: {kind: {"wall_s": statistics.median(r["wall_s"] for r in rs),
                         **{s: statistics.median(r["timings"].get(s, 0.0) for r in rs) for s in STAGES}}
                  for kind, rs in kinds.items()} for code, kinds in runs.items()}
    first = {code: runs[code]["first"][0] for code in runs}
    same_mask = first["head"]["mask"] == first[baseline]["mask"]
    same_top1 = (first["head"]["top1_pruned"], first["head"]["top1_dense"]) == (first[baseline]["top1_pruned"],
                                                                                 first[baseline]["top1_dense"])
    floor = floors(first["head"], gemm)
    ratio = {kind: med[baseline][kind]["wall_s"] / med["head"][kind]["wall_s"] for kind in ("first", "rerun")}
    from machine import describe

    return {"machine": describe(), "load_average": load, "command": "vitprune " + " ".join(COMMAND), "baseline": baseline,
            "medians": med, "speedup": ratio, "same_mask": same_mask, "same_top1": same_top1,
            "top1": {"dense": first["head"]["top1_dense"], "pruned": first["head"]["top1_pruned"]},
            "gemm_macs_per_s": gemm, "floors_s": floor,
            "stage_over_floor": {s: med["head"]["first"][s] / f for s, f in floor.items() if f and med["head"]["first"].get(s)},
            "evaluation": bare, "runs": runs}


def render(s: dict) -> str:
    m, b = s["medians"], s["baseline"]
    lines = ["# `make demo` end to end (`eval/bench_compress.py`)", "",
             f"`{s['command']}` of this checkout (`head`) and of commit `{b}`, alternating, fresh folders and cache (first run), "
             f"then the same command on the finished folder (rerun); medians of {len(s['runs']['head']['first'])} round(s). "
             f"Machine: {s['machine']['cpu']}, {s['machine']['cores']} cores, torch {s['machine']['torch']} "
             f"({s['machine']['torch_threads']} threads); load average before the runs {s['load_average']}.", "",
             "| | head first run | head rerun | " + f"{b} first run | {b} rerun |", "|---|---|---|---|---|"]
    for stage in ("wall_s", *STAGES):
        lines.append(f"| {stage} | " + " | ".join(f"{m[c][k].get(stage, 0.0):.2f}" for c in ("head", b) for k in ("first", "rerun"))
                     + " |")
    lines += ["", f"Speed-up against `{b}`: **first run {s['speedup']['first']:.2f}×, rerun {s['speedup']['rerun']:.2f}×**; "
              f"the same mask.json: {s['same_mask']}; the same top-1 (dense {100 * s['top1']['dense']:.2f}%, pruned "
              f"{100 * s['top1']['pruned']:.2f}%): {s['same_top1']}.", "",
              f"GEMM throughput: {s['gemm_macs_per_s']['demo_mlp'] / 1e9:.1f} GMAC/s at the demo's MLP shape, "
              f"{s['gemm_macs_per_s']['square'] / 1e9:.1f} at 2048².", "",
              "| stage (head, first run) | seconds | arithmetic floor (s) | ratio |", "|---|---|---|---|"]
    for stage, floor in s["floors_s"].items():
        lines.append(f"| {stage} | {m['head']['first'].get(stage, 0.0):.2f} | {floor:.2f} | "
                     f"{s['stage_over_floor'].get(stage, float('nan')):.1f}× |")
    e = s["evaluation"]
    lines += ["", f"Evaluation: vitprune scores the dense model at {e['vitprune_evaluation_images_per_s']:.0f} images/s (decoding "
              f"included) against the bare batched forward's {e['best_images_per_s']:.0f} images/s on tensors (batch "
              f"{e['best_batch']}): **{100 * e['ratio']:.0f}%**."]
    if e.get("png_files_images_per_s"):
        lines += ["", "The same 10k images as PNG files (`imagefolder:`): " + ", ".join(
            f"{rate:.0f} images/s with {w} decoding worker(s) ({100 * rate / e['best_images_per_s']:.0f}% of the bare forward)"
            for w, rate in e["png_files_images_per_s"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="a7efa93")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the in-process measurements")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    codes = {"head": ROOT, args.baseline: worktree(args.baseline)}
    load = list(os.getloadavg())
    runs: dict[str, dict[str, list[dict]]] = {c: {"first": [], "rerun": []} for c in codes}
    for r in range(args.rounds):
        for name, code in (codes.items() if r % 2 == 0 else reversed(codes.items())):
            with tempfile.TemporaryDirectory(prefix="vitprune-bench-") as tmp:
                out, cache = Path(tmp) / "demo", Path(tmp) / "cache"
                runs[name]["first"].append(run(code, out, cache))
                runs[name]["rerun"].append(run(code, out, cache))
                print(name, {k: runs[name][k][-1]["wall_s"] for k in ("first", "rerun")}, flush=True)
    summary = summarise(runs, gemm_rate(args.threads), bare_forward(args.threads), args.baseline, load)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_compress.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (OUT / "bench_compress.md").write_text(render(summary))
    print(render(summary))


if __name__ == "__main__":
    main()
