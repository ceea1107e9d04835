"""A result folder in the Hugging Face Hub / timm layout, readable without vitprune: ``config.json`` (timm's layout —
architecture, ``num_classes``, ``model_args``, ``pretrained_cfg``, ``label_names`` — plus the pruned shape under
``vitprune``) beside ``model.safetensors``, and a ``README.md`` model card.

timm cannot express per-block MLP widths or head counts, so ``timm.create_model`` alone builds the dense shape;
``REBUILD`` is the handful of lines that give every parameter its saved shape (and every attention its head count).
It is run on every folder written (``rebuilds``): the card shows it where it gives the model's outputs, and points to
``model.pt2`` / ``vitprune.load_model`` where it does not (an attention vitprune replaced by an equivalent module).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from . import HUB_CONFIG_FILE, INT8_FILE, MODEL_CARD_FILE, ONNX_FILE, PROGRAM_FILE


# The rebuild with timm + safetensors alone (README "Loading without vitprune" shows these very lines).
REBUILD = '''\
import json, timm, torch
from safetensors.torch import load_file

cfg = json.load(open(f"{folder}/config.json"))
model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"], **cfg["model_args"])
state = load_file(f"{folder}/model.safetensors")
for name, tensor in state.items():  # pruned widths: every parameter takes its saved shape
    module, _, attr = name.rpartition(".")
    if getattr(model.get_submodule(module), attr, None) is None or getattr(model.get_submodule(module), attr).shape != tensor.shape:
        setattr(model.get_submodule(module), attr, torch.nn.Parameter(tensor))
for block, heads in zip(model.blocks, cfg["vitprune"]["attn_heads"] or []):  # pruned heads
    attn = block.attn
    attn.num_heads, attn.attn_dim = heads, heads * attn.head_dim
model.load_state_dict(state)
model.eval()
'''


def hub_config(model: nn.Module, meta: dict[str, Any], *, rebuilds: bool) -> dict[str, Any]:
    """``config.json`` of a pruned checkpoint: timm's layout (``timm.models.load_model_config_from_path`` reads it)
    and, under ``vitprune``, the per-block widths and head counts, where it came from and how to rebuild it."""
    from ..model import SITE_KINDS
    from ..model.adapter import WEIGHT_SOURCE_KEYS, adapter_for

    adapter = adapter_for(model)
    cfg = {k: v for k, v in (meta.get("pretrained_cfg") or {}).items() if k not in WEIGHT_SOURCE_KEYS and k != "architecture"}
    num_classes = adapter.num_classes
    cfg.update(num_classes=num_classes, custom_load=False)
    args = {k: v for k, v in (meta.get("model_args") or {}).items() if k != "num_classes"}
    shape = {site.checkpoint_key: meta.get(site.checkpoint_key) for site in (SITE_KINDS.load(k) for k in SITE_KINDS.names())}
    return {"architecture": meta["arch"], "num_classes": num_classes, "num_features": int(getattr(model, "num_features", 0)) or None,
            "global_pool": getattr(model, "global_pool", None) if isinstance(getattr(model, "global_pool", None), str) else None,
            "model_args": args, "pretrained_cfg": cfg, "label_names": list(meta.get("class_names") or []),
            "vitprune": {**shape, "source_model": (meta.get("source_model") or {}).get("spec"), "criterion": meta.get("criterion"),
                         "sparsity": meta.get("sparsity"), "weights_fingerprint": meta.get("weights_fingerprint"),
                         "timm_rebuild": rebuilds, "vitprune_version": __version__}}


def rebuild(folder: Path) -> nn.Module:
    """The model of ``folder`` rebuilt by ``REBUILD`` (timm and safetensors, no vitprune code)."""
    scope: dict[str, Any] = {"folder": str(folder)}
    exec(compile(REBUILD, "<vitprune.export.hub.REBUILD>", "exec"), scope)  # noqa: S102 - our own constant
    return scope["model"]


@torch.no_grad()
def rebuilds(folder: Path, model: nn.Module, images: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether ``REBUILD`` gives ``model``'s outputs on ``images`` from the files in ``folder``."""
    try:
        rebuilt = rebuild(folder)
        got = rebuilt(images.float().cpu())
    except Exception:
        return False
    device = next(model.parameters()).device
    want = model.eval().cpu().float()(images.float().cpu())
    model.to(device)
    return got.shape == want.shape and float((got - want).abs().max()) <= atol


def write_hub_files(folder: Path, model: nn.Module, meta: dict[str, Any], images: torch.Tensor) -> dict[str, Any]:
    """``config.json`` in ``folder`` (after ``model.safetensors``): checked first with a rebuild from the folder."""
    from ..files import atomic_write_json

    folder = Path(folder)
    atomic_write_json(folder / HUB_CONFIG_FILE, hub_config(model, meta, rebuilds=True))
    ok = rebuilds(folder, model, images)
    if not ok:
        atomic_write_json(folder / HUB_CONFIG_FILE, hub_config(model, meta, rebuilds=False))
    return {"timm_rebuild": ok}


def model_card(report: dict[str, Any], meta: dict[str, Any], *, command: str, files: list[str], timm_rebuild: bool) -> str:
    """``README.md`` of a result folder: what the model is, what was removed, what it scores against the dense model on
    which images, what it costs, how to load it, how it was made, and under which license."""
    acc, mask = report["accuracy"], report["mask"]
    source = (meta.get("source_model") or {}).get("spec") or report["model"].get("spec")
    license_ = (meta.get("pretrained_cfg") or {}).get("license")
    front = ["---", "library_name: timm", "pipeline_tag: image-classification",
             "tags: [image-classification, timm, vitprune, pruned, vision-transformer]"]
    if license_:
        front.append(f"license: {license_}")
    if str(source).startswith("hf-hub:"):  # a Hub model id: the Hub links the two
        front.append(f"base_model: {json.dumps(str(source)[len('hf-hub:'):])}")
    front.append("---")
    comparison = report.get("comparison") or {}
    ci = comparison.get("ci95")
    diff = 100 * (acc["pruned"]["top1"] - acc["dense"]["top1"])
    heads = mask.get("kept_heads")
    lines = [*front, "", f"# {meta['arch']}, pruned by vitprune", "",
             f"A structurally pruned copy of `{source}` ({meta['arch']}): {mask['criterion']} kept "
             f"{sum(mask['kept_counts'])} of {sum(mask['widths'])} MLP hidden units"
             + (f" and {sum(heads)} of {sum(mask['heads'])} attention heads" if heads else "")
             + f"; {report['macs']['ratio']:.3f}x the dense model's MACs, {report['params']['ratio']:.3f}x its parameters.", "",
             "| | dense | pruned |", "|---|---|---|",
             f"| top-1 on {report['data']['evaluation_images']:,} held-out images of `{report['data']['spec']}` | "
             f"{100 * acc['dense']['top1']:.2f}% | {100 * acc['pruned']['top1']:.2f}% ({diff:+.2f} points"
             + (f", 95% CI {100 * ci[0]:+.2f} .. {100 * ci[1]:+.2f}" if ci else "") + ") |",
             f"| MACs per image | {report['macs']['dense']:,} | {report['macs']['pruned']:,} |",
             f"| parameters | {report['params']['dense']:,} | {report['params']['pruned']:,} |"]
    latency = report.get("latency") or {}
    for key in ("batch1", "batch8"):
        if key in latency:
            lines.append(f"| onnxruntime CPU latency, {key.replace('batch', 'batch ')} (median ms, {latency.get('threads', 1)} thread) | "
                         f"{latency[key]['dense']['median_ms']:.3f} | {latency[key]['pruned']['median_ms']:.3f} |")
    worst = comparison.get("worst_class")
    if worst:
        lines += ["", f"Largest per-class change: {worst['name']} {100 * worst['diff']:+.2f} points (report.md has every class)."]
    if report.get("finetune"):
        f = report["finetune"]
        lines += ["", f"Recovered by {f['epochs']:g} epoch(s) of distillation from the dense model: one-shot "
                  f"{100 * f['before']['top1']:.2f}% -> {100 * f['after']['top1']:.2f}%."]
    lines += ["", "Classes (logit order): " + ", ".join(f"{i} {n}" for i, n in enumerate(meta.get("class_names") or [])) + ".",
              "", "Per block: MLP units kept " + str(mask["kept_counts"]) + (f", heads kept {heads}" if heads else "") + ".",
              "", "## Files", ""]
    described = {"model.safetensors": "the weights (timm state dict, pruned shapes)",
                 HUB_CONFIG_FILE: "timm's configuration in the Hugging Face layout, with the per-block widths under `vitprune`",
                 PROGRAM_FILE: "a `torch.export` program with a dynamic batch: runs with torch alone",
                 ONNX_FILE: "ONNX, dynamic batch, checked against PyTorch with onnxruntime",
                 INT8_FILE: "int8 ONNX (kept: within the accuracy gate, and faster than fp32 or kept on request)",
                 "model.fp16.onnx": "half-precision ONNX",
                 "vitprune.json": "what `vitprune.load_model` reads", "report.md": "the full report (per class, per block)",
                 "report.json": "the same, for programs", "mask.json": "the kept units and heads"}
    lines += [f"- `{name}`: {described[name]}" for name in described if name in files]
    lines += ["", "## Load it", "", "With torch alone (input: images preprocessed as `config.json`'s `pretrained_cfg` says — size "
              f"{list((meta.get('pretrained_cfg') or {}).get('input_size') or [])}, mean "
              f"{(meta.get('pretrained_cfg') or {}).get('mean')}, std {(meta.get('pretrained_cfg') or {}).get('std')}):", "",
              "```python", "import torch", "", 'model = torch.export.load("model.pt2").module()', "logits = model(images)", "```", ""]
    if timm_rebuild:
        lines += ["As a timm module (timm + safetensors, no vitprune):", "", "```python", 'folder = "."', REBUILD.rstrip(), "```", ""]
    else:
        lines += ["timm alone cannot rebuild this module (vitprune replaced an attention by an equivalent one); use "
                  "`model.pt2`, or `vitprune.load_model(folder)`.", ""]
    lines += ["With vitprune: `vitprune.load_model(folder)`.", "", "## How it was made", "", "```bash", command, "```", "",
              f"vitprune {__version__}, which implements \"Discovering Influential Neuron Path in Vision Transformers\" "
              "(Wang et al., ICLR 2025).", "", "## License", "",
              (f"The base model's license applies: {license_}." if license_ else
               "The base model's license applies (its configuration names none); vitprune is Apache-2.0.")]
    return "\n".join(lines) + "\n"


__all__ = ["hub_config", "write_hub_files", "model_card", "rebuild", "rebuilds", "REBUILD"]
