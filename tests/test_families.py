"""One conformance suite every registered model family runs (``vitprune.model.FAMILIES``), on tiny random models of
each family with their units made to matter (LayerScale gammas and norm weights spread, so that a removed unit changes
the logits visibly): JAS records equal the literal formulas, sliced equals the dense model with the same units (and
heads) zeroed, ONNX parity holds, a saved checkpoint loads back to the same outputs, and the MAC count is exact."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

import vitprune
from vitprune.errors import UserError
from vitprune.model import FAMILIES
from vitprune.model.adapter import adapter_for
from vitprune.model.hooks import edit_ffn
from vitprune.options import Budget
from vitprune.prune.macs import count_macs_params
from vitprune.prune.masks import Allocation, from_budget
from vitprune.prune.slicing import masked_edits, masked_sites, slice_sites

from .literal_jas import literal_jas

SMALL = dict(img_size=32, patch_size=8, depth=3, num_classes=4, embed_dim=48, num_heads=4)
# family -> tiny configurations of the timm families it covers (architecture, extra create_model arguments)
ZOO = {
    "vit": [("vit_tiny_patch16_224", {}),  # plain ViT
            ("vit_base_patch16_siglip_224", {}),  # SigLIP: attention-pool readout, no class token
            ("vit_giant_patch14_dinov2", dict(reg_tokens=2, init_values=1.0)),  # packed SwiGLU MLPs, registers, LayerScale
            ("aimv2_large_patch14_224", {})],  # AIMv2: no bias in the output projections, SwiGLU, RmsNorm
    "eva": [("vit_small_patch16_dinov3", dict(num_reg_tokens=2, global_pool="token", dynamic_img_size=False)),  # DINOv3
            ("eva02_tiny_patch14_224", {}),  # EVA-02: rope 'cat', q/v bias, SwiGLU with a hidden norm, avg + fc_norm
            ("vit_pe_core_small_patch16_384", {}),  # Perception Encoder: attention-pool readout
            ("vit_base_patch16_rope_224", {})],  # a rotary-embedding ViT
    "beit": [("beit_base_patch16_224", {}), ("beitv2_base_patch16_224", {}),
             ("beit_base_patch16_224", dict(use_shared_rel_pos_bias=True, use_rel_pos_bias=False))],  # one shared bias table
    "relpos": [("vit_relpos_base_patch16_224", {}), ("vit_srelpos_small_patch16_224", {})],
}
CASES = [(family, arch, extra) for family, configs in ZOO.items() for arch, extra in configs]


def test_every_registered_family_has_conformance_cases():
    assert set(FAMILIES.names()) == set(ZOO), "a registered family needs its tiny models in ZOO"


def mattering(arch: str, extra: dict, dtype=torch.float64) -> torch.nn.Module:
    """A tiny random model of ``arch`` whose units matter: LayerScale gammas, norm weights and the head spread."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **{**SMALL, **extra}).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("gamma" in name or name.endswith("norm.weight") or ".norm" in name and name.endswith("weight")):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.startswith("head.weight") or "relative_position_bias_table" in name or name.endswith(("q_bias", "v_bias")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)  # BEiT's biases start at zero: made to matter too
    return model.to(dtype)


def _images(n: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(dtype)


def _mask(model, kinds: tuple[str, ...], fraction: float):
    adapter = adapter_for(model)
    gen = torch.Generator().manual_seed(3)
    scores = {k: [torch.rand(site.width, generator=gen, dtype=torch.float64) for site in adapter.sites(k)] for k in kinds}
    return from_budget(scores, Budget(sparsity=fraction))


@pytest.mark.parametrize("family,arch,extra", CASES)
def test_adapter_and_sliced_equals_masked(family, arch, extra):
    model = mattering(arch, extra)
    adapter = adapter_for(model)
    assert adapter.name == family
    x = _images(3)
    kinds = ("mlp", "heads") if adapter_supports_heads(adapter) else ("mlp",)
    mask = _mask(model, kinds, 0.5)
    pruned = slice_sites(model, mask)
    assert adapter_for(pruned).hidden_widths == mask.kept_counts
    hooks = masked_sites(model, mask.heads, "heads") if mask.heads is not None else []
    try:
        with torch.no_grad(), edit_ffn(adapter, masked_edits(mask)):
            want = model(x)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        got, dense = pruned(x), model(x)
    assert (got - want).abs().max() <= 1e-4
    assert (got - dense).abs().max() > 1e-3  # the removed units mattered
    if mask.heads is not None:
        assert adapter_for(pruned).head_counts == mask.heads.kept_counts


def adapter_supports_heads(adapter) -> bool:
    try:
        adapter.sites("heads")
        return True
    except UserError:
        return False


@pytest.mark.parametrize("family,arch,extra", [c for c in CASES if c[1] in ("vit_tiny_patch16_224", "vit_small_patch16_dinov3",
                                                                          "eva02_tiny_patch14_224", "beit_base_patch16_224",
                                                                          "vit_relpos_base_patch16_224")])
def test_jas_records_equal_the_literal_formulas(family, arch, extra):
    model = mattering(arch, {**extra, "depth": 2})
    adapter = adapter_for(model)
    x, y = _images(2), torch.tensor([0, 3])
    scope = "cls" if adapter.layout.pool == "token" else "patches"
    fast = vitprune.find_paths(model, x, y, topk=2, steps=3, token_scope=scope)
    slow = literal_jas(model, x, y, topk=2, steps=3, tokens=adapter.token_slice(scope))
    for f, s in zip(fast, slow, strict=True):
        assert f.path == s["path"] and f.base_path == s["base_path"]
        assert f.score == pytest.approx(s["score"], rel=1e-5, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("family,arch,extra", CASES)
def test_compress_exports_and_reloads(family, arch, extra, tmp_path):
    from torch.utils.data import TensorDataset

    model = mattering(arch, extra, dtype=torch.float32)
    x = torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = torch.arange(48) % 4
    data = (TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:]))
    kinds = "mlp,heads" if adapter_supports_heads(adapter_for(model)) else "mlp"
    result = vitprune.compress(model, data, target_macs=0.6, prune=kinds, criterion="taylor", compensate="lsq", per_class=8,
                               quiet=True)
    assert abs(result.report.macs.ratio - 0.6) < 0.02
    folder = result.save(tmp_path / "ckpt")
    info = result.export_onnx(folder / "model.onnx", latency_rounds=0)
    assert info["onnx"]["parity_max_abs"] <= 1e-4
    back = vitprune.load_model(str(folder))
    with torch.no_grad():
        assert torch.equal(back(x[:4]), result.model(x[:4]))


@pytest.mark.parametrize("family,arch,extra", [c for c in CASES if c[1] in ("vit_small_patch16_dinov3", "beit_base_patch16_224",
                                                                          "vit_base_patch16_siglip_224")])
def test_mac_count_of_attention_torch_pruning_cannot_see(family, arch, extra):
    """Eva's fused qkv with q/v bias runs as F.linear and every attention's matmuls are functional: counted anyway."""
    model = mattering(arch, extra, dtype=torch.float32)
    adapter = adapter_for(model)
    macs, _ = count_macs_params(model)
    tokens, dim = adapter.tokens, 48
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = adapter.depth * 2 * tokens * tokens * dim  # q k^T and attention x v of every block
    # every token passes every block linear once (the head and an attention pool less): a floor the count must reach
    assert macs >= (linear - 48 * 4) * tokens * 0.9 + attention * 0.9


def test_the_head_refusals_name_why():
    for arch in ("vit_relpos_base_patch16_224", "vit_base_patch16_rope_mixed_224"):
        model = mattering(arch, {}, dtype=torch.float32)
        with pytest.raises(UserError, match="--prune heads cannot remove heads here: .*; prune its MLPs only"):
            adapter_for(model).sites("heads")
    naflex = timm.create_model("naflexvit_base_patch16_gap", img_size=32, patch_size=8, depth=1, num_classes=4, embed_dim=48,
                               num_heads=4)
    with pytest.raises(UserError, match="unsupported architecture NaFlexVit.*register_family"):
        adapter_for(naflex)


def test_an_attention_pool_reads_every_token_it_pools():
    eva = adapter_for(mattering("vit_pe_core_small_patch16_384", {}, dtype=torch.float32))
    siglip = adapter_for(mattering("vit_base_patch16_siglip_224", dict(class_token=True), dtype=torch.float32))
    assert eva.layout.pool == "map" and eva.resolve_scope("auto") == "all" and eva.head_tokens is None
    assert siglip.resolve_scope("auto") == "patches"  # timm's ViT attention pool skips the prefix tokens
    with pytest.raises(UserError, match="token-scope cls"):
        eva.resolve_scope("cls")


def test_a_family_registered_from_outside_is_used(tmp_path):
    """README "Extending vitprune": a family is a FamilyAdapter subclass registered by name."""
    from vitprune.model.families.vit import ViTAdapter

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.blocks, self.head, self.num_classes = inner.blocks, inner.head, inner.num_classes
            self.patch_embed, self.num_prefix_tokens, self.cls_token, self.norm = (inner.patch_embed, inner.num_prefix_tokens,
                                                                                   inner.cls_token, inner.norm)
            self.global_pool = "token"

        def forward(self, x):
            return self.inner(x)

        def forward_head(self, x):
            return self.inner.forward_head(x)

    @vitprune.register_family("wrapped", help="a ViT inside a wrapper (test)")
    class WrappedAdapter(ViTAdapter):
        name = "wrapped"

        @classmethod
        def matches(cls, model):
            return isinstance(model, Wrapped)

    try:
        model = Wrapped(mattering("vit_tiny_patch16_224", {}, dtype=torch.float32))
        adapter = adapter_for(model)
        assert adapter.name == "wrapped" and adapter.depth == 3
        mask = _mask(model.inner, ("mlp",), 0.5)
        pruned = slice_sites(model, mask)
        assert adapter_for(pruned).hidden_widths == mask.kept_counts
    finally:
        FAMILIES.remove("wrapped")


# ------------------------------------------------------------------------------ defects found on accepted models
def test_target_macs_with_norms_inside_the_mlp_and_attention(tmp_path):
    """scale_mlp_norm / scale_attn_norm (every beit3_*): the MAC probe resizes a site up again (fresh norms, not slices)."""
    model = mattering("vit_base_patch16_224", dict(scale_mlp_norm=True, scale_attn_norm=True), dtype=torch.float32)
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    from torch.utils.data import TensorDataset

    data = (TensorDataset(x[:16], torch.arange(16) % 4), TensorDataset(x[16:], torch.arange(8) % 4))
    result = vitprune.compress(model, data, target_macs=0.6, prune="mlp,heads", criterion="magnitude", head_criterion="weight",
                               compensate="lsq", per_class=4, quiet=True)
    assert abs(result.report.macs.ratio - 0.6) < 0.02


def test_output_projections_without_a_bias_reload_after_least_squares(tmp_path):
    """proj_bias=False (AIMv2): least squares gives fc2 a bias; the checkpoint records it and loads back."""
    from torch.utils.data import TensorDataset

    model = mattering("vit_tiny_patch16_224", dict(proj_bias=False), dtype=torch.float32)
    assert adapter_for(model).site(0).out_proj.bias is None
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    data = (TensorDataset(x[:16], torch.arange(16) % 4), TensorDataset(x[16:], torch.arange(8) % 4))
    for compensate in ("lsq", "mean"):
        result = vitprune.compress(model, data, sparsity=0.5, criterion="magnitude", compensate=compensate, per_class=4,
                                   quiet=True)
        folder = result.save(tmp_path / compensate)
        back = vitprune.load_model(str(folder))
        with torch.no_grad():
            assert torch.equal(back(x[:2]), result.model(x[:2]))


def test_diff_attention_matmuls_are_counted():
    """DiffAttention (vit_dwee_*): two softmax maps per head, computed functionally — counted, not left out."""
    model = mattering("vit_dwee_patch16_reg1_gap_256", {}, dtype=torch.float32)
    plain = mattering("vit_base_patch16_224", dict(class_token=False, reg_tokens=1, global_pool="avg"), dtype=torch.float32)
    tokens = adapter_for(model).tokens
    diff = count_macs_params(model)[0] - count_macs_params(plain)[0]
    # its q and k are twice as wide per head (two maps), so its q k^T costs twice a plain one: the count grows by it
    assert diff >= 0.9 * adapter_for(model).depth * tokens * tokens * 48


def test_state_dict_advice_names_every_difference_at_once(tmp_path):
    from vitprune.model.load import load_model

    gap = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**SMALL, "class_token": False, "global_pool": "avg",
                                                                        "fc_norm": False})
    torch.save(gap.state_dict(), tmp_path / "gap.pth")
    with pytest.raises(UserError, match="class_token=false,global_pool=avg"):
        load_model(str(tmp_path / "gap.pth"), arch="vit_tiny_patch16_224", model_args={k: v for k, v in SMALL.items()
                                                                                      if k != "num_classes"})
    loaded = load_model(str(tmp_path / "gap.pth"), arch="vit_tiny_patch16_224",
                        model_args={**{k: v for k, v in SMALL.items() if k != "num_classes"}, "class_token": False,
                                    "global_pool": "avg", "fc_norm": False})
    assert adapter_for(loaded).layout.pool == "avg"
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**SMALL, "reg_tokens": 2, "no_embed_class": True})
    torch.save(plain.state_dict(), tmp_path / "reg.pth")
    with pytest.raises(UserError, match="no_embed_class=true"):  # its grid skips the prefix tokens; the architecture's does not
        load_model(str(tmp_path / "reg.pth"), arch="vit_tiny_patch16_224",
                   model_args={**{k: v for k, v in SMALL.items() if k != "num_classes"}, "reg_tokens": 2})


def test_a_one_channel_model_of_an_rgb_architecture_records_one_channel_statistics(tmp_path, fashion_dir):
    from vitprune.model.adapter import data_config

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7, in_chans=1, num_classes=10,
                              embed_dim=32, depth=2, num_heads=2)
    torch.save(model.state_dict(), tmp_path / "gray.pth")
    loaded = vitprune.load_model(str(tmp_path / "gray.pth"), arch="vit_tiny_patch16_224",
                                 model_args=dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2))
    cfg = data_config(loaded)
    assert len(cfg["mean"]) == 1 and len(cfg["std"]) == 1 and cfg["input_size"][0] == 1
    result = vitprune.compress(loaded, "demo", sparsity=0.5, criterion="magnitude", compensate="none", per_class=2,
                               classes=(0, 1), eval_per_class=1, quiet=True)
    folder = result.save(tmp_path / "c")
    import json

    saved = json.loads((folder / "vitprune.json").read_text())["pretrained_cfg"]
    assert len(saved["mean"]) == 1 and len(saved["std"]) == 1


@pytest.mark.parametrize("family,arch,extra", CASES)
def test_a_class_specialised_model_outputs_the_dense_rows(family, arch, extra):
    """--specialize before any pruning: k outputs, equal to the dense model's logits of those classes, in their order."""
    model = mattering(arch, extra)
    classes = (3, 0)
    special = adapter_for(model).restrict_classes(classes)
    x = _images(2)
    with torch.no_grad():
        dense, got = model(x), special(x)
    assert got.shape == (2, 2) and adapter_for(special).num_classes == 2
    assert torch.allclose(got, dense[:, list(classes)], rtol=0, atol=1e-12)  # a smaller GEMM: the same to rounding
    assert model.num_classes == 4  # the caller's model is untouched
