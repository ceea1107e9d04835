"""ONNX Runtime CPU latency of MLP- and head-pruned ViT-B/16 against the MAC-ideal speed-up.

    .venv/bin/python eval/bench_latency.py      # writes eval/results/latency_benchmark.{json,md,png}

Random-init vit_base_patch16_224 (weights do not change timing), every block's MLP sliced to
25/50/75% sparsity, and (``--heads``) the 75% model with half of every block's attention heads
removed too, exported with vitprune's exporter (parity-checked), then timed with
onnxruntime: 1 intra-op thread, warm-up, all models interleaved round by round, median and
p10/p90 at batch 1 and 8. The MAC ratio comes from torch-pruning's counter.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:vit_base_patch16_224")
    parser.add_argument("--sparsities", default="0.25,0.5,0.75")
    parser.add_argument("--heads", type=float, default=0.5, help="fraction of heads also removed from the sparsest model")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()

    from machine import describe

    import vitprune
    from vitprune.model.adapter import adapter_for
    from vitprune.export.onnx import export_onnx, ort_latency
    from vitprune.options import Budget
    from vitprune.prune.masks import Mask, from_budget
    from vitprune.prune.macs import count_macs_params
    from vitprune.prune.slicing import slice_sites

    torch.manual_seed(0)
    dense = vitprune.load_model(args.model)
    widths = adapter_for(dense).hidden_widths
    images = torch.randn(2, 3, *dense.patch_embed.img_size)
    models, head_sparsity = {"dense": dense}, {"dense": 0.0}
    sparsities = [float(x) for x in args.sparsities.split(",")]
    for s in sparsities:
        mask = from_budget({"mlp": [torch.rand(w, dtype=torch.float64) for w in widths]}, Budget(sparsity=s))
        models[f"s{s:.2f}"], head_sparsity[f"s{s:.2f}"] = slice_sites(dense, mask), 0.0
    if args.heads:
        head_scores = [torch.rand(n, dtype=torch.float64) for n in adapter_for(dense).head_counts]
        heads = from_budget({"mlp": head_scores}, Budget(sparsity=args.heads)).sites["mlp"]  # one fraction of every block's heads
        name = f"s{max(sparsities):.2f}"
        both = Mask({"mlp": mask.sites["mlp"], "heads": heads})
        models[f"{name}+h"], head_sparsity[f"{name}+h"] = slice_sites(dense, both), 1 - sum(heads.kept_counts) / sum(heads.widths)
    macs = {name: count_macs_params(m)[0] for name, m in models.items()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, m in models.items():
            paths[name] = Path(tmp) / f"{name}.onnx"
            export_onnx(m, paths[name], metadata={"name": name}, parity_images=images)
        lat = ort_latency(paths, tuple(images.shape[1:]), batch_sizes=(1, 8), threads=1, warmup=3, rounds=args.rounds, adaptive=False)
    rows = []
    for name in models:
        sparsity = 0.0 if name == "dense" else float(name[1:].removesuffix("+h"))
        row = {"model": name, "ffn_sparsity": sparsity, "head_sparsity": head_sparsity[name], "macs": macs[name],
               "mac_ratio": macs[name] / macs["dense"]}
        for bs in (1, 8):
            t = lat[f"batch{bs}"][name]
            d = lat[f"batch{bs}"]["dense"]["median_ms"]
            row[f"b{bs}_median_ms"], row[f"b{bs}_p10_ms"], row[f"b{bs}_p90_ms"] = t["median_ms"], t["p10_ms"], t["p90_ms"]
            row[f"b{bs}_latency_ratio"] = t["median_ms"] / d
            row[f"b{bs}_vs_mac_ideal"] = row[f"b{bs}_latency_ratio"] / row["mac_ratio"]
        rows.append(row)
    machine = describe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency_benchmark.json").write_text(json.dumps({"machine": machine, "model": args.model, "threads": 1,
                                                            "rounds": args.rounds, "rows": rows}, indent=2) + "\n")
    lines = [
        "# ORT CPU latency vs MAC-ideal, MLP- and head-pruned ViT-B/16",
        "",
        f"Command: `.venv/bin/python eval/bench_latency.py`. Model: `{args.model}` (224x224, 12 blocks, MLP 3072), "
        "every block's MLP sliced to the same width; the `heads removed` row also drops that fraction of every block's heads.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; onnxruntime CPUExecutionProvider, "
        f"1 intra-op thread, {args.rounds} interleaved rounds after warm-up.",
        "",
        "latency ratio = pruned median / dense median; vs MAC-ideal = latency ratio / MAC ratio (1.00 = exactly as fast as "
        "the MAC count promises; within 5% means 0.95..1.05).",
        "",
        "| FFN sparsity | heads removed | MACs (G) | MAC ratio | b1 median ms (p10..p90) | b1 latency ratio | b1 vs MAC-ideal | "
        "b8 median ms (p10..p90) | b8 latency ratio | b8 vs MAC-ideal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ffn_sparsity']:.2f} | {r['head_sparsity']:.2f} | {r['macs'] / 1e9:.2f} | {r['mac_ratio']:.3f} | "
            f"{r['b1_median_ms']:.1f} ({r['b1_p10_ms']:.1f}..{r['b1_p90_ms']:.1f}) | {r['b1_latency_ratio']:.3f} | {r['b1_vs_mac_ideal']:.3f} | "
            f"{r['b8_median_ms']:.1f} ({r['b8_p10_ms']:.1f}..{r['b8_p90_ms']:.1f}) | {r['b8_latency_ratio']:.3f} | {r['b8_vs_mac_ideal']:.3f} |"
        )
    (out / "latency_benchmark.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    mlp_rows = [r for r in rows if not r["head_sparsity"]]
    xs = [r["ffn_sparsity"] for r in mlp_rows]
    ax.plot(xs, [r["mac_ratio"] for r in mlp_rows], "k--", marker="s", label="MAC ratio (ideal)")
    ax.plot(xs, [r["b1_latency_ratio"] for r in mlp_rows], marker="o", label="ORT latency ratio, batch 1")
    ax.plot(xs, [r["b8_latency_ratio"] for r in mlp_rows], marker="o", label="ORT latency ratio, batch 8")
    for r in rows:
        if r["head_sparsity"]:
            ax.scatter([r["ffn_sparsity"]] * 3, [r["mac_ratio"], r["b1_latency_ratio"], r["b8_latency_ratio"]], marker="*", s=90,
                       c=["k", "C0", "C1"], label=f"+ {r['head_sparsity']:.0%} of heads removed (MAC, b1, b8)")
    ax.set_xlabel("FFN sparsity")
    ax.set_ylabel("pruned / dense")
    ax.set_title("ViT-B/16, ONNX Runtime CPU (1 thread)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_benchmark.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
