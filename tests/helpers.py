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
