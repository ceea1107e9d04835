"""``load_model(spec)``: the only place that creates timm models or reads checkpoints.

Specs:
  ``demo``                     the bundled Fashion-MNIST ViT (never downloaded)
  ``zoo:NAME``                 a bundled zoo model (Fashion-MNIST ViTs of other shapes; ``zoo_models()``)
  ``random:NAME``              timm architecture NAME, random init (no network)
  ``NAME``                     timm model with its pretrained hub weights (needs network or HF cache)
  ``DIR``                      a vitprune checkpoint folder (model.safetensors + vitprune.json),
                               e.g. a pruned model written by ``vitprune compress``
  ``FILE.npz``                 Google ViT checkpoint (ViT-B_16 / B_32 / L_32 ...)
  ``FILE.pth|.pt|.bin``        torch state dict (MAE fine-tuned ``{'model': ...}`` included)
  ``FILE.safetensors``         state dict
For files, ``arch`` names the timm architecture; when omitted it is inferred from tensor shapes.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .adapter import set_data_config, set_position_embedding

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_DIR = ASSETS / "demo"
ZOO_DIR = ASSETS / "zoo"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_CONFIG = "vitprune.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SIZE_BY_WIDTH_DEPTH = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large", (1280, 32): "huge"}


def load_model(spec: str, *, arch: str | None = None, img_size: int | None = None) -> nn.Module:
    """Build a timm ViT from a spec (see module docstring), in eval mode on the CPU.

    The model carries ``model.vitprune_source``: a JSON-able dict that rebuilds it
    (what pruned checkpoints record as their origin).
    """
    import timm

    spec = str(spec)
    if spec == "demo":
        return _load_vitprune_dir(DEMO_DIR, spec)
    if spec.startswith("zoo:"):
        name = spec.split(":", 1)[1]
        if name not in zoo_models():
            raise UserError(f"unknown zoo model '{name}'; the zoo has {', '.join(zoo_models()) or 'no models'}")
        return _load_vitprune_dir(ZOO_DIR / name, spec)
    if spec.startswith("random:"):
        name = spec.split(":", 1)[1]
        _check_timm_name(name)
        kwargs = {"img_size": img_size} if img_size else {}
        model = timm.create_model(name, pretrained=False, **kwargs)
        return _finish(model, {"spec": spec, "arch": name, "model_kwargs": kwargs})
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_vitprune_dir(path, spec)
    if path.suffix.lower() in (".npz", ".pth", ".pt", ".bin", ".safetensors") or path.exists() or "/" in spec:
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist; check the path")
        return _load_checkpoint_file(path, arch, img_size)
    _check_timm_name(spec)
    return _load_hub(spec, img_size)


def zoo_models() -> list[str]:
    """Names of the bundled zoo models (``--model zoo:NAME``)."""
    return sorted(d.name for d in ZOO_DIR.iterdir() if (d / CHECKPOINT_WEIGHTS).is_file()) if ZOO_DIR.is_dir() else []


# ------------------------------------------------------------------------------------- hub
def _check_timm_name(name: str) -> None:
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"'{name}' is neither a file, a folder nor a timm model name; see timm.list_models('vit_*')")


def _load_hub(name: str, img_size: int | None) -> nn.Module:
    import timm

    kwargs = {"img_size": img_size} if img_size else {}
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # hub errors come as many types (OSError, LocalEntryNotFoundError, HTTPError ...)
        if isinstance(exc, (RuntimeError, ValueError)) and "size mismatch" in str(exc):
            raise UserError(f"pretrained weights of '{name}' do not fit: {str(exc).splitlines()[0]}") from exc
        raise UserError(
            f"cannot fetch pretrained weights for '{name}' ({type(exc).__name__}: no network or not in the HF cache); "
            f"download the checkpoint and pass its file with --arch {name.split('.')[0]}, or use random:{name.split('.')[0]}"
        ) from exc
    return _finish(model, {"spec": name, "arch": name, "model_kwargs": kwargs})


# ------------------------------------------------------------------------------ checkpoints
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            import numpy as np

            with np.load(path) as npz:
                return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}); the file is corrupt or not a checkpoint") from exc
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state dict of tensors; save model.state_dict() or pass a timm checkpoint")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def infer_arch(sd: dict[str, torch.Tensor], path: Path) -> tuple[str | None, dict[str, Any]]:
    """Guess (timm name or None, kwargs) of a ViT from its state dict (timm or Google npz keys).

    The kwargs (class count, pooling, input channels) always come from the tensors; the name
    only for the standard widths/depths (tiny ... huge).
    """
    if "embedding/kernel" in sd:
        patch, _, in_chans, width = sd["embedding/kernel"].shape
        depth = len({k.split("/")[1] for k in sd if k.startswith("Transformer/encoderblock_")})
        num_classes = sd["head/kernel"].shape[-1] if "head/kernel" in sd else 0
        global_pool = "token"
    elif "patch_embed.proj.weight" in sd:
        width, in_chans, patch, _ = sd["patch_embed.proj.weight"].shape
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        global_pool = "avg" if "fc_norm.weight" in sd and "norm.weight" not in sd else "token"
    else:
        raise UserError(f"{path} does not look like a ViT checkpoint (no patch embedding); pass another file")
    size = _SIZE_BY_WIDTH_DEPTH.get((int(width), depth))
    name = f"vit_{size}_patch{int(patch)}_224" if size else None
    kwargs: dict[str, Any] = {"num_classes": int(num_classes), "global_pool": global_pool}
    if int(in_chans) != 3:
        kwargs["in_chans"] = int(in_chans)
    return (name if name and _is_timm_model(name) else None), kwargs


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _load_checkpoint_file(path: Path, arch: str | None, img_size: int | None) -> nn.Module:
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = _read_state_dict(path)
    inferred, kwargs = infer_arch(sd, path)
    name = arch or inferred
    if name is None:
        raise UserError(f"cannot infer the architecture of {path} (non-standard width/depth); pass --arch <timm name>")
    _check_timm_name(name)
    if img_size:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:
        raise UserError(f"cannot build '{name}' for {path}: {str(exc).splitlines()[0]}") from exc
    source = {"spec": str(path), "arch": name, "model_kwargs": kwargs}
    if path.suffix.lower() == ".npz":
        _load_npz(model, path, sd)
        return _finish(model, source)
    if "fc_norm.weight" in sd:  # MAE fine-tuned checkpoints are trained with ImageNet statistics
        set_data_config(model, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
        source["data_config"] = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    try:
        filtered = checkpoint_filter_fn(sd, model)
        missing, unexpected = model.load_state_dict(filtered, strict=False)
    except RuntimeError as exc:
        raise UserError(
            f"checkpoint {path} does not fit architecture '{name}' ({_first_mismatch(str(exc))}); pass the right --arch"
        ) from exc
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not fit architecture '{name}' (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "pass the right --arch"
        )
    return _finish(model, source)


def _first_mismatch(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln]
    return (lines[0] if lines else message.splitlines()[0])[:200]


def _load_npz(model: nn.Module, path: Path, sd: dict[str, torch.Tensor]) -> None:
    """Google .npz through timm's loader; position embeddings resampled like the reference.

    timm resamples a different grid with align_corners=False; the NeuronPath reference uses
    scipy.ndimage.zoom(order=1), which equals bilinear with align_corners=True. We overwrite
    timm's result with the latter so B/32 and L/32 (384 checkpoints run at 224) match the reference.
    """
    head_key = "head/kernel"
    if head_key in sd and sd[head_key].shape[-1] != model.num_classes:
        raise UserError(f"{path} has a {sd[head_key].shape[-1]}-class head but the model has {model.num_classes}; pass the right --arch")
    try:
        model.load_pretrained(str(path))
    except Exception as exc:
        raise UserError(f"checkpoint {path} does not fit architecture '{type(model).__name__}': {str(exc).splitlines()[0][:200]}") from exc
    pos = sd.get("Transformer/posembed_input/pos_embedding")
    if pos is not None:
        set_position_embedding(model, pos)


# --------------------------------------------------------------------------- vitprune dirs
def _load_vitprune_dir(path: Path, spec: str) -> nn.Module:
    """A folder with model.safetensors whose metadata (or vitprune.json) says how to rebuild it."""
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights = path / CHECKPOINT_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{path} is a folder without {CHECKPOINT_WEIGHTS}; pass a vitprune checkpoint folder or a file")
    try:
        with safe_open(str(weights), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("vitprune", "null") or "null")
        if meta is None and (path / CHECKPOINT_CONFIG).is_file():
            meta = json.loads((path / CHECKPOINT_CONFIG).read_text())
        sd = load_file(str(weights))
    except Exception as exc:
        raise UserError(f"cannot read {weights} ({type(exc).__name__}); the file is corrupt, restore or re-create it") from exc
    if not meta or "arch" not in meta:
        raise UserError(f"{weights} carries no vitprune metadata; load plain state dicts as files with --arch")
    model = timm.create_model(meta["arch"], pretrained=False, **meta.get("model_kwargs", {}))
    widths = meta.get("mlp_hidden")
    if widths is not None:
        resize_mlps(model, widths)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{weights} does not match its own metadata ({_first_mismatch(str(exc))}); re-create the checkpoint") from exc
    if meta.get("data_config"):
        set_data_config(model, dict(meta["data_config"]))
    source = {"spec": spec, **{k: v for k, v in meta.items() if k in ("arch", "model_kwargs", "data_config", "source")}}
    return _finish(model, source, meta)


def describe_model(model: nn.Module) -> dict[str, Any]:
    """How to rebuild an in-memory timm ViT (the ``vitprune_source`` of a model vitprune did not load): its
    architecture and arguments as ``timm.create_model`` recorded them (``timm.models.get_model_args``, what timm's
    own ``save_for_hf`` writes), else as the model's structure implies them. ``save_checkpoint`` rebuilds from
    them and refuses to write a checkpoint that would not load back to the same outputs."""
    import json

    from timm.models import get_model_args

    from .adapter import ViTAdapter

    adapter = ViTAdapter(model)
    recorded = get_model_args(model) if getattr(model, "_model_args", None) else {}
    kwargs = json.loads(json.dumps(recorded)) if recorded else adapter.structure()
    return {"spec": f"<in-memory {type(model).__name__}>", "arch": adapter.architecture or "vit_base_patch16_224",
            "model_kwargs": kwargs}


def resize_mlps(model: nn.Module, widths: list[int]) -> None:
    """Give each block's MLP the hidden width ``widths[b]`` (fresh weights; load a state dict next)."""
    from .adapter import ViTAdapter

    sites = ViTAdapter(model).sites("mlp")
    if len(widths) != len(sites):
        raise UserError(f"checkpoint lists {len(widths)} MLP widths for a {len(sites)}-block model; re-create it")
    for site, width in zip(sites, widths):
        site.resize(int(width))


def save_checkpoint(model: nn.Module, folder: Path, meta: dict[str, Any], *, verify: bool = False) -> Path:
    """Write ``model.safetensors`` (metadata key 'vitprune' = ``meta``) and ``vitprune.json``, atomically.

    ``meta`` needs ``arch`` and ``model_kwargs``; ``mlp_hidden`` (per-block widths) makes
    ``load_model(folder)`` rebuild a pruned model without the original weights. ``verify`` rebuilds the
    model from ``meta`` first and refuses (one line) when it would not give the same outputs.
    """
    from safetensors.torch import save_file

    from ..files import atomic_write_json, replace_atomically

    if verify:
        _check_rebuilds(model, meta)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / f".{CHECKPOINT_WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"vitprune": json.dumps(meta, sort_keys=True)})
    replace_atomically(tmp, folder / CHECKPOINT_WEIGHTS)
    atomic_write_json(folder / CHECKPOINT_CONFIG, meta)
    return folder / CHECKPOINT_WEIGHTS


@torch.no_grad()
def _check_rebuilds(model: nn.Module, meta: dict[str, Any]) -> None:
    import timm

    from .adapter import ViTAdapter

    what = f"timm.create_model('{meta['arch']}', **{meta.get('model_kwargs', {})})"
    try:
        rebuilt = timm.create_model(meta["arch"], pretrained=False, **meta.get("model_kwargs", {}))
        if meta.get("mlp_hidden") is not None:
            resize_mlps(rebuilt, meta["mlp_hidden"])
        rebuilt.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, strict=True)
    except Exception as exc:
        raise UserError(f"this model cannot be saved as a checkpoint: {what} does not rebuild it "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc
    x = torch.randn(2, *ViTAdapter(rebuilt).input_size, generator=torch.Generator().manual_seed(0))
    p = next(model.parameters())
    want = model.eval()(x.to(p.device, p.dtype)).float().cpu()
    got = rebuilt.eval().to(p.dtype)(x.to(p.dtype)).float()
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise UserError(f"this model cannot be saved as a checkpoint: {what} builds a model with other outputs "
                        f"(max |diff| {float((got - want).abs().max()):.2e}); build it with timm.create_model and a registered "
                        "architecture")


def _finish(model: nn.Module, source: dict[str, Any], meta: dict[str, Any] | None = None) -> nn.Module:
    model.eval()
    model.vitprune_source = source
    model.vitprune_meta = meta or {}
    return model


__all__ = ["load_model", "save_checkpoint", "resize_mlps", "describe_model", "infer_arch", "zoo_models", "DEMO_DIR", "ZOO_DIR"]
