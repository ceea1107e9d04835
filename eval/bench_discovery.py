"""Discovery benchmark: vitprune against the reference's organisation of the work, images/s, peak memory.

    .venv/bin/python eval/bench_discovery.py            # writes eval/results/discovery_benchmark.{json,md}
    .venv/bin/python eval/bench_discovery.py --configs ref-demo demo   # re-runs these, keeps the others

Comparisons (one thread, the same images, timed in alternating rounds in one process):
  ref-demo      the bundled demo ViT (6 blocks), 20 Fashion-MNIST calibration images
  ref-vit_b32   random-init vit_base_patch32_224 (12 blocks, 50 tokens), one random image
Each pits vitprune (CLS scope, K = 1: the reference's own setting) against eval/reference_jas.py,
the reference code's passes (a clean read per greedy step, one autograd.grad per clamped layer).

Configurations (each in its own process, so peak memory is per configuration):
  demo        the bundled demo ViT (6 blocks), real Fashion-MNIST calibration images
  demo-kept   the same with the 'kept' schedule forced ('auto' carries tangents at 6 blocks, the JVP being written out)
  vit_base    random-init vit_base_patch16_224 (12 blocks, 197 tokens), 224x224 inputs
  *-PREC      the same at another --precision
  demo-compress, demo-compress-default   the demo as `compress` discovers (top-5, token scope all): at the reference's
              m = 20 (--faithful-discovery) and at compress's default m (vitprune/defaults.py DISCOVERY_DEFAULT)

The FLOP count of the schedule per image is 2 * MACs/L per block-row forward (a block-row is one
row through one block: the greedy steps start from the kept prefix, so they run fewer blocks) plus
2 * MACs per scaled row backward (input gradients only: no weight gradients are needed), with MACs
of one forward counted by torch-pruning. It is set against the GEMM throughput measured in the
same process at the same precision (a 2048^3 matmul), the most this machine can sustain.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from vitprune.defaults import DISCOVERY_DEFAULT, FAITHFUL_DISCOVERY, JAS_DEFAULT  # noqa: E402

DEMO = dict(model="demo", images=64, batch=16, steps=20, topk=5, precision="fp32")
BASE = dict(model="random:vit_base_patch16_224", images=2, batch=2, steps=20, topk=5, precision="fp32")
COMPARISONS = {
    "ref-demo": dict(model="demo", images=20, rounds=5, steps=20, topk=1, threads=1),
    "ref-vit_b32": dict(model="random:vit_base_patch32_224", images=1, rounds=3, steps=20, topk=1, threads=1),
}
CONFIGS = {
    "demo": DEMO,
    "demo-kept": {**DEMO, "schedule": "kept"},  # the schedule 'auto' no longer picks for 6 blocks, forced
    "demo-bf16": {**DEMO, "precision": "bf16"},
    "demo-fp16": {**DEMO, "precision": "fp16", "images": 32},  # CPU fp16 is ~10x slower than fp32 here
    "vit_base": BASE,
    "vit_base-tf32": {**BASE, "precision": "tf32", "images": 1, "batch": 1},  # TF32 is a CUDA mode: fp32 on CPU
    "vit_base-bf16": {**BASE, "precision": "bf16"},
    # what compress discovers on the demo: --faithful-discovery, then the default (the cost-quality study's knee)
    "demo-compress": {**DEMO, "token_scope": JAS_DEFAULT["token_scope"], "steps": FAITHFUL_DISCOVERY["steps"]},
    "demo-compress-default": {**DEMO, "token_scope": JAS_DEFAULT["token_scope"], "steps": DISCOVERY_DEFAULT["steps"]},
    # opt-in (not in the default run): CPU fp16 ViT-B/16 runs for hours here (no fp16 GEMM on this CPU)
    "vit_base-fp16": {**BASE, "precision": "fp16", "images": 1, "batch": 1, "steps": 2},
}
DEFAULT_CONFIGS = [*COMPARISONS, *(name for name in CONFIGS if name != "vit_base-fp16")]
COST_MODELS = ("vit_base_patch16_224", "vit_base_patch32_224", "vit_large_patch32_224", "vit_large_patch16_224")
GEMM_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def run_one(name: str) -> dict:
    import torch

    import vitprune
    from vitprune.discovery.finder import PathFinder
    from vitprune.discovery.settings import DiscoverySettings
    from vitprune.data import load_data, model_transform, select_per_class
    from vitprune.prune.macs import count_macs_params

    from machine import proc_status

    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = vitprune.load_model(cfg["model"])
    if cfg["model"] == "demo":
        pools = load_data("demo")
        # the same first images whatever the count, so configurations compare image by image
        ds = select_per_class(pools.calibration, DEMO["images"] // 10 + 1, None, num_classes=10).select(range(cfg["images"]))
        batches = [(x, y) for _, x, y in ds.batches(model_transform(model), cfg["batch"])]
    else:
        size = model.patch_embed.img_size
        batches = [(torch.randn(cfg["batch"], 3, *size), torch.arange(cfg["batch"]))
                   for _ in range(cfg["images"] // cfg["batch"])]

    scope = cfg.get("token_scope", "auto")
    finder = PathFinder(model, DiscoverySettings(topk=cfg["topk"], steps=cfg["steps"], precision=cfg["precision"], token_scope=scope))
    finder.schedule = cfg.get("schedule", "auto")
    warm = PathFinder(model, DiscoverySettings(topk=cfg["topk"], steps=1, precision=cfg["precision"], token_scope=scope))
    warm.find(*[t[:1] for t in batches[0]])  # warm-up (allocator, kernels); not counted
    finder.engine.memory = finder.engine.measure_memory(*[t[:1] for t in batches[0]])  # the first batch's probe, not timed
    finder.engine.stats = type(finder.stats)()
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
    # forward and backward (input gradients only) each cost about one block's MACs per block-row; a
    # tangent pass is counted at twice that (forward-mode AD recomputes the block; the written-out JVP
    # from the step's kept primal runs about one block: the count is an upper bound there)
    min_flop = s.flops(macs, L) / n
    gemm = gemm_flops(getattr(torch, GEMM_DTYPES[cfg["precision"]]), tf32=cfg["precision"] == "tf32")
    return {
        "macs_per_forward": macs, "min_flop_per_image": min_flop, "achieved_flops": min_flop * n / seconds,
        "gemm_flops": gemm, "min_seconds_per_image": min_flop / gemm,
        "config": name, **cfg, "token_scope": finder.scope, "depth": L, "tokens": int(model.patch_embed.num_patches + model.num_prefix_tokens),
        "seconds": seconds, "images_per_s": n / seconds, "seconds_per_image": seconds / n,
        "forward_rows_per_image": s.forward_rows / n, "block_rows_per_image": s.block_rows / n,
        "backward_block_rows_per_image": s.backward_block_rows / n, "tangent_block_rows_per_image": s.tangent_block_rows / n,
        "schedule": finder.engine.resolved_schedule(),
        "backward_calls_per_batch": s.backward_calls / len(batches),
        "backward_rows_per_image": s.backward_rows / n,
        "schedule_block_rows_per_image": schedule(L, m)["block_rows"],
        "rss_before_mb": rss0, "peak_rss_mb": peak, "peak_minus_model_mb": peak - rss0,
        "paths": [r.path for r in records],
        "scores": [r.score for r in records],
    }


def schedule(L: int, m: int) -> dict:
    """Work per image of vitprune's schedule and of the reference's, in block-rows (one row through one
    block) forward and in backward calls and block-rows (a backward from the output to block l runs L - l blocks)."""
    ours_fwd = L + m * (L + sum(L - t + 1 for t in range(1, L)) + 1 + L)  # clean; step 0; steps from the kept prefix; path; baseline
    # 'tangent': step t >= 1 starts at block t from the carried stream, and its backward stops there
    tangent_fwd = L + m * (L + sum(L - t for t in range(1, L)) + 1 + L)
    ref_fwd = L * L + m * (L + 2) * L  # a clean read per greedy step; every scaled forward from the images
    ref_bwd = m * (sum((L - l) for t in range(L) for l in range(t + 1)) + 2 * sum(L - l for l in range(L)))
    return {"block_rows": ours_fwd, "backward_calls": L + 2, "backward_block_rows": m * (L + 2) * L,
            "tangent_forward_block_rows": tangent_fwd, "tangent_backward_block_rows": tangent_fwd - L, "tangent_block_rows": m * (L - 1),
            "ref_block_rows": ref_fwd, "ref_backward_calls": L * (L + 1) // 2 + 2 * L, "ref_backward_block_rows": ref_bwd}


def cost_model(name: str, steps: int = 20) -> dict:
    """FLOP count per image of vitprune's schedule on a timm ViT (random init, nothing timed)."""
    import torch

    import vitprune
    from vitprune.prune.macs import count_macs_params

    torch.manual_seed(0)
    model = vitprune.load_model(f"random:{name}", model_args={"num_classes": 1000})  # some default tags are headless
    macs, params = count_macs_params(model)
    L = len(model.blocks)
    tokens = int(model.patch_embed.num_patches + model.num_prefix_tokens)
    from vitprune.discovery.engine import auto_schedule

    work = schedule(L, steps)
    kind = auto_schedule(L, 1)  # the CLS scope, discover's default for these models
    forward = work["tangent_forward_block_rows"] if kind == "tangent" else work["block_rows"]
    backward = work["tangent_backward_block_rows"] if kind == "tangent" else work["backward_block_rows"]
    tangent = work["tangent_block_rows"] if kind == "tangent" else 0
    min_flop = 2 * macs / L * (forward + backward + 2 * tangent)
    return {"model": name, "depth": L, "tokens": tokens, "params": params, "macs_per_forward": macs, "steps": steps,
            "schedule": kind, "block_rows_per_image": forward, "backward_block_rows_per_image": backward,
            "tangent_block_rows_per_image": tangent, "min_flop_per_image": min_flop}


def block_costs(model, images, reps: int = 5) -> dict:
    """Seconds of one block (the second) on the rows of one image: forward, backward to its input, and a
    tangent pass as vitprune's tangent schedule runs it (the written-out JVP from the primal its step's
    pass kept, one scope token), beside torch's forward-mode AD of the block (math attention), the
    fallback for blocks the JVP does not know. Their ratios to the backward are what
    vitprune.discovery.engine.TANGENT_COST and FORWARD_AD_TANGENT_COST stand for."""
    import torch
    import torch.autograd.forward_ad as fwAD
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from vitprune.model.adapter import adapter_for
    from vitprune.model.hooks import block_input
    from vitprune.model.tangent import block_tangent, primal_capture

    adapter = adapter_for(model)
    block = adapter.blocks[1]
    x = block_input(adapter, images, 1)
    v = torch.randn_like(x)
    width = adapter.hidden_widths[1]
    clamp = torch.randn(len(x), 1, width)
    direction = torch.zeros(1, len(x), 1, width)
    direction[0, :, 0, :1] = 1.0
    with torch.no_grad(), primal_capture(block) as kept:
        block(x)

    def forward():
        with torch.no_grad():
            block(x)

    def forward_backward():
        z = x.clone().requires_grad_(True)
        torch.autograd.grad(block(z), z, v)

    def tangent():
        if block_tangent(block, x, v[None], clamp, direction, slice(0, 1), kept) is None:
            raise RuntimeError("the benchmarked block's tangent is not written out")

    def forward_ad():
        with torch.no_grad(), fwAD.dual_level(), sdpa_kernel([SDPBackend.MATH]):
            fwAD.unpack_dual(block(fwAD.make_dual(x, v))).tangent

    def best(fn):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    f, fb, tan, ad = best(forward), best(forward_backward), best(tangent), best(forward_ad)
    return {"block_forward_s": f, "block_backward_s": fb - f, "block_tangent_s": tan, "tangent_cost": tan / (fb - f),
            "block_forward_ad_s": ad, "forward_ad_cost": ad / (fb - f)}


def run_comparison(name: str) -> dict:
    """vitprune against the reference's organisation of the work: same model, images, threads; rounds
    alternate which goes first, so slow drifts of the machine hit both alike."""
    import torch

    import vitprune
    from vitprune.model.adapter import adapter_for
    from vitprune.discovery.finder import PathFinder
    from vitprune.discovery.settings import DiscoverySettings
    from vitprune.data import load_data, model_transform, select_per_class

    from reference_jas import ReferenceJAS

    cfg = COMPARISONS[name]
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = vitprune.load_model(cfg["model"])
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg["model"] == "demo":
        ds = select_per_class(load_data("demo").calibration, cfg["images"] // 10, None, num_classes=10)
        x, y = next((x, y) for _, x, y in ds.batches(model_transform(model), cfg["images"]))
    else:
        x = torch.randn(cfg["images"], 3, *model.patch_embed.img_size)
        y = torch.arange(cfg["images"]) % model.num_classes
    ours = PathFinder(model, DiscoverySettings(topk=cfg["topk"], steps=cfg["steps"], token_scope="cls"))
    reference = ReferenceJAS(model, cfg["topk"], cfg["steps"], adapter_for(model).token_slice("cls"))

    def run_ours():
        return ours.find(x, y)  # the whole set as one batch; rows per pass from the memory probe

    def run_reference():
        return [r for i in range(len(x)) for r in reference.find(x[i : i + 1], y[i : i + 1])]  # B = 1, as the top-K code

    ours.find(x[:1], y[:1])  # warm-up and the memory probe, not timed
    reference.find(x[:1], y[:1])
    ours.engine.stats = type(ours.stats)()
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for r in range(cfg["rounds"]):
        order = [("ours", run_ours), ("reference", run_reference)]
        for key, fn in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            found = fn()
            times[key].append((time.perf_counter() - t0) / len(x))
            if key == "ours":
                mine = found
            else:
                theirs = found
    L, m = len(model.blocks), cfg["steps"]
    costs = block_costs(model, x[:1].repeat(m, 1, 1, 1))
    rel = [abs(getattr(a, k) - b[k]) / max(abs(b[k]), 1e-30) for a, b in zip(mine, theirs) for k in ("score", "base_score")]
    ratios = [b / a for a, b in zip(times["ours"], times["reference"])]
    return {
        "comparison": name, **cfg, "depth": L, "tokens": int(model.patch_embed.num_patches + model.num_prefix_tokens),
        "threads": torch.get_num_threads(), "seconds_per_image": times, "ratios": ratios,
        "ratio_median": statistics.median(ratios), "paths_identical": sum(a.path == b["path"] and a.base_path == b["base_path"]
                                                                            for a, b in zip(mine, theirs)),
        "max_relative_score_difference": max(rel), "block_rows_per_image": ours.stats.block_rows / (len(x) * cfg["rounds"]),
        "backward_block_rows_per_image": ours.stats.backward_block_rows / (len(x) * cfg["rounds"]),
        "backward_calls_per_batch": ours.stats.backward_calls / cfg["rounds"], "schedule": ours.engine.resolved_schedule(),
        "tangent_block_rows_per_image": ours.stats.tangent_block_rows / (len(x) * cfg["rounds"]), **costs, **schedule(L, m),
    }


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


def render(results: list[dict], machine: dict, costs: list[dict] | None = None, comparisons: list[dict] | None = None) -> str:
    lines = [
        "# Discovery benchmark",
        "",
        "Command: `.venv/bin/python eval/bench_discovery.py` (each configuration in its own process).",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB, no GPU; "
        f"torch {machine['torch']}.",
    ]
    notes: dict[str, list[str]] = {}
    for entry in [*(comparisons or []), *results]:
        if entry.get("note"):
            notes.setdefault(entry["note"], []).append(entry.get("comparison") or entry["config"])
    lines += [f"{', '.join(names)}: {note}" for note, names in notes.items()]
    if comparisons:
        lines += [
            "",
            "## Against the reference's organisation of the work",
            "",
            "The reference's setting (CLS scope, K = 1, m = 20, softmax probability of the true label), the same "
            "images and one thread for both, in one process; rounds alternate which runs first. `reference` is "
            "`eval/reference_jas.py`: the passes of the reference code (a clean read per greedy step, every scaled "
            "forward from the images, one `autograd.grad` per clamped layer), one image per call as its top-K code. "
            "vitprune keeps the residual stream entering block t from greedy step t on (steps and the path score "
            "run only the later blocks; schedule `kept` keeps its graph and back-propagates through it, `tangent` "
            "carries the stream past the scored block and a tangent of the earlier path units one block per step "
            "instead (a written-out JVP from the intermediates the step's own pass computed), so step t runs and "
            "back-propagates blocks t.. only), has one backward per pass, and runs the last block's MLP on the tokens the head reads only.",
            "",
            "| model | L | tokens | images | rounds | reference s/image | vitprune s/image | speed-up, median [min, max] "
            "| paths identical | max relative score difference | block-rows forward / image, vitprune vs reference "
            "| backward calls: vitprune per batch (any size) vs reference per image |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            ref, ours = c["seconds_per_image"]["reference"], c["seconds_per_image"]["ours"]
            lines.append(
                f"| {c['model']} | {c['depth']} | {c['tokens']} | {c['images']} | {c['rounds']} | {statistics.median(ref):.3g} | "
                f"{statistics.median(ours):.3g} | **{c['ratio_median']:.2f}×** [{min(c['ratios']):.2f}, {max(c['ratios']):.2f}] | "
                f"{c['paths_identical']}/{c['images']} | {c['max_relative_score_difference']:.1e} | "
                f"{c['block_rows_per_image']:.0f} vs {c['ref_block_rows']} | {c['backward_calls']} vs {c['ref_backward_calls'] * c['steps'] // c['steps']} |"
            )
        lines += ["", "vitprune's schedule per model (`auto`: `tangent` when L > 2·T·TANGENT_COST for a scope of T ≤ 2 tokens, "
                  "else `kept`), and the cost ratio behind it, one block on the m rows of one image, best of 5: "
                  + "; ".join(f"{c['model']}: `{c['schedule']}` ({c['tangent_block_rows_per_image']:.0f} tangent block-rows/image), "
                              f"forward {c['block_forward_s'] * 1e3:.3g} ms, backward {c['block_backward_s'] * 1e3:.3g} ms, "
                              f"tangent pass {c['block_tangent_s'] * 1e3:.3g} ms = **{c['tangent_cost']:.2f}** backwards"
                              + (f" (forward-mode AD, the fallback: {c['block_forward_ad_s'] * 1e3:.3g} ms = {c['forward_ad_cost']:.2f})"
                                 if "forward_ad_cost" in c else "")
                              for c in comparisons) + "."]
        lines += ["", "Per round (s/image, reference / vitprune): " + "; ".join(
            f"{c['model']}: " + ", ".join(f"{r:.3g}/{o:.3g}" for r, o in zip(c["seconds_per_image"]["reference"], c["seconds_per_image"]["ours"]))
            for c in comparisons) + ".",
            "",
            "Backward work per image in block-rows (a backward from the output to block l runs L − l blocks; vitprune's as "
            "counted by the run, the reference's from its passes): "
            + "; ".join(f"{c['model']} {c['backward_block_rows_per_image']:.0f} (vitprune, `{c['schedule']}`) vs "
                        f"{c['ref_backward_block_rows']} (reference)" for c in comparisons) + "."]
    if not results:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Throughput, memory and the FLOP count of the schedule",
        "",
        f"torch threads: {machine['torch_threads']}; top-5, CLS scope (the default for these models; the demo-compress rows: token scope all, as compress discovers). Per image vitprune "
        "runs one clean forward, then greedy step 0 and the activation baseline's score through all L blocks and the other "
        "greedy steps and the path score from the kept prefix; one backward per pass. Block-rows count one row through "
        "one block, as counted by the run.",
        "",
        "| config | precision | schedule | L | tokens | m | batch | images | images/s | s/image | block-rows forward / image "
        "| backward | tangent | backward calls/batch | peak RSS (MB) | peak − after model load (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['config']} | {r['precision']} | `{r['schedule']}` | {r['depth']} | {r['tokens']} | {r['steps']} | {r['batch']} | "
            f"{r['images']} | {r['images_per_s']:.3g} | {r['seconds_per_image']:.3g} | {r['block_rows_per_image']:.0f} | "
            f"{r['backward_block_rows_per_image']:.0f} | {r['tangent_block_rows_per_image']:.0f} | "
            f"{r['backward_calls_per_batch']:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_minus_model_mb']:.0f} |"
        )
    lines += [
        "",
        "Cost per image against the FLOP count of the schedule: 2·MACs/L per block-row forward and per block-row "
        "backward (input gradients only), twice that per tangent block-row (the block and its tangent, as forward-mode AD runs it; an upper bound for the written-out JVP, which reuses the primal of the step's pass), MACs of one "
        "forward from torch-pruning; the floor is that count at the GEMM throughput measured in the same process at "
        "the same precision (2048³ matmul).",
        "",
        "| config | precision | GMAC/forward | TFLOP/image | GEMM GFLOP/s | floor s/image | measured s/image "
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
    below = [r for r in results if r["seconds_per_image"] < r["min_seconds_per_image"]]
    if below:
        why = []
        if any(r["precision"] == "fp16" for r in below):
            why.append("fp16: the plain fp16 matmul probe runs slower here than the model's own fp16 kernels under "
                       "autocast (no native fp16 GEMM on this CPU)")
        others = [r["config"] for r in below if r["precision"] != "fp16"]
        if others:
            why.append(f"{', '.join(others)}: the probe of that run caught a more loaded moment of a shared machine, "
                       "and the count takes a tangent block-row at twice a block (an upper bound for the written-out JVP)")
        lines += ["", "¹ No floor where the matmul probe ran slower than the model's own work: " + "; ".join(why) + "."]
    by = {r["config"]: r for r in results}
    if "demo-compress" in by and "demo-compress-default" in by:
        f, d = by["demo-compress"], by["demo-compress-default"]
        lines += ["", f"Compress's discovery on the demo (top-5, token scope all, {d['images']} images): m = {f['steps']} "
                      f"(`--faithful-discovery`) {f['images_per_s']:.3g} images/s, {f['min_flop_per_image'] / 1e9:.3g} GFLOP/image; "
                      f"m = {d['steps']} (the default) {d['images_per_s']:.3g} images/s, {d['min_flop_per_image'] / 1e9:.3g} GFLOP/image: "
                      f"{d['images_per_s'] / f['images_per_s']:.2f}× the images/s for "
                      f"{f['min_flop_per_image'] / d['min_flop_per_image']:.2f}× fewer FLOPs. The GEMM probe of the same "
                      f"processes ran at {f['gemm_flops'] / 1e9:.0f} and {d['gemm_flops'] / 1e9:.0f} GFLOP/s: where these "
                      "differ, the machine was loaded differently during the two runs, and only the FLOP count and the "
                      "measured / floor column compare."]
    if costs:
        base = by.get("vit_base")
        lines += ["", "FLOP count per image of the schedule for the models users run (m = 20, the reference's and `discover`'s, "
                  f"and m = {DISCOVERY_DEFAULT['steps']}, compress's default; top-K does not change it), "
                  "MACs counted on random-init timm models. The last columns are arithmetic, not measurements: the time "
                  "at this CPU's measured ViT-B/16 fp32 rate, and at a sustained 100 TFLOP/s (a fraction of an H100's "
                  "dense bf16 peak; no GPU was lent to measure).", "",
                  "| model | m | L | tokens | GMAC/forward | schedule (CLS scope) | block-rows / image: forward, backward, tangent "
                  "| TFLOP/image | s/image at this CPU's ViT-B/16 rate | s/image at 100 TFLOP/s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c in costs:
            here = f"{c['min_flop_per_image'] / base['achieved_flops']:.0f}" if base else "n/a"
            lines.append(f"| {c['model']} | {c['steps']} | {c['depth']} | {c['tokens']} | {c['macs_per_forward'] / 1e9:.2f} | `{c['schedule']}` | "
                         f"{c['block_rows_per_image']}, {c['backward_block_rows_per_image']}, {c['tangent_block_rows_per_image']} | "
                         f"{c['min_flop_per_image'] / 1e12:.1f} | {here} | {c['min_flop_per_image'] / 100e12:.2f} |")
    agreement = [(name, path_agreement(by["demo"], by[name])) for name in ("demo-kept", "demo-bf16", "demo-fp16")
                 if name in by and "demo" in by]
    agreement += [(name, path_agreement(by["vit_base"], by[name])) for name in ("vit_base-tf32", "vit_base-bf16", "vit_base-fp16")
                  if name in by and "vit_base" in by and by[name]["steps"] == by["vit_base"]["steps"]]
    if agreement:
        lines += ["", "Against the fp32 runs of the same model and images: another schedule, reduced precision (CPU "
                  "autocast here, no GPU was lent). The random ViT-B/16 rows cover its 1–2 random-input images only; the "
                  "demo rows are the measure:", "",
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
    parser.add_argument("--note", help="a line kept with the configurations run now (e.g. that the machine was shared)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.one:
        if args.one.startswith("cost:"):
            name, _, steps = args.one[5:].partition(":")
            print(json.dumps(cost_model(name, int(steps or 20))))
        else:
            print(json.dumps(run_comparison(args.one) if args.one in COMPARISONS else run_one(args.one)))
        return
    from machine import describe

    out = Path(args.out)
    saved_file = out / "discovery_benchmark.json"
    if args.render_only:
        saved = json.loads(saved_file.read_text())
        (out / "discovery_benchmark.md").write_text(render(saved["results"], saved["machine"], saved.get("costs"), saved.get("comparisons")))
        return
    unknown = [name for name in args.configs if name not in CONFIGS and name not in COMPARISONS]
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)}; choose from {', '.join([*COMPARISONS, *CONFIGS])}")
    out.mkdir(parents=True, exist_ok=True)
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {}
    # what is not asked for keeps its saved result, so one configuration can be re-run alone; results of an
    # older schedule (no block-row count) are dropped rather than shown beside the new ones
    kept = {r["config"]: r for r in saved.get("results", []) if "backward_block_rows_per_image" in r}
    kept.update({c["comparison"]: c for c in saved.get("comparisons", [])})
    # first: cheap, and fails before the long runs; at the reference's m and at compress's default m
    costs = [_run_one(f"cost:{name}:{m}") for m in dict.fromkeys((FAITHFUL_DISCOVERY["steps"], DISCOVERY_DEFAULT["steps"]))
             for name in COST_MODELS]
    for name in args.configs:
        print(f"running {name} ...", flush=True)
        kept[name] = _run_one(name)
        if args.note:
            kept[name]["note"] = args.note
        summary = (f"{kept[name]['ratio_median']:.2f}x the reference" if name in COMPARISONS
                   else f"{kept[name]['images_per_s']:.3f} images/s")
        print(f"  {summary}", flush=True)
        results = [kept[c] for c in CONFIGS if c in kept]
        comparisons = [kept[c] for c in COMPARISONS if c in kept]
        machine = describe()
        atomic = saved_file.with_suffix(".json.tmp")  # written after every configuration: a long run loses at most one
        atomic.write_text(json.dumps({"machine": machine, "results": results, "costs": costs, "comparisons": comparisons},
                                     indent=2) + "\n")
        atomic.replace(saved_file)
        (out / "discovery_benchmark.md").write_text(render(results, machine, costs, comparisons))
    print((out / "discovery_benchmark.md").read_text())


if __name__ == "__main__":
    main()
