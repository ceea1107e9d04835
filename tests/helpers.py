"""Tiny random-init timm ViTs and inputs for tests (no downloads)."""
from __future__ import annotations

import timm
import torch


def tiny_vit(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> torch.nn.Module:
    """A 3-block timm ViT on 32x32 inputs (16 patches + CLS), random init, eval mode."""
    torch.manual_seed(seed)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, num_classes=5)
    kwargs.update(overrides)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval().to(dtype)
    model.vitprune_source = {"spec": "random:vit_tiny_patch16_224", "arch": "vit_tiny_patch16_224", "model_kwargs": kwargs}
    return model


def tiny_images(n: int, seed: int = 1, dtype: torch.dtype = torch.float32, size: int = 32, chans: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, chans, size, size, generator=gen).to(dtype)


FASHION_KWARGS = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, num_classes=10)
FASHION_DATA_CONFIG = {"input_size": [1, 28, 28], "interpolation": "bilinear", "crop_pct": 1.0, "mean": [0.286], "std": [0.353]}


def save_tiny_fashion_model(folder, seed: int = 0, **overrides):
    """A random tiny ViT for 28x28 grayscale 10-class data, saved as a vitprune checkpoint folder."""
    from vitprune.model.load import save_checkpoint

    kwargs = {**FASHION_KWARGS, **overrides}
    model = tiny_vit(seed=seed, **kwargs)
    save_checkpoint(model, folder, {"arch": "vit_tiny_patch16_224", "model_kwargs": kwargs, "data_config": FASHION_DATA_CONFIG})
    return folder


def to_google_npz(model, path) -> None:
    """Write a timm ViT as a Google/JAX .npz checkpoint (the layout timm's _load_weights reads)."""
    import numpy as np

    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        p, q = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[q + "LayerNorm_0/scale"], out[q + "LayerNorm_0/bias"] = sd[p + "norm1.weight"], sd[p + "norm1.bias"]
        out[q + "LayerNorm_2/scale"], out[q + "LayerNorm_2/bias"] = sd[p + "norm2.weight"], sd[p + "norm2.bias"]
        qkv_w, qkv_b = sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            w = qkv_w[j * d : (j + 1) * d]
            out[q + f"MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(d, heads, d // heads)
            out[q + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_b[j * d : (j + 1) * d].reshape(heads, d // heads)
        out[q + "MultiHeadDotProductAttention_1/out/kernel"] = sd[p + "attn.proj.weight"].T.reshape(heads, d // heads, d)
        out[q + "MultiHeadDotProductAttention_1/out/bias"] = sd[p + "attn.proj.bias"]
        out[q + "MlpBlock_3/Dense_0/kernel"], out[q + "MlpBlock_3/Dense_0/bias"] = sd[p + "mlp.fc1.weight"].T, sd[p + "mlp.fc1.bias"]
        out[q + "MlpBlock_3/Dense_1/kernel"], out[q + "MlpBlock_3/Dense_1/bias"] = sd[p + "mlp.fc2.weight"].T, sd[p + "mlp.fc2.bias"]
    np.savez(path, **out)


def last_line(err: str, prefix: str = "vitprune: error:") -> str:
    """The one line a refused or stopped run ends with (``prefix``), as the user reads it: the stage lines and progress
    of what ran before may precede it, nothing follows it, no traceback anywhere. Returns it with its newline."""
    import re

    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(prefix), err
    for line in lines[:-1]:
        assert (line.startswith("vitprune: ") and not line.startswith("vitprune: error")) or re.match(r"^[\w -]+: \d", line), err
    return lines[-1] + "\n"


def from_scores(scores, sparsity: float, *, scope: str = "per-block", min_keep: int = 1, round_to: int = 1, criterion: str = ""):
    """The MLP mask of a sparsity budget (``from_budget`` with the MLP kind only)."""
    from vitprune.options import Budget
    from vitprune.prune.masks import Allocation, from_budget

    return from_budget({"mlp": list(scores)}, Budget(sparsity=sparsity), Allocation(scope, min_keep, round_to),
                       criteria={"mlp": criterion})


def joint_from_macs(mlp_scores, mlp_cost, head_scores, head_cost, budget: float, *, scope: str = "per-block", min_keep: int = 1,
                    round_to: int = 1):
    """The mask of MLP units and heads within ``budget`` prunable MACs (``from_budget``'s MAC allocation)."""
    from vitprune.prune.masks import Allocation, _counts_for_macs, _top_units, Mask

    scores, costs = {"heads": list(head_scores), "mlp": list(mlp_scores)}, {"heads": list(head_cost), "mlp": list(mlp_cost)}
    widths = {k: [int(s.numel()) for s in v] for k, v in scores.items()}
    counts = _counts_for_macs(["heads", "mlp"], scores, widths, costs, budget, Allocation(scope, min_keep, round_to))
    return Mask({k: _top_units(scores[k], counts[k], "") for k in ("mlp", "heads")})


def mask_for_macs(model, scores, target: float, **kw):
    """The MLP mask of ``model`` at ``target`` x its dense MACs."""
    from vitprune.options import Budget
    from vitprune.prune.macs import count_macs_params, unit_macs
    from vitprune.prune.masks import Allocation, from_budget

    return from_budget({"mlp": list(scores)}, Budget(target_macs=target), Allocation(**kw), costs={"mlp": unit_macs(model, "mlp")},
                       total_macs=count_macs_params(model)[0])
