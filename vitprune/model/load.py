"""``load_model(spec)``: the only place that creates timm models or reads checkpoints.

Specs:
  ``demo``                     the bundled Fashion-MNIST ViT (never downloaded)
  ``zoo:NAME``                 a bundled zoo model (Fashion-MNIST ViTs of other shapes; ``zoo_models()``)
  ``random:NAME``              timm architecture NAME, random init seeded by --seed (no network)
  ``NAME``                     timm model with its pretrained hub weights (needs network or HF cache)
  ``DIR``                      a vitprune checkpoint folder (model.safetensors + vitprune.json), e.g. a pruned
                               model written by ``vitprune compress``; or a folder in timm's Hugging Face layout
                               (config.json + model.safetensors or pytorch_model.bin), loaded as timm loads it
  ``FILE.npz``                 Google ViT checkpoint (ViT-B_16 / B_32 / L_32 ...)
  ``FILE.pth|.pt|.bin``        torch state dict (MAE fine-tuned ``{'model': ...}`` included)
  ``FILE.safetensors``         state dict

The model is built from timm's configuration, never guessed: a checkpoint folder stores the timm
architecture, its model arguments and its pretrained config (mean, std, input size); plain state
dicts take ``arch`` (a timm name, with a pretrained tag for its preprocessing, e.g.
``vit_base_patch16_224.mae``) and ``model_args`` (``--model-args key=value,...``). A state dict that
does not fit the architecture (patch size, position grid, depth, tokens, stem, widths) is one line
naming the difference and the argument that fixes it; only a Google ``.npz`` position grid is
resampled (as the reference code does). Non-finite weights are refused.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .adapter import WEIGHT_SOURCE_KEYS, adapter_for, data_config, set_data_config

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_DIR = ASSETS / "demo"
ZOO_DIR = ASSETS / "zoo"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_CONFIG = "vitprune.json"
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WEIGHTS_KEY = "weights_fingerprint"  # vitprune.json: the fingerprint of the weights it was written with
STATE_DICT_SUFFIXES = (".npz", ".pth", ".pt", ".bin", ".safetensors")


def load_model(spec: str, *, arch: str | None = None, model_args: dict[str, Any] | None = None, seed: int = 0) -> nn.Module:
    """Build a timm ViT from a spec (see module docstring), in eval mode on the CPU. A ``random:NAME`` model's weights
    are drawn with ``seed`` (``--seed``): the same spec and seed give the same weights, run after run.

    The model carries ``model.vitprune_source`` (a JSON-able dict that rebuilds it: what pruned
    checkpoints record as their origin) and ``model.vitprune_fingerprint`` (of its weights as loaded).
    """
    spec = str(spec)
    args = dict(model_args or {})
    if spec == "demo" or spec.startswith("zoo:"):
        name = spec.split(":", 1)[1] if spec.startswith("zoo:") else None
        if name is not None and name not in zoo_models():
            raise UserError(f"unknown zoo model '{name}'; the zoo has {', '.join(zoo_models()) or 'no models'}")
        _no_args(spec, arch, args)
        return _load_vitprune_dir(ZOO_DIR / name if name else DEMO_DIR, spec)
    if spec.startswith("random:"):
        name = spec.split(":", 1)[1]
        _check_timm_name(name)
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
            torch.manual_seed(seed)
            model = _create(name, args, f"'{name}'")
        return _finish(model, {"spec": spec, "arch": name, "model_args": args, "seed": seed})
    path = Path(spec).expanduser()
    if path.is_dir():
        from ..outdir import check_not_being_written

        check_not_being_written(path)
        if (path / CHECKPOINT_CONFIG).is_file() or _has_vitprune_meta(path / CHECKPOINT_WEIGHTS):
            _no_args(spec, arch, args)
            return _load_vitprune_dir(path, spec)
        if (path / HF_CONFIG).is_file():
            return _load_hf_dir(path, spec, args)
        raise UserError(f"{path} is a folder without a vitprune checkpoint (model.safetensors + vitprune.json) or timm's "
                        "Hugging Face layout (config.json + model.safetensors); pass a checkpoint folder or a file")
    if path.suffix.lower() in STATE_DICT_SUFFIXES or path.exists() or "/" in spec:
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist; check the path")
        return _load_checkpoint_file(path, arch, args)
    _check_timm_name(spec)
    return _load_hub(spec, args)


def model_location(spec: str) -> Path | None:
    """The file or folder a model spec reads from (what an output must never overlap); None for hub and random models."""
    spec = str(spec)
    if spec == "demo":
        return DEMO_DIR
    if spec.startswith("zoo:"):
        return ZOO_DIR / spec.split(":", 1)[1]
    if spec.startswith("random:"):
        return None
    path = Path(spec).expanduser()
    return path if path.exists() or "/" in spec or path.suffix.lower() in STATE_DICT_SUFFIXES else None


def zoo_models() -> list[str]:
    """Names of the bundled zoo models (``--model zoo:NAME``)."""
    return sorted(d.name for d in ZOO_DIR.iterdir() if (d / CHECKPOINT_WEIGHTS).is_file()) if ZOO_DIR.is_dir() else []


def _no_args(spec: str, arch: str | None, args: dict) -> None:
    if arch or args:
        raise UserError(f"'{spec}' carries its own timm configuration; --arch and --model-args are for plain state dicts")


def _create(name: str, args: dict[str, Any], what: str, **extra: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **{"pretrained": False, **extra}, **args)
    except TypeError as exc:
        raise UserError(f"cannot build {what} with model args {args}: {str(exc).splitlines()[0][:160]}; check --model-args") from exc
    except (AssertionError, RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"cannot build {what}: {str(exc).splitlines()[0][:200]}") from exc


# ------------------------------------------------------------------------------ checkpoint checks
@torch.no_grad()
def set_position_embedding(model: nn.Module, pos: torch.Tensor) -> None:
    """Copy a position embedding of another grid into ``model``, resampled bilinearly with align_corners=True
    (= ``scipy.ndimage.zoom(order=1)``, what the NeuronPath reference uses for B/32 and L/32 at 224)."""
    import inspect

    from timm.layers import resample_abs_pos_embed

    if pos.shape[1] == model.pos_embed.shape[1]:
        return  # the same grid: timm's own loader already put it in place
    align = {"align_corners": True} if "align_corners" in inspect.signature(resample_abs_pos_embed).parameters else {}
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    model.pos_embed.copy_(resample_abs_pos_embed(pos.float(), new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix,
                                                 interpolation="bilinear", antialias=False, verbose=False, **align))


def state_dict_mismatch(sd: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """What in a timm-format state dict does not fit ``model`` that timm's loader would paper over (it resamples
    patch kernels and position grids), named with the ``--model-args`` that fixes it (all of them at once, so the
    advice never goes round in circles); None when nothing does."""
    mine = model.state_dict()
    stem = "patch_embed.backbone."
    if any(k.startswith(stem) for k in sd) != any(k.startswith(stem) for k in mine):
        has = "has" if any(k.startswith(stem) for k in sd) else "has no"
        return f"the checkpoint {has} a convolutional stem (hybrid ViT); pass the matching --arch (vit_*_r_*)"
    kernel, want = sd.get("patch_embed.proj.weight"), mine.get("patch_embed.proj.weight")
    if kernel is not None and want is not None and kernel.shape != want.shape:
        if kernel.shape[2:] != want.shape[2:]:
            return (f"its patches are {kernel.shape[2]}x{kernel.shape[3]}, the architecture's {want.shape[2]}x{want.shape[3]}; "
                    f"pass --model-args patch_size={kernel.shape[2]}")
        if kernel.shape[1] != want.shape[1]:
            return f"it takes {kernel.shape[1]}-channel images, the architecture {want.shape[1]}; pass --model-args in_chans={kernel.shape[1]}"
    depth, want_depth = ({int(k.split(".")[1]) for k in d if k.startswith("blocks.")} for d in (sd, mine))
    if depth and len(depth) != len(want_depth):
        return f"it has {len(depth)} blocks, the architecture {len(want_depth)}; pass --model-args depth={len(depth)}"
    if "dist_token" in sd and "dist_token" not in mine:
        return "the checkpoint has a distillation token; pass a distilled --arch (deit_*_distilled_*)"
    fixes: dict[str, object] = {}
    said: list[str] = []
    has_cls, has_fc_norm = "cls_token" in sd, "fc_norm.weight" in sd
    if has_cls != ("cls_token" in mine):
        said.append(f"{'a' if has_cls else 'no'} class token")
        fixes["class_token"] = has_cls
    if has_fc_norm != ("fc_norm.weight" in mine):
        said.append(f"{'an' if has_fc_norm else 'no'} fc_norm")
        fixes["fc_norm"] = has_fc_norm
    if not has_cls and getattr(model, "global_pool", "token") == "token":
        fixes["global_pool"] = "avg"  # token pooling needs the class token
    elif has_fc_norm and "fc_norm.weight" not in mine:
        fixes["global_pool"] = "avg"  # fc_norm: a norm after the mean
    regs = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    if regs != (int(mine["reg_token"].shape[1]) if "reg_token" in mine else 0):
        said.append(f"{regs} register tokens")
        fixes["reg_tokens"] = regs
    if said:
        args = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fixes.items())
        return f"the checkpoint has {' and '.join(said)}; pass --model-args {args}"
    pos, want_pos = sd.get("pos_embed"), mine.get("pos_embed")
    if pos is not None and want_pos is not None and pos.shape != want_pos.shape:
        grid = model.patch_embed.grid_size
        patches = grid[0] * grid[1]
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        if prefix and {pos.shape[1], want_pos.shape[1]} == {patches, patches + prefix}:
            embed_class = pos.shape[1] == patches + prefix
            return (f"its position embedding {'covers' if embed_class else 'skips'} the {prefix} prefix token(s), the "
                    f"architecture's {'does not' if embed_class else 'does'}; pass --model-args "
                    f"no_embed_class={str(not embed_class).lower()}")
        prefix = want_pos.shape[1] - patches
        side = int(max(pos.shape[1] - prefix, 0) ** 0.5)
        hint = (f"pass --model-args img_size={side * model.patch_embed.patch_size[0]}" if side * side == pos.shape[1] - prefix
                else "pass the --model-args of the checkpoint's image size")
        return f"its position grid is {pos.shape[1] - prefix} patches, the architecture's {grid[0]}x{grid[1]}; {hint}"
    return None


def npz_mismatch(sd: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """The same for a Google .npz checkpoint (its position grid may differ: that one is resampled as the reference does)."""
    head = sd.get("head/kernel")
    if head is not None and head.shape[-1] != model.num_classes:
        return f"it has a {head.shape[-1]}-class head, the architecture {model.num_classes}; pass --model-args num_classes={head.shape[-1]}"
    kernel = sd.get("embedding/kernel")  # (patch, patch, in, width)
    want = model.patch_embed.proj.weight.shape
    if kernel is not None and tuple(kernel.shape[:2]) != tuple(want[2:]):
        return f"its patches are {kernel.shape[0]}x{kernel.shape[1]}, the architecture's {want[2]}x{want[3]}; pass --model-args patch_size={kernel.shape[0]}"
    return None


def channel_consistent(model: nn.Module) -> None:
    """A model of fewer input channels than its pretrained config's mean/std (a 1-channel model of an RGB
    architecture): the config made to say what preprocessing does (the channels' mean), so the checkpoint, the ONNX
    metadata and the transform all agree."""
    import numpy as np

    chans = adapter_for(model).input_size[0]
    cfg = data_config(model)
    fixed = {}
    for key in ("mean", "std"):
        values = cfg.get(key)
        if values is not None and len(values) != chans and chans == 1:
            fixed[key] = [float(np.mean(values))]
    if fixed or (cfg.get("input_size") and cfg["input_size"][0] != chans):
        size = list(cfg.get("input_size") or [chans, *adapter_for(model).input_size[1:]])
        set_data_config(model, {**fixed, "input_size": [chans, *size[1:]]})


# ------------------------------------------------------------------------------------- hub
def _check_timm_name(name: str) -> None:
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"'{name}' is neither a file, a folder nor a timm model name; see timm.list_models('vit_*')")


def _load_hub(name: str, args: dict[str, Any]) -> nn.Module:
    import timm

    try:
        model = timm.create_model(name, pretrained=True, **args)
    except Exception as exc:  # hub errors come as many types (OSError, LocalEntryNotFoundError, HTTPError ...)
        if isinstance(exc, (RuntimeError, ValueError)) and "size mismatch" in str(exc):
            raise UserError(f"pretrained weights of '{name}' do not fit: {str(exc).splitlines()[0]}") from exc
        if isinstance(exc, TypeError):
            raise UserError(f"cannot build '{name}' with model args {args}: {str(exc).splitlines()[0][:160]}") from exc
        raise UserError(
            f"cannot fetch pretrained weights for '{name}' ({type(exc).__name__}: no network or not in the HF cache); "
            f"download the checkpoint and pass its file with --arch {name}, or use random:{name.split('.')[0]}"
        ) from exc
    return _finish(model, {"spec": name, "arch": name, "model_args": args})


def _load_hf_dir(path: Path, spec: str, args: dict[str, Any]) -> nn.Module:
    """A folder in timm's Hugging Face layout, loaded as ``timm.create_model('local-dir:PATH', pretrained=True)`` does."""
    import timm

    if not any((path / w).is_file() for w in HF_WEIGHTS):
        raise UserError(f"{path} has {HF_CONFIG} but no weights ({' or '.join(HF_WEIGHTS)}); restore them")
    try:
        model = timm.create_model(f"local-dir:{path}", pretrained=True, **args)
    except Exception as exc:
        raise UserError(f"cannot load {path} as a timm Hugging Face folder ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from exc
    arch = adapter_for(model).architecture or ""
    from timm.models import get_model_args

    return _finish(model, {"spec": spec, "arch": arch, "model_args": json.loads(json.dumps(get_model_args(model)))})


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
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state dict of tensors; save model.state_dict() or pass a timm checkpoint")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def _load_checkpoint_file(path: Path, arch: str | None, args: dict[str, Any]) -> nn.Module:
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = _read_state_dict(path)
    head = sd.get("head/kernel", sd.get("head.weight"))
    if head is not None and "num_classes" not in args:  # the class count is the checkpoint's head, whatever the architecture's
        args = {**args, "num_classes": int(head.shape[-1] if "head/kernel" in sd else head.shape[0])}
    if not arch:
        raise UserError(f"{path} is a plain state dict: pass --arch <timm name> (and --model-args key=value,... where it "
                        "differs from that architecture, e.g. global_pool=avg for MAE fine-tuned checkpoints)")
    _check_timm_name(arch)
    model = _create(arch, args, f"'{arch}' for {path}")
    source = {"spec": str(path), "arch": arch, "model_args": args}
    if path.suffix.lower() == ".npz":
        _load_npz(model, path, sd, arch)
        return _finish(model, source)
    mismatch = state_dict_mismatch(sd, model)
    if mismatch:
        raise UserError(f"checkpoint {path} does not fit architecture '{arch}': {mismatch}")
    try:
        missing, unexpected = model.load_state_dict(checkpoint_filter_fn(sd, model), strict=False)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit architecture '{arch}' ({_first_mismatch(str(exc))}); "
                        "pass the right --arch / --model-args") from exc
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit architecture '{arch}' (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); pass the right --arch / --model-args")
    return _finish(model, source)


def _first_mismatch(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln]
    return (lines[0] if lines else message.splitlines()[0])[:200]


def _load_npz(model: nn.Module, path: Path, sd: dict[str, torch.Tensor], arch: str) -> None:
    """Google .npz through timm's loader; position embeddings resampled like the reference.

    timm resamples a different grid with align_corners=False; the NeuronPath reference uses
    scipy.ndimage.zoom(order=1), which equals bilinear with align_corners=True. We overwrite
    timm's result with the latter so B/32 and L/32 (384 checkpoints run at 224) match the reference.
    """
    mismatch = npz_mismatch(sd, model)
    if mismatch:
        raise UserError(f"checkpoint {path} does not fit architecture '{arch}': {mismatch}")
    try:
        model.load_pretrained(str(path))
    except Exception as exc:
        raise UserError(f"checkpoint {path} does not fit architecture '{arch}': {str(exc).splitlines()[0][:200]}") from exc
    pos = sd.get("Transformer/posembed_input/pos_embedding")
    if pos is not None:
        set_position_embedding(model, pos)


# --------------------------------------------------------------------------- vitprune dirs
def _has_vitprune_meta(weights: Path) -> bool:
    if not weights.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            return "vitprune" in (f.metadata() or {})
    except Exception:
        return True  # a damaged file is reported when it is read


def _read_meta(path: Path) -> dict[str, Any]:
    """The folder's configuration: vitprune.json when present (the file people read and edit), else the copy in
    the safetensors metadata."""
    config, weights = path / CHECKPOINT_CONFIG, path / CHECKPOINT_WEIGHTS
    if config.is_file():
        try:
            meta = json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {config} ({type(exc).__name__}); restore it or re-create the checkpoint") from exc
    else:
        try:
            from safetensors import safe_open

            with safe_open(str(weights), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("vitprune", "null") or "null")
        except Exception as exc:
            raise UserError(f"cannot read {weights} ({type(exc).__name__}); the file is corrupt, restore or re-create it") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str):
        raise UserError(f"{config if config.is_file() else weights} carries no timm architecture ('arch'); re-create the "
                        "checkpoint, or load a plain state dict as a file with --arch")
    args = meta.get("model_args", meta.get("model_kwargs", {}))
    if not isinstance(args, dict):
        raise UserError(f"{config}: model_args must be a mapping of timm.create_model keyword arguments (got "
                        f"{type(args).__name__}); restore the file")
    widths = meta.get("mlp_hidden")
    if widths is not None and (not isinstance(widths, list) or not all(isinstance(w, int) and w > 0 for w in widths)):
        raise UserError(f"{config}: mlp_hidden must list one positive width per block (got {widths!r}); restore the file")
    heads = meta.get("attn_heads")
    if heads is not None and (not isinstance(heads, list) or not all(isinstance(h, int) and h > 0 for h in heads)):
        raise UserError(f"{config}: attn_heads must list one positive head count per block (got {heads!r}); restore the file")
    return meta


def _load_vitprune_dir(path: Path, spec: str) -> nn.Module:
    """A vitprune checkpoint folder: timm architecture + model args + pretrained config, pruned widths, weights."""
    from safetensors.torch import load_file

    from ..outdir import check_not_being_written

    check_not_being_written(path)
    weights = path / CHECKPOINT_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{path} is a folder without {CHECKPOINT_WEIGHTS}; pass a vitprune checkpoint folder or a file")
    meta = _read_meta(path)
    try:
        sd = load_file(str(weights))
    except Exception as exc:
        raise UserError(f"cannot read {weights} ({type(exc).__name__}); the file is corrupt, restore or re-create it") from exc
    args = dict(meta.get("model_args", meta.get("model_kwargs", {})))
    model = _create(meta["arch"], args, f"'{meta['arch']}' from {path / CHECKPOINT_CONFIG}")
    resize_pruned(model, meta)
    add_recorded_biases(model, sd)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{weights} does not match its own configuration ({_first_mismatch(str(exc))}); re-create the checkpoint") from exc
    recorded = meta.get(WEIGHTS_KEY)
    if recorded is not None and recorded != fingerprint(model):
        raise UserError(f"{weights} holds other weights than {path / CHECKPOINT_CONFIG} describes (another run's file?); keep the "
                        "two files of one checkpoint together, or re-create it")
    cfg = meta.get("pretrained_cfg") or meta.get("data_config") or {}
    # the architecture's stock configuration names weights these are not (their URL, Hub id, tag): dropped
    model.pretrained_cfg = {k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items() if k not in WEIGHT_SOURCE_KEYS}
    set_data_config(model, {**{k: v for k, v in dict(cfg).items() if k not in WEIGHT_SOURCE_KEYS}, "num_classes": model.num_classes})
    source = {"spec": spec, "arch": meta["arch"], "model_args": args, "data_config": data_config(model),
              **({"source": meta["source"]} if "source" in meta else {})}
    return _finish(model, source, meta)


def describe_model(model: nn.Module) -> dict[str, Any]:
    """How to rebuild an in-memory timm ViT (the ``vitprune_source`` of a model vitprune did not load): its
    architecture and arguments as ``timm.create_model`` recorded them (``timm.models.get_model_args``, what timm's
    own ``save_for_hf`` writes), else as the model's structure implies them. ``save_checkpoint`` rebuilds from
    them and refuses to write a checkpoint that would not load back to the same outputs."""
    from timm.models import get_model_args

    adapter = adapter_for(model)
    recorded = get_model_args(model) if getattr(model, "_model_args", None) else {}
    try:
        kwargs = _json_args(recorded) if recorded else adapter.structure()
    except UserError:
        kwargs = None  # compressing works; saving it refuses, with the reason (save_checkpoint verifies the rebuild)
    return {"spec": f"<in-memory {type(model).__name__}>", "arch": adapter.architecture or adapter.default_architecture,
            "model_args": kwargs, "data_config": data_config(model)}


def _json_args(recorded: dict[str, Any]) -> dict[str, Any]:
    """The JSON-representable part of timm's recorded arguments. Layer classes (``mlp_layer=SwiGLU``,
    ``norm_layer=partial(RmsNorm)``) are left out: an architecture's entry point passes them itself, and
    ``save_checkpoint(verify=True)`` refuses a checkpoint whose rebuild would then differ."""
    kept = {}
    for key, value in recorded.items():
        try:
            kept[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return kept


def resize_pruned(model: nn.Module, meta: dict[str, Any]) -> None:
    """Give a freshly created model the pruned shapes a checkpoint's ``meta`` records: every site kind's unit counts
    (MLP widths, head counts), under the kind's checkpoint key."""
    from . import SITE_KINDS

    for entry in SITE_KINDS:
        kind = entry.load()
        counts = meta.get(kind.checkpoint_key)
        if counts is not None:
            kind.resize(adapter_for(model), list(counts))


def add_recorded_biases(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every linear layer the bias the state dict has for it and the fresh model lacks: a compensation (least
    squares, mean shift) gives an output projection without one (``proj_bias=False``, AIMv2's) a bias."""
    modules = dict(model.named_modules())
    mine = model.state_dict()
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        layer = modules.get(owner)
        if leaf == "bias" and key not in mine and isinstance(layer, nn.Linear) and layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype, device=layer.weight.device))


def save_checkpoint(model: nn.Module, folder: Path, meta: dict[str, Any], *, verify: bool = False) -> Path:
    """Write ``model.safetensors`` (metadata key 'vitprune' = ``meta``) and ``vitprune.json``, atomically.

    ``meta`` needs ``arch`` and ``model_args`` (timm's), ``pretrained_cfg`` (its preprocessing) and ``mlp_hidden``
    (per-block widths; ``attn_heads`` too when heads were pruned), so ``load_model(folder)`` rebuilds a pruned model without the original weights. ``verify``
    rebuilds the model from ``meta`` first and refuses (one line) when it would not give the same outputs.
    """
    from safetensors.torch import save_file

    from ..files import atomic_write_json, replace_atomically, safetensors_os_error

    if verify:
        _check_rebuilds(model, meta)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {**meta, WEIGHTS_KEY: fingerprint(model)}  # ties vitprune.json to these weights
    tmp = folder / f".{CHECKPOINT_WEIGHTS}.tmp"
    try:
        save_file(state, str(tmp), metadata={"vitprune": json.dumps(meta, sort_keys=True)})
    except Exception as exc:  # safetensors reports a full disk as its own error type
        tmp.unlink(missing_ok=True)
        raise safetensors_os_error(exc, tmp) from exc
    replace_atomically(tmp, folder / CHECKPOINT_WEIGHTS)
    atomic_write_json(folder / CHECKPOINT_CONFIG, meta)
    return folder / CHECKPOINT_WEIGHTS


@torch.no_grad()
def _check_rebuilds(model: nn.Module, meta: dict[str, Any]) -> None:
    import timm

    if meta.get("model_args") is None:
        raise UserError(f"this {type(model).__name__} cannot be saved as a checkpoint: it was not made by timm.create_model, "
                        "so nothing records how to rebuild it; create it with timm.create_model")
    what = f"timm.create_model('{meta['arch']}', **{meta.get('model_args', {})})"
    try:
        rebuilt = timm.create_model(meta["arch"], pretrained=False, **meta.get("model_args", {}))
        resize_pruned(rebuilt, meta)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        add_recorded_biases(rebuilt, state)
        rebuilt.load_state_dict(state, strict=True)
    except Exception as exc:
        raise UserError(f"this model cannot be saved as a checkpoint: {what} does not rebuild it "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc
    x = torch.randn(2, *adapter_for(rebuilt).input_size, generator=torch.Generator().manual_seed(0))
    p = next(model.parameters())
    want = model.eval()(x.to(p.device, p.dtype)).float().cpu()
    got = rebuilt.eval().to(p.dtype)(x.to(p.dtype)).float()
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise UserError(f"this model cannot be saved as a checkpoint: {what} builds a model with other outputs "
                        f"(max |diff| {float((got - want).abs().max()):.2e}); build it with timm.create_model and a registered "
                        "architecture")


def fingerprint(model: nn.Module) -> str:
    """sha256 of a model's weights: the names, dtypes, shapes and bytes of its state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """The fingerprint of a model as loaded (``load_model`` keeps it with the model; in-memory models are hashed now)."""
    cached = getattr(model, "vitprune_fingerprint", None)
    return cached if cached else fingerprint(model)


def _finish(model: nn.Module, source: dict[str, Any], meta: dict[str, Any] | None = None) -> nn.Module:
    model.eval()
    channel_consistent(model)
    bad = next((name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise UserError(f"'{source['spec']}' has non-finite weights (NaN or inf in {bad}); the checkpoint is damaged")
    model.vitprune_source = source
    model.vitprune_meta = meta or {}
    model.vitprune_fingerprint = fingerprint(model)
    return model


__all__ = ["state_dict_mismatch", "npz_mismatch", "set_position_embedding", "channel_consistent", "load_model", "model_location", "save_checkpoint", "fingerprint", "model_fingerprint", "resize_pruned",
           "describe_model", "zoo_models", "add_recorded_biases", "DEMO_DIR", "ZOO_DIR"]
