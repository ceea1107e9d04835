"""What compress and evaluate report: typed, versioned, with a JSON round trip, and rendered as Markdown, CSV and PNG.

``CompressReport`` is ``report.json`` of a compress run; ``SweepPoint`` is one line of an evaluate
sweep's ``points.jsonl`` (and of ``results.json``). Both carry ``format``; files written before
formats were versioned (vitprune 0.1: no ``format`` key) load as version 1, which has the same fields.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import __version__
from .accuracy import EvalResult
from .errors import UserError
from .export import INT8_FILE
from .files import atomic_write_json, atomic_write_text

REPORT_FORMAT = "vitprune.compress-report/2"
SWEEP_FORMAT = "vitprune.sweep/2"


def _known(cls: type, obj: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in obj.items() if k in names}


# ------------------------------------------------------------------------------ compress report
@dataclass
class DataSummary:
    spec: str
    classes: list[str]
    calibration_images: int
    evaluation_images: int
    overlap: int | None = 0  # calibration images also evaluated; None: unknown (records of unknown provenance)
    digest: str | None = None  # of the images read (calibration and evaluation), what the result is identified by


@dataclass
class MaskSummary:
    criterion: str
    kept_counts: list[int]
    widths: list[int]
    sparsity: float
    block_sparsity: list[float]
    head_criterion: str | None = None  # with --prune heads: how heads were ranked, and the heads kept of each block's
    kept_heads: list[int] | None = None
    heads: list[int] | None = None


@dataclass
class Counts:
    """A quantity of the dense and the pruned model (params, MACs per image) and their ratio."""

    dense: int
    pruned: int
    ratio: float
    target: float | None = None


@dataclass
class CompressReport:
    """Everything a compress run measured (``report.json``)."""

    options: dict[str, Any]
    output: str | None
    model: dict[str, Any]
    data: DataSummary
    mask: MaskSummary
    critical_units: dict[str, list[list[int]]] | None
    compensation: dict[str, Any]
    params: Counts
    macs: Counts
    accuracy: dict[str, EvalResult]
    finetune: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    discovery: dict[str, Any] | None = None  # the settings of the path records behind the mask, and where they are
    comparison: dict[str, Any] | None = None  # pruned - dense top-1 on the same images: 95% interval, per class, worst class
    program: dict[str, Any] | None = None  # the torch.export program (model.pt2) and the timm rebuild check of config.json
    fp16: dict[str, Any] | None = None  # model.fp16.onnx (--fp16)
    vitprune_version: str = __version__
    format: str = REPORT_FORMAT

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["accuracy"] = {k: v.to_json() for k, v in self.accuracy.items()}
        if self.macs.target is None:
            out["macs"]["target"] = None
        out["params"].pop("target")
        if self.data.digest is None:  # reports written before results were identified by their images read as they were
            out["data"].pop("digest")
        for key in ("comparison", "program", "fp16"):
            if out[key] is None:
                out.pop(key)
        if self.mask.kept_heads is None:  # MLP-only masks read as before heads existed
            for key in ("head_criterion", "kept_heads", "heads"):
                out["mask"].pop(key)
        return json.loads(json.dumps(out))

    @classmethod
    def from_json(cls, obj: Any, where: str = "report.json") -> "CompressReport":
        if not isinstance(obj, dict):
            raise UserError(f"{where} is not a vitprune compress report")
        fmt = obj.get("format", "vitprune.compress-report/1")
        if fmt not in (REPORT_FORMAT, "vitprune.compress-report/1"):
            raise UserError(f"{where} has format '{fmt}', which this vitprune {__version__} does not read; upgrade vitprune")
        try:
            return cls(
                options=obj["options"], output=obj.get("output"), model=obj["model"], data=DataSummary(**_known(DataSummary, obj["data"])),
                mask=MaskSummary(**_known(MaskSummary, obj["mask"])), critical_units=obj.get("critical_units"),
                compensation=obj["compensation"], params=Counts(**_known(Counts, obj["params"])),
                macs=Counts(**_known(Counts, obj["macs"])),
                accuracy={k: EvalResult.from_json(v) for k, v in obj["accuracy"].items()}, finetune=obj.get("finetune"),
                onnx=obj.get("onnx"), int8=obj.get("int8"), latency=obj.get("latency"), timings=obj.get("timings") or {},
                discovery=obj.get("discovery"), comparison=obj.get("comparison"), program=obj.get("program"), fp16=obj.get("fp16"), vitprune_version=obj.get("vitprune_version", "?"),
                format=fmt)
        except (KeyError, TypeError) as exc:
            raise UserError(f"{where} is damaged ({type(exc).__name__}: {exc}); re-create it with vitprune compress") from exc

    def markdown(self) -> str:
        return render_report(self.to_json())

    def headline(self) -> str:
        return headline(self.to_json())

    def summary(self) -> dict[str, Any]:
        """The result in one small JSON object (``--json``): where it is, what was kept, what it costs and scores."""
        r = self.to_json()
        acc = r["accuracy"]
        return {"command": "compress", "output": r["output"], "model": r["model"].get("spec"), "data": r["data"]["spec"],
                "criterion": r["mask"]["criterion"], "sparsity": r["mask"]["sparsity"], "kept": r["mask"]["kept_counts"],
                "kept_heads": r["mask"].get("kept_heads"), "params": r["params"], "macs": r["macs"],
                "top1": {k: v["top1"] for k, v in acc.items()}, "evaluation_images": r["data"]["evaluation_images"],
                "onnx": r["onnx"], "int8": r["int8"], "latency": r["latency"], "timings": r["timings"]}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _diff(comparison: dict | None) -> str:
    """A top-1 difference in points with its 95% interval (``accuracy.paired_difference``)."""
    if not comparison:
        return ""
    text = f"{100 * comparison['top1_diff']:+.2f} points"
    if comparison.get("ci95"):
        lo, hi = comparison["ci95"]
        text += f" (95% CI {100 * lo:+.2f} .. {100 * hi:+.2f})"
    return text


def render_report(r: dict) -> str:
    acc, m = r["accuracy"], r["mask"]
    lines = [
        "# vitprune compress report" + (f": `{r['output']}`" if r.get("output") else " (in memory)"),
        "",
        f"- model: `{r['model']['spec']}` ({r['model']['arch']}); data: `{r['data']['spec']}`",
        f"- criterion: {m['criterion']}; compensation: {r['compensation']['mode']}; "
        f"calibration images: {r['data']['calibration_images']}; "
        f"evaluation images: {r['data']['evaluation_images']} (disjoint from calibration)",
        f"- FFN sparsity: {_pct(m['sparsity'])} ({sum(m['kept_counts'])} of {sum(m['widths'])} hidden units kept)"
        + (f"; MAC target {r['macs']['target']:.3f} of dense, achieved {r['macs']['ratio']:.4f}" if r["macs"].get("target") else ""),
        *_discovery_lines(r.get("discovery")),
        "",
        "| | dense | pruned | ratio |",
        "|---|---|---|---|",
        f"| params | {r['params']['dense']:,} | {r['params']['pruned']:,} | {r['params']['ratio']:.3f} |",
        f"| MACs / image | {r['macs']['dense']:,} | {r['macs']['pruned']:,} | {r['macs']['ratio']:.3f} |",
        f"| top-1 | {_pct(acc['dense']['top1'])} | {_pct(acc['pruned']['top1'])} | {_diff(r.get('comparison'))} |",
        f"| mean true-class prob. | {acc['dense']['mean_true_prob']:.4f} | {acc['pruned']['mean_true_prob']:.4f} | |",
    ]
    if r.get("latency"):
        for key in ("batch1", "batch8"):
            d, p = r["latency"][key]["dense"], r["latency"][key]["pruned"]
            lines.append(f"| ORT CPU latency, {key.replace('batch', 'batch ')} (median ms, {r['latency']['threads']} thread) | "
                         f"{d['median_ms']:.3f} | {p['median_ms']:.3f} | {p['median_ms'] / d['median_ms']:.3f} |")
    lines += ["", "## Kept units per block", "", "| block | kept | of | sparsity |", "|---|---|---|---|"]
    lines += [f"| {b} | {k} | {w} | {_pct(s)} |" for b, (k, w, s) in enumerate(zip(m["kept_counts"], m["widths"], m["block_sparsity"]))]
    if m.get("kept_heads"):
        lines += ["", f"## Kept attention heads per block (ranked by {m['head_criterion']})", "", "| block | kept | of |", "|---|---|---|"]
        lines += [f"| {b} | {k} | {n} |" for b, (k, n) in enumerate(zip(m["kept_heads"], m["heads"]))]
    if r.get("finetune"):
        lines += _recovery_lines(r["finetune"], acc["dense"]["top1"])
    worst = (r.get("comparison") or {}).get("worst_class")
    lines += ["", "## Per class", ""]
    if worst:
        lines += [f"Worst class: {worst['name']} ({100 * worst['diff']:+.2f} points).", ""]
    lines += ["| class | name | n | dense top-1 | pruned top-1 | dense prob. | pruned prob. |", "|---|---|---|---|---|---|---|"]
    for d, p in zip(acc["dense"]["per_class"], acc["pruned"]["per_class"]):
        if d["n"]:
            lines.append(f"| {d['class']} | {d['name']} | {d['n']} | {_pct(d['top1'])} | {_pct(p['top1'])} | "
                         f"{d['mean_true_prob']:.4f} | {p['mean_true_prob']:.4f} |")
    if r.get("onnx"):
        lines += ["", f"ONNX: `model.onnx`, {r['onnx']['bytes']:,} bytes, opset {r['onnx']['opset']}, "
                  f"onnxruntime parity max |diff| {r['onnx']['parity_max_abs']:.2e} on {r['onnx']['parity_images']} held-out images."]
    program = r.get("program") or {}
    if program.get("file"):
        lines += ["", f"PyTorch program: `{program['file']}` (torch.export, dynamic batch up to {program['max_batch']}), "
                  f"{program['bytes']:,} bytes, reloaded and checked: max |diff| {program['parity_max_abs']:.2e} on "
                  f"{program['parity_images']} held-out images; loads with torch alone (README.md, the model card)."]
    elif program.get("error"):
        lines += ["", f"No PyTorch program: {program['error']}."]
    fp16 = r.get("fp16") or {}
    if fp16.get("bytes"):
        lines += ["", f"fp16: `model.fp16.onnx`, {fp16['bytes']:,} bytes, logits within {fp16['parity_max_abs']:.2e} of the fp32 "
                  f"model's on {fp16['parity_images']} held-out images ({fp16['provider']})."]
    elif fp16.get("reason"):
        lines += ["", f"No fp16 model: {fp16['reason']}."]
    if r.get("int8"):
        lines += ["", *_int8_lines(r)]
    return "\n".join(lines) + "\n"


def _recovery_lines(f: dict, dense: float) -> list[str]:
    """One-shot vs recovered top-1, and the checks on the held-out selection images that chose the weights kept."""
    lines = ["", f"## Recovery: {f['epochs']:g} epoch(s) of distillation from the dense model on {f['images']:,} training images",
             "", "| | dense | one-shot | recovered |", "|---|---|---|---|",
             f"| top-1 | {_pct(dense)} | {_pct(f['before']['top1'])} | {_pct(f['after']['top1'])} |"]
    if f.get("history"):
        best = f.get("best") or {}
        lines += ["", "| step | epoch | training loss | selection top-1 | |", "|---|---|---|---|---|"]
        lines += [f"| {h['step']} | {h['epoch']:g} | {h['loss']:.4f} | "
                  f"{_pct(h['top1_selection']) if h.get('top1_selection') is not None else '-'} | "
                  f"{'kept' if h == best else ''} |" for h in f["history"]]
    if f.get("seconds") is not None:
        lines += ["", f"{f['seconds']:.0f} s" + (f"; resumed at step {f['resumed_at_step']}" if f.get("resumed_at_step") else "")
                  + "."]
    return lines


def _discovery_lines(d: dict | None) -> list[str]:
    """The discovery behind the mask: its settings and, when this run discovered, what that cost."""
    if not d:
        return []
    line = (f"- discovery: {d.get('method', 'jas')} top-{d.get('topk')} paths, m = {d.get('steps')} steps, token scope "
            f"{d.get('token_scope')}, objective {d.get('objective')}, {d.get('precision')}")
    cost = d.get("cost")
    if cost and cost.get("flop_per_image") is not None:
        rate = f", {cost['images_per_s']:.3g} images/s" if cost.get("images_per_s") else ""
        line += f"; {cost['flop_per_image'] / 1e9:.3g} GFLOP per image ({cost['images']} images in {cost['seconds']:.1f} s{rate})"
    elif d.get("run") is not None or d.get("images") is not None:
        line += "; records reused (no discovery cost in this run)"
    return [line]


def _int8_lines(r: dict) -> list[str]:
    q = r["int8"]
    lines = [f"## int8 ({q['mode']} quantization, onnxruntime)", "",
             f"top-1 on {q['images']} evaluation images in onnxruntime: fp32 {_pct(q['top1_fp32'])}, int8 {_pct(q['top1_int8'])} "
             f"({q['drop_points']:+.2f} points lost)."]
    if not q["written"]:
        return [*lines, "", f"**Not written:** {q['reason']}."]
    lines += ["", "| | pruned fp32 (`model.onnx`) | pruned int8 (`model.int8.onnx`) |", "|---|---|---|",
              f"| size on disk | {r['onnx']['bytes']:,} bytes | {q['bytes']:,} bytes |",
              f"| top-1 (onnxruntime) | {_pct(q['top1_fp32'])} | {_pct(q['top1_int8'])} |"]
    lat = r.get("latency") or {}
    for key in ("batch1", "batch8"):
        if key in lat and "pruned_int8" in lat[key]:
            d = lat[key]["dense"]["median_ms"]
            lines.append(f"| ORT CPU latency, {key.replace('batch', 'batch ')} (median ms; x dense fp32) | "
                         f"{lat[key]['pruned']['median_ms']:.3f} (x{d / lat[key]['pruned']['median_ms']:.2f}) | "
                         f"{lat[key]['pruned_int8']['median_ms']:.3f} (x{d / lat[key]['pruned_int8']['median_ms']:.2f}) |")
    return lines


def headline(r: dict) -> str:
    acc, m = r["accuracy"], r["mask"]
    int8 = r.get("int8") or {}
    program = r.get("program") or {}
    files = ["model.safetensors", *(["model.pt2"] if program.get("file") else []), *(["model.onnx"] if r.get("onnx") else []),
             *([INT8_FILE] if int8.get("written") else []), *(["model.fp16.onnx"] if (r.get("fp16") or {}).get("bytes") else []),
             "mask.json", "report.json", "report.md",
             *(["config.json", "README.md"] if program else [])]
    parts = [
        f"wrote {r['output']}/ ({', '.join(files)})" if r.get("output") else
        "in memory, nothing written (result.save(folder) writes the checkpoint, result.export_onnx(path) the ONNX model)",
        f"FFN sparsity {_pct(m['sparsity'])}: kept {m['kept_counts']} of {m['widths']}"
        + (f"; heads kept {m['kept_heads']} of {m['heads']}" if m.get("kept_heads") else ""),
        f"params {r['params']['dense']:,} -> {r['params']['pruned']:,}; MACs {r['macs']['dense']:,} -> {r['macs']['pruned']:,} "
        f"(x{r['macs']['ratio']:.3f})",
        f"top-1 {_pct(acc['dense']['top1'])} -> {_pct(acc['pruned']['top1'])} on {r['data']['evaluation_images']} held-out images"
        + (f": {_diff(r['comparison'])}" if r.get("comparison") else "")
        + (f"; worst class {r['comparison']['worst_class']['name']} {100 * r['comparison']['worst_class']['diff']:+.2f}"
           if (r.get("comparison") or {}).get("worst_class") else ""),
    ]
    if r.get("finetune"):
        f = r["finetune"]
        parts.append(f"recovery ({f['epochs']:g} epoch(s)): top-1 one-shot {_pct(f['before']['top1'])} -> recovered "
                     f"{_pct(f['after']['top1'])}" + (f" (best check at epoch {f['best']['epoch']:g})" if f.get("best") else ""))
    cost = (r.get("discovery") or {}).get("cost")
    if cost and cost.get("flop_per_image") is not None:
        parts.append(f"discovery (m = {r['discovery']['steps']}): {cost['images']} images, {cost['flop_per_image'] / 1e9:.3g} GFLOP per "
                     f"image" + (f", {cost['images_per_s']:.3g} images/s" if cost.get("images_per_s") else ""))
    if r.get("latency"):
        d, p = r["latency"]["batch1"]["dense"]["median_ms"], r["latency"]["batch1"]["pruned"]["median_ms"]
        d8, p8 = r["latency"]["batch8"]["dense"]["median_ms"], r["latency"]["batch8"]["pruned"]["median_ms"]
        parts.append(f"ORT CPU latency batch 1: {d:.3f} -> {p:.3f} ms; batch 8: {d8:.3f} -> {p8:.3f} ms")
    if int8.get("written"):
        lat = r["latency"]
        parts.append(f"int8 ({int8['mode']}): top-1 {_pct(int8['top1_int8'])} (fp32 ONNX {_pct(int8['top1_fp32'])}), "
                     f"{int8['bytes']:,} bytes; ORT CPU latency batch 1: {lat['batch1']['pruned_int8']['median_ms']:.3f} ms, "
                     f"batch 8: {lat['batch8']['pruned_int8']['median_ms']:.3f} ms")
    return "\n".join(parts)


# --------------------------------------------------------------------------------- sweep points
KEY_FIELDS = ("criterion", "compensate", "seed", "target", "keep_topk", "target_macs", "token_scope", "objective", "aggregation",
              "head_criterion")


@dataclass
class SweepPoint:
    """One point of an evaluate sweep: the setting (criterion, discovery variant, compensation, budget, seed)
    and what it measured. ``target`` is the asked sparsity (None for keep-topk and MAC-budget points)."""

    criterion: str
    compensate: str
    seed: int
    target: float | None
    keep_topk: int | None
    token_scope: str | None
    objective: str | None
    aggregation: str | None
    sparsity: float
    kept: list[int]
    top1: float
    mean_true_prob: float
    compensation_s: float
    macs: int
    params: int
    macs_ratio: float
    params_ratio: float
    target_macs: float | None = None  # absent from points written before MAC budgets existed
    top1_selection: float | None = None  # after any recovery
    top1_selection_oneshot: float | None = None
    ridges: list[float | None] | None = None
    top1_oneshot: float | None = None
    mean_true_prob_oneshot: float | None = None
    finetune_epochs: float | None = None
    recovery_best_epoch: float | None = None
    recovery_s: float | None = None
    ort_b1_ms: float | None = None
    ort_b1_dense_ms: float | None = None
    head_criterion: str | None = None  # points that prune heads too (--prune mlp,heads)
    kept_heads: list[int] | None = None
    top1_diff_ci95: list[float] | None = None  # top-1 - the dense model's, on the same images: its 95% interval
    worst_class_drop: float | None = None  # the largest per-class top-1 drop against the dense model
    model_fingerprint: str | None = None  # what the point was made from (the sweep's model and images)
    data_digest: str | None = None

    @property
    def key(self) -> str:
        return point_key(self.to_json())

    def to_json(self) -> dict[str, Any]:
        optional = {f.name for f in fields(self) if f.default is None}
        return {k: v for k, v in asdict(self).items() if v is not None or k not in optional}

    @classmethod
    def from_json(cls, obj: Any, where: str = "a sweep point") -> "SweepPoint":
        try:
            return cls(**_known(cls, obj))
        except TypeError as exc:
            raise UserError(f"{where} is not a vitprune sweep point ({exc}); re-create the sweep (--force)") from exc


def point_key(p: dict) -> str:
    """The identity of a point (its setting, not its measurements), for resuming a sweep."""
    return json.dumps({k: p.get(k) for k in KEY_FIELDS}, sort_keys=True)


def read_results(path: Path) -> tuple[dict, list[SweepPoint]]:
    """(settings, points) of a sweep's results.json, any version."""
    from .files import read_json

    obj = read_json(path)
    if not isinstance(obj, dict) or "points" not in obj:
        raise UserError(f"{path} is not the results.json of a vitprune evaluate sweep")
    return obj.get("settings", {}), [SweepPoint.from_json(p, f"{path} point {n}") for n, p in enumerate(obj["points"])]


CSV_COLUMNS = ("criterion", "token_scope", "objective", "aggregation", "head_criterion", "compensate", "seed", "target", "keep_topk",
               "target_macs", "sparsity", "kept", "kept_heads", "params", "params_ratio", "macs", "macs_ratio", "top1", "mean_true_prob", "top1_oneshot",
               "mean_true_prob_oneshot", "finetune_epochs", "ort_b1_ms", "ort_b1_dense_ms", "compensation_s", "top1_selection",
               "worst_class_drop", "top1_diff_ci95")


def write_sweep_outputs(points: list[SweepPoint], out: Path, settings: dict, title: str) -> None:
    """results.csv, results.json, results.md and accuracy_vs_sparsity.png of a sweep."""
    rows = [p.to_json() for p in points]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "kept": json.dumps(r["kept"]), "kept_heads": json.dumps(r["kept_heads"]) if r.get("kept_heads") else ""})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_json(out / "results.json", {"format": SWEEP_FORMAT, "settings": settings, "points": rows})
    atomic_write_text(out / "results.md", render_table(rows))
    plot(rows, out / "accuracy_vs_sparsity.png", title=title)


def method(r: dict) -> str:
    """A point's criterion with its discovery variant and, pruning heads too, its head criterion, e.g.
    ``jas[all,kl,abs]`` or ``wanda + heads:ig``: what tells two points of one budget apart, seeds aside."""
    var = [r.get(k) for k in ("token_scope", "objective", "aggregation") if r.get(k) is not None]
    return r["criterion"] + (f"[{','.join(var)}]" if var else "") + (f" + heads:{r['head_criterion']}" if r.get("head_criterion") else "")


def summarize(rows: list[dict]) -> list[dict]:
    """Average random seeds: one line per (method, compensation, budget) with mean and spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((method(r), r["compensate"], r["target"], r["keep_topk"], r.get("target_macs")), []).append(r)
    out = []
    for (name, comp, target, k, macs), rs in groups.items():
        top1 = [r["top1"] for r in rs]
        out.append({"criterion": rs[0]["criterion"], "method": name, "compensate": comp, "target": target, "keep_topk": k,
                    "target_macs": macs,
                    "sparsity": statistics.mean(r["sparsity"] for r in rs), "macs_ratio": statistics.mean(r["macs_ratio"] for r in rs),
                    "top1": statistics.mean(top1), "top1_min": min(top1), "top1_max": max(top1), "n": len(rs),
                    "mean_true_prob": statistics.mean(r["mean_true_prob"] for r in rs),
                    "top1_oneshot": statistics.mean(r["top1_oneshot"] for r in rs) if "top1_oneshot" in rs[0] else None,
                    "top1_selection": statistics.mean(r["top1_selection"] for r in rs) if "top1_selection" in rs[0] else None,
                    "ci95": rs[0].get("top1_diff_ci95") if len(rs) == 1 else None,
                    "worst": min((r["worst_class_drop"] for r in rs if r.get("worst_class_drop") is not None), default=None)})
    return out


def _budget(p: dict) -> str:
    if p.get("keep_topk"):
        return f"K={p['keep_topk']}"
    return f"{p['target_macs']:.2f} MACs" if p.get("target_macs") is not None else f"{p['target']:.2f}"


def label(s: dict) -> str:
    """Method + compensation, as the plot legend and the progress lines name a point."""
    return method(s) + ("" if s["compensate"] == "none" else f" + {s['compensate']}")


def render_table(rows: list[dict]) -> str:
    summary = summarize(rows)
    has_ft = any(s["top1_oneshot"] is not None for s in summary)
    head = ("| criterion | compensate | budget | achieved sparsity | MACs ratio | top-1 | (min..max over seeds) | vs dense, 95% CI | "
            "worst class | mean true-class prob. |")
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    if has_ft:
        head += " one-shot top-1 |"
        sep += "---|"
    lines = [head, sep]
    for s in summary:
        budget = _budget(s)
        spread = f"{100 * s['top1_min']:.2f}..{100 * s['top1_max']:.2f}" if s["n"] > 1 else ""
        ci = f"{100 * s['ci95'][0]:+.2f} .. {100 * s['ci95'][1]:+.2f}" if s.get("ci95") else ""
        worst = f"{100 * s['worst']:+.2f}" if s.get("worst") is not None else ""
        line = (f"| {s['method']} | {s['compensate']} | {budget} | {s['sparsity']:.3f} | "
                f"{s['macs_ratio']:.3f} | {100 * s['top1']:.2f}% | {spread} | {ci} | {worst} | {s['mean_true_prob']:.4f} |")
        if has_ft:
            line += f" {100 * s['top1_oneshot']:.2f}% |" if s["top1_oneshot"] is not None else " |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Left: one-shot top-1 vs sparsity with MACs on a twin axis; middle: top-1 after recovery, or the
    mean true-class probability when the sweep has no recovery; right (when measured): the worst class's top-1 drop
    against the dense model, which a mean hides. One colour per method (criterion and discovery variant, tab20), one
    line style per compensation: none dotted, mean dashed, lsq solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    recovered = any(s["top1_oneshot"] is not None for s in summary)
    dense = next((s for s in summary if s["criterion"] == "dense"), None)
    worst = any(s.get("worst") is not None for s in summary)
    fig, axes = plt.subplots(1, 3 if worst else 2, figsize=(20 if worst else 14, 5.5))
    ax, ax2 = axes[0], axes[1]
    lines: dict[tuple[str, str], list[dict]] = {}
    for s in summary:
        if s["criterion"] != "dense":
            lines.setdefault((s["method"], s["compensate"]), []).append(s)
    cmap = plt.get_cmap("tab20")
    names = sorted({name for name, _ in lines})
    styles = {"none": ":", "mean": "--", "lsq": "-"}
    oneshot = "top1_oneshot" if recovered else "top1"
    for (name, comp), pts in sorted(lines.items()):
        pts.sort(key=lambda s: s["sparsity"])
        key = label(pts[0])
        color = cmap(names.index(name) % 20)
        style = styles[comp]
        xs = [s["sparsity"] for s in pts]
        ax.plot(xs, [100 * s[oneshot] for s in pts], style, marker="o", ms=4, color=color, label=key)
        if recovered:
            ax2.plot(xs, [100 * s["top1"] for s in pts], style, marker="o", ms=4, color=color, label=key)
            if any(s["n"] > 1 for s in pts):
                ax2.fill_between(xs, [100 * s["top1_min"] for s in pts], [100 * s["top1_max"] for s in pts], color=color, alpha=0.15)
        else:
            if any(s["n"] > 1 for s in pts):
                ax.fill_between(xs, [100 * s["top1_min"] for s in pts], [100 * s["top1_max"] for s in pts], color=color, alpha=0.15)
            ax2.plot(xs, [s["mean_true_prob"] for s in pts], style, marker="o", ms=4, color=color, label=key)
        if worst:
            drops = [(x, 100 * s["worst"]) for x, s in zip(xs, pts) if s.get("worst") is not None]
            axes[2].plot([x for x, _ in drops], [y for _, y in drops], style, marker="o", ms=4, color=color, label=key)
    if dense:
        ax.axhline(100 * dense["top1"], color="black", lw=1, ls=":", label="dense")
        ax2.axhline(100 * dense["top1"] if recovered else dense["mean_true_prob"], color="black", lw=1, ls=":", label="dense")
    mac_pts = sorted((s["sparsity"], s["macs_ratio"]) for s in summary)
    twin = ax.twinx()
    twin.plot([x for x, _ in mac_pts], [y for _, y in mac_pts], color="grey", lw=3, alpha=0.3)
    twin.set_ylabel("MACs, fraction of dense (grey band)")
    twin.set_ylim(0, 1.05)
    ax.set_xlabel("FFN sparsity (fraction of MLP hidden units removed)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"One-shot — {title}")
    ax2.set_xlabel("FFN sparsity")
    if recovered:
        ax2.set_ylabel("top-1 accuracy (%)")
        ax2.set_title("After recovery (distillation from the dense model)")
    else:
        ax2.set_ylabel("mean true-class probability")
        ax2.set_title("Mean true-class probability")
    if worst:
        axes[2].axhline(0, color="black", lw=1, ls=":")
        axes[2].set_xlabel("FFN sparsity")
        axes[2].set_ylabel("worst class: top-1 change vs dense (points)")
        axes[2].set_title("Worst class")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


__all__ = ["CompressReport", "DataSummary", "MaskSummary", "Counts", "SweepPoint", "point_key", "read_results",
           "write_sweep_outputs", "render_report", "render_table", "headline", "plot", "summarize", "REPORT_FORMAT", "SWEEP_FORMAT"]
