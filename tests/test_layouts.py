"""MLP layouts: gated (GluMlp / SwiGLUPacked, SwiGLU) and normed (scale_mlp_norm) MLPs prune like timm's plain Mlp:
discovery equals the literal formulas, the slice equals the masked model, least squares refits fc2, ONNX parity holds."""
from __future__ import annotations

import pytest
import timm
import torch

import vitprune
from vitprune.model.adapter import adapter_for
from vitprune.prune.lsq import heldout_positions, reconstruct
from vitprune.prune.masks import from_keep_sets
from vitprune.prune.slicing import slice_sites

from .literal_jas import literal_jas

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_classes=5)


def dinov2_style(dtype=torch.float32):
    """vit_giant_patch14_dinov2 shrunk: SwiGLUPacked MLPs, register tokens, no position embedding on the prefix."""
    torch.manual_seed(0)
    return _spread(timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=28, patch_size=7, mlp_ratio=4,
                                     reg_tokens=2, init_values=0.5, **TINY)).eval().to(dtype)


def pe_style(dtype=torch.float32):
    """aimv2_large_patch14_224 shrunk (Perception-Encoder-like): SwiGLU MLPs, RmsNorm, no class token, average pooling."""
    torch.manual_seed(0)
    return _spread(timm.create_model("aimv2_large_patch14_224", pretrained=False, img_size=32, patch_size=8, mlp_ratio=2.75,
                                     **TINY)).eval().to(dtype)


def normed_style(dtype=torch.float32):
    """timm's scale_mlp_norm (BEiT-3 style): a LayerNorm over every MLP's hidden vector."""
    torch.manual_seed(0)
    return _spread(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, scale_mlp_norm=True,
                                     **TINY)).eval().to(dtype)


@torch.no_grad()
def _spread(model):
    """Random-init gates start near zero (timm's GLU init): spread every weight so that every unit matters."""
    for p in model.parameters():
        if p.dim() >= 1:
            p.normal_(0, 0.3 if p.dim() > 1 else 0.5)
    return model


MODELS = {"dinov2": (dinov2_style, 28, "PackedGluMlp", slice(0, 1)), "pe": (pe_style, 32, "SplitGluMlp", slice(0, None)),
          "normed": (normed_style, 32, "NormedMlp", slice(0, 1))}


def _images(n, size, dtype=torch.float32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("name", MODELS)
def test_sliced_equals_masked_and_the_checkpoint_round_trips(name, tmp_path):
    make, size, layout, _ = MODELS[name]
    model = make()
    adapter = adapter_for(model)
    assert {s.layout.__name__ for s in adapter.sites()} == {layout}
    widths = adapter.hidden_widths
    mask = from_keep_sets(widths, [list(range(1, w, 3)) for w in widths], "test")
    pruned = slice_sites(model, mask)
    assert adapter_for(pruned).hidden_widths == mask.kept_counts
    hooks = [h for site, kept in zip(adapter.sites(), mask.kept) for h in site.layout.masked(site.module, torch.tensor(kept))]
    x = _images(3, size)
    with torch.no_grad():
        masked = model(x)
        for h in hooks:
            h.remove()
        assert torch.allclose(pruned(x), masked, atol=1e-5) and not torch.allclose(model(x), masked, atol=1e-3)
    from vitprune.model.load import describe_model, save_checkpoint

    meta = {**describe_model(model), "mlp_hidden": mask.kept_counts}
    save_checkpoint(pruned, tmp_path / "p", meta, verify=True)
    with torch.no_grad():
        assert torch.equal(vitprune.load_model(str(tmp_path / "p"))(x), pruned(x))


@pytest.mark.parametrize("name", MODELS)
def test_discovery_equals_the_literal_formulas(name):
    make, size, _, tokens = MODELS[name]
    model = make(torch.float64)
    x, y = _images(2, size, torch.float64), torch.tensor([1, 3])
    scope = "auto" if name != "dinov2" else "cls"
    fast = vitprune.find_paths(model, x, y, topk=2, steps=3, token_scope=scope)
    prefix = adapter_for(model).layout.num_prefix
    want = literal_jas(model, x, y, topk=2, steps=3, tokens=tokens if name != "pe" else slice(prefix, None))
    for f, s in zip(fast, want, strict=True):
        assert f.path == s["path"] and f.score == pytest.approx(s["score"], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_least_squares_refits_the_output_projection(name):
    make, size, _, _ = MODELS[name]
    model = make()
    widths = adapter_for(model).hidden_widths
    x, held = _images(30, size), heldout_positions(30)
    same, _ = reconstruct(model, from_keep_sets(widths, [list(range(w)) for w in widths], "all"), x, held)
    with torch.no_grad():
        assert (same(x) - model(x)).abs().max() <= 1e-4  # keeping every unit changes nothing
    mask = from_keep_sets(widths, [list(range(0, w, 2)) for w in widths], "half")
    refit, info = reconstruct(model, mask, x, held, target="output")
    assert all(f.calibration_error["lsq"] <= f.calibration_error["slice"] * (1 + 1e-9) + 1e-12 for f in info.blocks)
    with torch.no_grad():
        dense = model(x)
        assert (refit(x) - dense).pow(2).mean() < (slice_sites(model, mask)(x) - dense).pow(2).mean()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_compress_and_onnx_parity(name, tmp_path):
    from torch.utils.data import TensorDataset

    make, size, _, _ = MODELS[name]
    model = make()
    images = _images(40, size)
    labels = torch.arange(40) % 5
    result = vitprune.compress(model, (TensorDataset(images[:30], labels[:30]), TensorDataset(images[30:], labels[30:])),
                               sparsity=0.5, criterion="jas-freq", compensate="lsq", per_class=6, steps=2, quiet=True)
    assert result.mask.sparsity == pytest.approx(0.5, abs=0.02)
    info = result.export_onnx(tmp_path / "m.onnx")
    assert info["onnx"]["parity_max_abs"] <= 1e-4
