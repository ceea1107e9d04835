"""What shipping buys on a CPU: FFN pruning, int8, and both, against their ideals (ViT-B/16, ONNX Runtime).

    .venv/bin/python eval/bench_int8.py      # writes eval/results/int8_benchmark.{json,md}

Random-init vit_base_patch16_224 (weights do not change timing), every block's MLP sliced to 75%
FFN sparsity, exported with vitprune's exporter, and quantized with vitprune's int8 path (static
QDQ calibrated on random images, and dynamic). ONNX Runtime, 1 pinned intra-op thread, warm-up,
all models interleaved round by round, median and p10/p90 at batch 1 and 8.

Ideals: pruning = the MAC ratio (torch-pruning's counter); int8 = the speed-up ONNX Runtime gets
on this CPU for an int8 matrix product of ViT-B/16's MLP shape (197 x 768 @ 768 x 3072, the same
quantization) over its fp32 one; both = their product.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def gemm_models(folder: Path) -> dict[str, Path]:
    """fp32 and int8 (static QDQ, dynamic) ONNX models of one 197x768 @ 768x3072 matrix product."""
    from vitprune.export.quantize import quantize

    class Gemm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(768, 3072)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    path = folder / "gemm.onnx"
    x = torch.randn(1, 197, 768)
    torch.onnx.export(Gemm().eval(), (x,), str(path), input_names=["pixel_values"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), dynamo=True, external_data=False)
    out = {"fp32": path}
    for mode in ("static", "dynamic"):
        out[mode] = folder / f"gemm-{mode}.onnx"
        quantize(path, out[mode], mode=mode, calibration=torch.randn(16, 197, 768), metadata={})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:vit_base_patch16_224")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()

    from machine import describe

    import vitprune
    from vitprune.model.adapter import adapter_for
    from vitprune.export.onnx import export_onnx, ort_latency
    from vitprune.options import Budget
    from vitprune.prune.masks import from_budget
    from vitprune.export.quantize import quantize
    from vitprune.prune.macs import count_macs_params
    from vitprune.prune.slicing import slice_sites

    torch.manual_seed(0)
    dense = vitprune.load_model(args.model)
    widths = adapter_for(dense).hidden_widths
    pruned = slice_sites(dense, from_budget({"mlp": [torch.rand(w, dtype=torch.float64) for w in widths]}, Budget(sparsity=args.sparsity)))
    shape = (3, *dense.patch_embed.img_size)
    calib = torch.randn(16, *shape)
    macs = {"dense": count_macs_params(dense)[0], "pruned": count_macs_params(pruned)[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {}
        for name, model in (("dense", dense), ("pruned", pruned)):
            files[f"{name}-fp32"] = tmp / f"{name}.onnx"
            export_onnx(model, files[f"{name}-fp32"], metadata={}, parity_images=calib[:2])
            for mode in ("static", "dynamic"):
                files[f"{name}-int8-{mode}"] = tmp / f"{name}-{mode}.onnx"
                quantize(files[f"{name}-fp32"], files[f"{name}-int8-{mode}"], mode=mode, calibration=calib, metadata={})
        sizes = {k: p.stat().st_size for k, p in files.items()}
        latency = ort_latency(files, shape, rounds=args.rounds, adaptive=False)
        gemm = ort_latency(gemm_models(tmp), (197, 768), rounds=200, batch_sizes=(1,), adaptive=False)
    ideal_int8 = {m: gemm["batch1"]["fp32"]["median_ms"] / gemm["batch1"][m]["median_ms"] for m in ("static", "dynamic")}
    ideal_prune = macs["dense"] / macs["pruned"]
    rows = []
    for bs in ("batch1", "batch8"):
        base = latency[bs]["dense-fp32"]["median_ms"]
        for mode in ("static", "dynamic"):
            for step, key, ideal in (("pruning alone", "pruned-fp32", ideal_prune), (f"int8 alone ({mode})", f"dense-int8-{mode}", ideal_int8[mode]),
                                     (f"pruning + int8 ({mode})", f"pruned-int8-{mode}", ideal_prune * ideal_int8[mode])):
                if mode == "dynamic" and step == "pruning alone":
                    continue
                speed = base / latency[bs][key]["median_ms"]
                rows.append({"batch": bs, "step": step, "model": key, "median_ms": latency[bs][key]["median_ms"],
                             "speedup": speed, "ideal": ideal, "of_ideal": speed / ideal})
    result = {"machine": describe(), "model": args.model, "sparsity": args.sparsity, "macs": macs, "bytes": sizes,
              "latency": latency, "gemm_latency": gemm, "ideal_int8": ideal_int8, "ideal_pruning": ideal_prune, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = ["# Pruning + int8 on ONNX Runtime CPU (`eval/bench_int8.py`)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, torch {m['torch']}; ONNX Runtime, 1 intra-op thread, "
             f"{args.rounds} interleaved rounds, medians. Model: `{args.model}` (random init), {int(100 * args.sparsity)}% FFN "
             f"sparsity per block (MACs x{macs['pruned'] / macs['dense']:.3f}).", "",
             f"Ideals: pruning {ideal_prune:.2f}x (MAC ratio); int8 {ideal_int8['static']:.2f}x static / {ideal_int8['dynamic']:.2f}x "
             "dynamic (measured int8 over fp32 speed-up of a 197x768 @ 768x3072 matrix product on this CPU).", "",
             "| batch | step | median ms | speed-up vs dense fp32 | ideal | of ideal |", "|---|---|---|---|---|---|",
             f"| 1 | dense fp32 | {latency['batch1']['dense-fp32']['median_ms']:.1f} | 1.00 | | |",
             f"| 8 | dense fp32 | {latency['batch8']['dense-fp32']['median_ms']:.1f} | 1.00 | | |"]
    for r in sorted(rows, key=lambda r: r["batch"]):
        lines.append(f"| {r['batch'][5:]} | {r['step']} | {r['median_ms']:.1f} | {r['speedup']:.2f} | {r['ideal']:.2f} | {r['of_ideal']:.2f} |")
    lines += ["", "| model | bytes |", "|---|---|", *[f"| {k} | {v:,} |" for k, v in sizes.items()]]
    (out / "int8_benchmark.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
