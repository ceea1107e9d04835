"""Discovery benchmark: images/s, peak memory, passes per image against the minimum m*(L+2).

    .venv/bin/python eval/bench_discovery.py            # writes eval/results/discovery_benchmark.{json,md}
    .venv/bin/python eval/bench_discovery.py --configs demo demo-bf16   # re-runs these, keeps the others

Configurations (each in its own process, so peak memory is per configuration):
  demo        the bundled demo ViT (6 blocks), real Fashion-MNIST calibration images
  demo-ref    the same with reference-style backward: one autograd.grad per clamped layer
  vit_base    random-init vit_base_patch16_224 (12 blocks, 197 tokens), 224x224 inputs
  *-PREC      the same at another --precision

The FLOP minimum per image is 2 * MACs * (1 + m(L+2)) for the clean and scaled forwards plus
2 * MACs * m(L+2) for the backwards (input gradients only: no weight gradients are needed), with
MACs of one forward counted by torch-pruning. It is set against the GEMM throughput measured in
the same process at the same precision (a 2048^3 matmul), the most this machine can sustain.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = dict(model="demo", images=64, batch=16, steps=20, topk=5, reference_backward=False, precision="fp32")
BASE = dict(model="random:vit_base_patch16_224", images=2, batch=2, steps=20, topk=5, reference_backward=False, precision="fp32")
CONFIGS = {
    "demo": DEMO,
    "demo-ref": {**DEMO, "reference_backward": True},
    "demo-bf16": {**DEMO, "precision": "bf16"},
    "demo-fp16": {**DEMO, "precision": "fp16", "images": 32},  # CPU fp16 is ~10x slower than fp32 here
    "vit_base": BASE,
    "vit_base-tf32": {**BASE, "precision": "tf32", "images": 1, "batch": 1},  # TF32 is a CUDA mode: fp32 on CPU
    "vit_base-bf16": {**BASE, "precision": "bf16"},
    # opt-in (not in the default run): CPU fp16 ViT-B/16 runs for hours here (no fp16 GEMM on this CPU)
    "vit_base-fp16": {**BASE, "precision": "fp16", "images": 1, "batch": 1, "steps": 2},
}
DEFAULT_CONFIGS = [name for name in CONFIGS if name != "vit_base-fp16"]
COST_MODELS = ("vit_base_patch16_224", "vit_base_patch32_224", "vit_large_patch32_224", "vit_large_patch16_224")
GEMM_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def run_one(name: str) -> dict:
    import torch

    import vitprune
    from vitprune.attribution import DiscoveryConfig, PathFinder
    from vitprune.data import iterate_batches, load_data, model_transform, select_per_class
    from vitprune.slicing import count_macs_params

    from machine import proc_status

    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = vitprune.load_model(cfg["model"])
    if cfg["model"] == "demo":
        pools = load_data("demo")
        # the same first images whatever the count, so configurations compare image by image
        ds = select_per_class(pools.calibration, DEMO["images"] // 10 + 1, None, num_classes=10).select(range(cfg["images"]))
        batches = [(x, y) for _, x, y in iterate_batches(ds, model_transform(model), cfg["batch"])]
    else:
        size = model.patch_embed.img_size
        batches = [(torch.randn(cfg["batch"], 3, *size), torch.arange(cfg["batch"]))
                   for _ in range(cfg["images"] // cfg["batch"])]

    class ReferenceBackward(PathFinder):
        """One autograd.grad call per clamped layer, as the reference code does."""

        def _grad(self, output, inputs, rows):
            grads = []
            for i, z in enumerate(inputs):
                grads.append(torch.autograd.grad(output, z, retain_graph=i < len(inputs) - 1)[0])
                self.stats.add("backward", rows)
            return tuple(grads)

    finder_cls = ReferenceBackward if cfg["reference_backward"] else PathFinder
    finder = finder_cls(model, DiscoveryConfig(topk=cfg["topk"], steps=cfg["steps"], precision=cfg["precision"]))
    warm = finder_cls(model, DiscoveryConfig(topk=cfg["topk"], steps=1, precision=cfg["precision"]))
    warm.find(*[t[:1] for t in batches[0]])  # warm-up (allocator, kernels); not counted
    finder.memory = finder.measure_memory(*[t[:1] for t in batches[0]])  # the first batch's probe, not timed
    finder.stats = type(finder.stats)()
    rss0 = proc_status("VmRSS") / 2**20
    t0 = time.perf_counter()
    records = []
    for x, y in batches:
        records += finder.find(x, y)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    L, m, n = finder.adapter.depth, cfg["steps"], len(records)
    s = finder.stats
    macs, _ = count_macs_params(model)
    min_flop = 2 * macs * (1 + m * (L + 2)) + 2 * macs * m * (L + 2)
    gemm = gemm_flops(getattr(torch, GEMM_DTYPES[cfg["precision"]]), tf32=cfg["precision"] == "tf32")
    return {
        "macs_per_forward": macs, "min_flop_per_image": min_flop, "achieved_flops": min_flop * n / seconds,
        "gemm_flops": gemm, "min_seconds_per_image": min_flop / gemm,
        "config": name, **cfg, "depth": L, "tokens": int(model.patch_embed.num_patches + model.num_prefix_tokens),
        "seconds": seconds, "images_per_s": n / seconds, "seconds_per_image": seconds / n,
        "forward_rows_per_image": s.forward_rows / n, "backward_calls_per_batch": s.backward_calls / len(batches),
        "backward_rows_per_image": s.backward_rows / n,
        "minimum_rows_per_image": m * (L + 2),
        "rss_before_mb": rss0, "peak_rss_mb": peak, "peak_minus_model_mb": peak - rss0,
        "paths": [r["path"] for r in records],
        "scores": [r["score"] for r in records],
    }


def cost_model(name: str, steps: int = 20) -> dict:
    """FLOP-count minimum per image of a timm ViT (random init, nothing timed)."""
    import torch

    import vitprune
    from vitprune.slicing import count_macs_params

    torch.manual_seed(0)
    model = vitprune.load_model(f"random:{name}")
    macs, params = count_macs_params(model)
    L = len(model.blocks)
    tokens = int(model.patch_embed.num_patches + model.num_prefix_tokens)
    min_flop = 2 * macs * (1 + steps * (L + 2)) + 2 * macs * steps * (L + 2)
    return {"model": name, "depth": L, "tokens": tokens, "params": params, "macs_per_forward": macs, "steps": steps,
            "rows_per_image": 1 + steps * (L + 2), "min_flop_per_image": min_flop}


def gemm_flops(dtype, tf32: bool = False, n: int = 2048, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of an n^3 matmul at ``dtype`` on the model's device (CPU here)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def render(results: list[dict], machine: dict, costs: list[dict] | None = None) -> str:
    lines = [
        "# Discovery benchmark",
        "",
        "Command: `.venv/bin/python eval/bench_discovery.py` (each configuration in its own process).",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB, no GPU; "
        f"torch {machine['torch']} with {machine['torch_threads']} threads.",
        "",
        "Per image, the minimum is one forward and one backward over m·(L+2) scaled rows "
        "(L greedy layers + the path score + the activation-baseline score), plus one clean forward.",
        "",
        "| config | precision | L | tokens | m | batch | images | images/s | s/image | forward rows/image | backward calls/batch "
        "| minimum m(L+2) | peak RSS (MB) | peak − after model load (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['config']} | {r['precision']} | {r['depth']} | {r['tokens']} | {r['steps']} | {r['batch']} | {r['images']} | "
            f"{r['images_per_s']:.3g} | {r['seconds_per_image']:.3g} | {r['forward_rows_per_image']:.1f} | "
            f"{r['backward_calls_per_batch']:.0f} | {r['minimum_rows_per_image']} | {r['peak_rss_mb']:.0f} | {r['peak_minus_model_mb']:.0f} |"
        )
    lines += [
        "",
        "Cost per image against the FLOP-count minimum: 2·MACs·(1 + m(L+2)) forward + 2·MACs·m(L+2) backward "
        "(input gradients only), MACs of one forward from torch-pruning; the floor is that count at the GEMM "
        "throughput measured in the same process at the same precision (2048³ matmul).",
        "",
        "| config | precision | GMAC/forward | minimum TFLOP/image | GEMM GFLOP/s | floor s/image | measured s/image "
        "| measured / floor | achieved GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r["seconds_per_image"] / r["min_seconds_per_image"]
        floor = (f"{r['min_seconds_per_image']:.3g} | {r['seconds_per_image']:.3g} | {ratio:.2f}" if ratio >= 1
                 else f"n/a¹ | {r['seconds_per_image']:.3g} | n/a¹")
        lines.append(
            f"| {r['config']} | {r['precision']} | {r['macs_per_forward'] / 1e9:.3g} | {r['min_flop_per_image'] / 1e12:.3g} | "
            f"{r['gemm_flops'] / 1e9:.1f} | {floor} | {r['achieved_flops'] / 1e9:.0f} |"
        )
    if any(r["seconds_per_image"] < r["min_seconds_per_image"] for r in results):
        lines += ["", "¹ The plain fp16 matmul probe runs slower here than the model's own fp16 kernels under autocast "
                  "(no native fp16 GEMM on this CPU), so it gives no floor for fp16."]
    by = {r["config"]: r for r in results}
    if costs:
        base = by.get("vit_base")
        lines += ["", "FLOP-count minimum per image for the models users run (m = 20, top-K does not change it), "
                  "MACs counted on random-init timm models. The last columns are arithmetic, not measurements: the time "
                  "at this CPU's measured ViT-B/16 fp32 rate, and at a sustained 100 TFLOP/s (a fraction of an H100's "
                  "dense bf16 peak; no GPU was lent to measure).", "",
                  "| model | L | tokens | GMAC/forward | rows/image | minimum TFLOP/image | s/image at this CPU's ViT-B/16 rate "
                  "| s/image at 100 TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
        for c in costs:
            here = f"{c['min_flop_per_image'] / base['achieved_flops']:.0f}" if base else "n/a"
            lines.append(f"| {c['model']} | {c['depth']} | {c['tokens']} | {c['macs_per_forward'] / 1e9:.2f} | "
                         f"{c['rows_per_image']} | {c['min_flop_per_image'] / 1e12:.1f} | {here} | "
                         f"{c['min_flop_per_image'] / 100e12:.2f} |")
    if "demo" in by and "demo-ref" in by:
        a, b = by["demo"], by["demo-ref"]
        L, m = a["depth"], a["steps"]
        forwards = 1 + m * (L + 2)
        predicted_ref = forwards + 2 * m * (L + 1) * (2 * L + 7) / 6
        predicted_ours = forwards + 2 * m * (L + 2)
        lines += [
            "",
            f"One backward per scaled forward (vitprune) vs one `autograd.grad` per clamped layer (reference style, "
            f"`demo-ref`: same forwards, only the backward calls differ), demo model: **{b['seconds'] / a['seconds']:.2f}× "
            f"faster measured**. The pass-count model (F = forward, backward ≈ 2F, a backward from the output to layer l "
            f"costs (L − l)/L of a full one) predicts {predicted_ref / predicted_ours:.2f}× for L = {L}; the reference's "
            f"L repeated clean forwards, not reproduced here, add a little more. Paths identical: {a['paths'] == b['paths']}.",
        ]
    agreement = [(name, path_agreement(by["demo"], by[name])) for name in ("demo-bf16", "demo-fp16") if name in by and "demo" in by]
    agreement += [(name, path_agreement(by["vit_base"], by[name])) for name in ("vit_base-tf32", "vit_base-bf16", "vit_base-fp16")
                  if name in by and "vit_base" in by and by[name]["steps"] == by["vit_base"]["steps"]]
    if agreement:
        lines += ["", "Reduced precision against fp32 (same images; CPU autocast here, no GPU was lent). The random "
                  "ViT-B/16 rows cover its 1–2 random-input images only; the demo rows are the measure:", "",
                  "| config | precision | images | identical path units (same layer and rank) | same unit set per layer | score Pearson r |",
                  "|---|---|---|---|---|---|"]
        for name, a in agreement:
            r = "n/a (< 3 images)" if a["pearson"] != a["pearson"] else f"{a['pearson']:.4f}"
            lines.append(f"| {name} | {by[name]['precision']} | {a['images']} | {a['identical']:.3f} | {a['same_set']:.3f} | {r} |")
    return "\n".join(lines) + "\n"


def path_agreement(ref: dict, other: dict) -> dict:
    """Fraction of identical units (same image, layer, rank), of identical per-layer sets, score correlation."""
    import numpy as np

    same = total = same_set = layers = 0
    for p, q in zip(ref["paths"], other["paths"]):
        for a, b in zip(p, q):
            same += sum(x == y for x, y in zip(a, b))
            total += len(a)
            same_set += set(a) == set(b)
            layers += 1
    n = min(len(ref["scores"]), len(other["scores"]))
    r = float(np.corrcoef(ref["scores"][:n], other["scores"][:n])[0, 1]) if n > 2 else float("nan")
    return {"identical": same / total, "same_set": same_set / layers, "pearson": r, "images": n}


def _run_one(name: str) -> dict:
    """One configuration in its own process, so peak memory is its own."""
    proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, help=f"default: {' '.join(DEFAULT_CONFIGS)}")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--render-only", action="store_true", help="re-render the Markdown from the saved JSON")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(cost_model(args.one[5:]) if args.one.startswith("cost:") else run_one(args.one)))
        return
    sys.path.insert(0, str(HERE))
    from machine import describe

    if args.render_only:
        saved = json.loads((Path(args.out) / "discovery_benchmark.json").read_text())
        (Path(args.out) / "discovery_benchmark.md").write_text(render(saved["results"], saved["machine"], saved.get("costs")))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved_file = out / "discovery_benchmark.json"
    # configurations not asked for keep their saved results, so one configuration can be re-run alone
    kept = {r["config"]: r for r in json.loads(saved_file.read_text())["results"]} if saved_file.is_file() else {}
    costs = [_run_one(f"cost:{name}") for name in COST_MODELS]  # first: cheap, and fails before the long runs
    for name in args.configs:
        print(f"running {name} ...", flush=True)
        kept[name] = _run_one(name)
        print(f"  {kept[name]['images_per_s']:.3f} images/s", flush=True)
        results = [kept[c] for c in CONFIGS if c in kept]
        machine = describe()
        atomic = saved_file.with_suffix(".json.tmp")  # written after every configuration: a long run loses at most one
        atomic.write_text(json.dumps({"machine": machine, "results": results, "costs": costs}, indent=2) + "\n")
        atomic.replace(saved_file)
        (out / "discovery_benchmark.md").write_text(render(results, machine, costs))
    print((out / "discovery_benchmark.md").read_text())

if __name__ == "__main__":
    main()
