"""int8 accuracy on the zoo: pruned fp32 ONNX vs its static and dynamic int8 models, and a MAC budget on the demo.

    .venv/bin/python eval/int8_zoo.py      # writes eval/results/int8_zoo.{json,md}

For every zoo model and 50 / 75 / 90% FFN sparsity: `vitprune compress` with the shipped criterion and
compensation, 16 calibration images per class (one discovery run per model shared through --paths) and
--quantize int8 in both modes, the gate opened
(--max-int8-drop 100) so that every drop is measured; top-1 of each ONNX model in onnxruntime on
the 10k test images. Then `--target-macs 0.5` on the demo, allocated per block, globally by scores
normalised per block, and globally by raw scores: achieved MACs and top-1 at equal MACs.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from zoo import MODELS, run_cli  # noqa: E402

SPARSITIES = (0.5, 0.75, 0.9)
PER_CLASS = 16  # calibration images per class, pinned: what is measured here is int8 against fp32


def compress(model: str, out: Path, extra: list[str]) -> dict:
    seconds, rc = run_cli(["compress", "--model", model, "--data", "demo", "--per-class", str(PER_CLASS), "--quiet",
                           "--out", str(out), *extra])
    if rc != 0:
        raise SystemExit(f"compress {model} {' '.join(extra)} failed with exit {rc}")
    return json.loads((out / "report.json").read_text())


def discover(model: str, out: Path) -> list[str]:
    """One discovery run per model with the shipped settings, shared by its compress runs (``--paths``);
    nothing when the --sparsity default is not a path criterion."""
    from vitprune.defaults import JAS_DEFAULT, SPARSITY_DEFAULT

    if SPARSITY_DEFAULT["criterion"] not in ("jas", "jas-freq"):
        return []
    _, rc = run_cli(["discover", "--model", model, "--data", "demo", "--per-class", str(PER_CLASS), "--topk", "5",
                     "--token-scope", JAS_DEFAULT["token_scope"], "--objective", JAS_DEFAULT["objective"], "--quiet",
                     "--out", str(out)])
    if rc != 0:
        raise SystemExit(f"discover {model} failed with exit {rc}")
    return ["--paths", str(out)]


def main() -> None:
    from vitprune.defaults import SPARSITY_DEFAULT

    rows, macs_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {model: discover(model, tmp / f"paths-{model.replace(':', '-')}") for model in MODELS}
        for model in MODELS:
            for s in SPARSITIES:
                row = {"model": model, "sparsity": s, **SPARSITY_DEFAULT}
                for mode in ("static", "dynamic"):
                    out = tmp / f"{model.replace(':', '-')}-{s}-{mode}"
                    r = compress(model, out, [*paths[model], "--sparsity", str(s), "--quantize", "int8", "--int8-mode", mode,
                                              "--max-int8-drop", "100", "--latency-rounds", "5"])
                    row.update(top1_torch=r["accuracy"]["pruned"]["top1"], top1_fp32=r["int8"]["top1_fp32"],
                               **{f"top1_{mode}": r["int8"]["top1_int8"], f"drop_{mode}": r["int8"]["drop_points"],
                                  f"bytes_{mode}": r["int8"]["bytes"]}, bytes_fp32=r["onnx"]["bytes"])
                rows.append(row)
                print(row, flush=True)
        for scope in ("per-block", "global", "global-raw"):
            r = compress("demo", tmp / f"macs-{scope}", [*paths["demo"], "--target-macs", "0.5", "--scope", scope, "--no-export"])
            macs_rows.append({"scope": scope, "target": 0.5, "achieved": r["macs"]["ratio"], "top1": r["accuracy"]["pruned"]["top1"],
                              "dense_top1": r["accuracy"]["dense"]["top1"], "kept": r["mask"]["kept_counts"],
                              "sparsity": r["mask"]["sparsity"]})
            print(macs_rows[-1], flush=True)
    result = {"defaults": SPARSITY_DEFAULT, "int8": rows, "target_macs": macs_rows}
    out = HERE / "results"
    (out / "int8_zoo.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# int8 on the zoo and a MAC budget on the demo (`eval/int8_zoo.py`)", "",
             f"`vitprune compress` with the shipped criterion and compensation ({SPARSITY_DEFAULT['criterion']} + {SPARSITY_DEFAULT['compensate']}), "
             f"{PER_CLASS} calibration images per class; "
             "top-1 (%) in onnxruntime on the 10k test images.", "",
             "| model | FFN sparsity | pruned fp32 | int8 static | drop | int8 dynamic | drop | size fp32 / static / dynamic (kB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {int(100 * r['sparsity'])}% | {100 * r['top1_fp32']:.2f} | {100 * r['top1_static']:.2f} | "
                     f"{r['drop_static']:+.2f} | {100 * r['top1_dynamic']:.2f} | {r['drop_dynamic']:+.2f} | "
                     f"{r['bytes_fp32'] // 1000} / {r['bytes_static'] // 1000} / {r['bytes_dynamic'] // 1000} |")
    lines += ["", "`--target-macs 0.5` on the demo (dense top-1 "
              f"{100 * macs_rows[0]['dense_top1']:.2f}%):", "",
              "| allocation (--scope) | achieved MACs | FFN sparsity | top-1 | kept units per block |", "|---|---|---|---|---|"]
    for r in macs_rows:
        lines.append(f"| {r['scope']} | {r['achieved']:.4f} | {100 * r['sparsity']:.1f}% | {100 * r['top1']:.2f} | {r['kept']} |")
    (out / "int8_zoo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
