"""The written-out block tangent (vitprune.model.tangent) equals torch's forward-mode AD and a finite difference,
the tangent schedule runs on it, and blocks it does not know fall back to forward-mode AD."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.autograd.forward_ad as fwAD
from timm.layers import SwiGLUPacked
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitprune.discovery import jas
from vitprune.discovery.engine import FORWARD_AD_TANGENT_COST, TANGENT_COST, auto_schedule
from vitprune.discovery.finder import PathFinder
from vitprune.discovery.settings import DiscoverySettings
from vitprune.model.adapter import adapter_for
from vitprune.model.hooks import block_input, override_ffn
from vitprune.model.tangent import block_tangent, primal_capture, supports, written_out

from .helpers import tiny_images, tiny_vit

VARIANTS = {
    "plain": dict(),
    "qk_norm": dict(qk_norm=True),
    "layer_scale": dict(init_values=0.3),
    "gelu_tanh": dict(act_layer="gelu_tanh"),
    "scale_norms": dict(scale_attn_norm=True, scale_mlp_norm=True),
    "rms_norm": dict(norm_layer="rmsnorm", qk_norm=True),
    "distilled": "distilled",
}


def _model(kind, dtype=torch.float64):
    if kind == "distilled":
        torch.manual_seed(0)
        return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                                 depth=3, num_heads=2, mlp_ratio=2.0, num_classes=5).eval().to(dtype)
    return tiny_vit(dtype=dtype, **kind)


def _case(model, block=1, tangents=2, seed=0):
    """The block's input on random images, random input tangents, a clamp at the head tokens and its directions."""
    adapter = adapter_for(model)
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = block_input(adapter, tiny_images(3, dtype=dtype), block)
    tokens = adapter.head_tokens
    scope = len(range(*tokens.indices(x.shape[1])))
    width = adapter.hidden_widths[block]
    clamp = torch.randn(len(x), scope, width, generator=gen).to(dtype)
    direction = torch.randn(tangents, len(x), scope, width, generator=gen).to(dtype)
    tangent = torch.randn(tangents, *x.shape, generator=gen).to(dtype)
    return adapter, x, tangent, clamp, direction, tokens


def _forward_ad(adapter, block, x, tangent, clamp, direction, tokens):
    out = []
    for j in range(len(direction)):
        with torch.no_grad(), fwAD.dual_level(), sdpa_kernel([SDPBackend.MATH]), \
                override_ffn(adapter, {block: fwAD.make_dual(clamp, direction[j])}, tokens):
            x_in = x if tangent is None else fwAD.make_dual(x, tangent[j])
            out.append(fwAD.unpack_dual(adapter.blocks[block](x_in)).tangent)
    return torch.stack(out)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*deprecated:FutureWarning")
@pytest.mark.parametrize("kind", VARIANTS)
def test_block_tangent_equals_forward_mode_ad(kind):
    model = _model(VARIANTS[kind])
    adapter, x, tangent, clamp, direction, tokens = _case(model)
    block = adapter.blocks[1]
    assert supports(block)
    for tan in (tangent, None):
        want = _forward_ad(adapter, 1, x, tan, clamp, direction, tokens)
        got = block_tangent(block, x, tan, clamp, direction, tokens)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with torch.no_grad(), primal_capture(block) as kept:
        block(x)
    assert set(kept) == {"qkv", "x1", "fc1", "fc2"}
    torch.testing.assert_close(block_tangent(block, x, tangent, clamp, direction, tokens, kept),
                               block_tangent(block, x, tangent, clamp, direction, tokens), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["plain", "layer_scale", "distilled"])
def test_block_tangent_is_a_derivative(kind):
    """Central finite difference of the clamped block along (tangent, direction), in fp64."""
    model = _model(VARIANTS[kind])
    adapter, x, tangent, clamp, direction, tokens = _case(model, tangents=1)
    eps = 1e-6

    def run(s):
        with torch.no_grad(), override_ffn(adapter, {1: clamp + s * direction[0]}, tokens):
            return adapter.blocks[1](x + s * tangent[0])

    numeric = (run(eps) - run(-eps)) / (2 * eps)
    got = block_tangent(adapter.blocks[1], x, tangent, clamp, direction, tokens)[0]
    torch.testing.assert_close(got, numeric, rtol=1e-6, atol=1e-7)
    assert got[:, tokens].abs().max() > 0 and got[:, tokens.stop:].abs().max() > 0


def _swiglu_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=5,
                             num_heads=2, mlp_ratio=2.0, num_classes=5, mlp_layer=SwiGLUPacked, act_layer="silu").eval()


def test_blocks_it_does_not_know_are_refused():
    model = _swiglu_vit()
    adapter, x, tangent, clamp, direction, tokens = _case(model)
    assert not written_out(adapter.blocks[1]) and not supports(adapter.blocks[1])
    assert block_tangent(adapter.blocks[1], x, tangent, clamp, direction, tokens) is None
    with primal_capture(adapter.blocks[1]) as kept:
        assert kept is None and not adapter.blocks[1].mlp.fc1._forward_hooks
    plain = tiny_vit(dtype=torch.float64)
    block = plain.blocks[1]
    assert supports(block)
    handle = block.mlp.fc1.register_forward_hook(lambda _m, _a, out: out * 2)  # a hook may change what it computes
    assert written_out(block) and not supports(block)
    handle.remove()
    block.train()
    assert not supports(block)
    block.eval()
    assert supports(block)


def _fallbacks(monkeypatch) -> list[int]:
    calls = []
    real = jas._forward_mode_tangent

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jas, "_forward_mode_tangent", counting)
    return calls


def _finder(model, schedule, **settings):
    finder = PathFinder(model, DiscoverySettings(topk=2, steps=4, **settings))
    finder.schedule = schedule
    return finder


def _records(model, schedule, x, y, **settings):
    return _finder(model, schedule, **settings).find_batch(x, y)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*deprecated:FutureWarning")
@pytest.mark.parametrize("kind", ["plain", "qk_norm", "distilled"])
def test_tangent_schedule_runs_the_written_out_tangent(monkeypatch, kind):
    model = _model(VARIANTS[kind], torch.float32)
    x, y = tiny_images(3), torch.tensor([0, 3, 1])
    calls = _fallbacks(monkeypatch)
    finder = _finder(model, "tangent", max_rows=12)  # no memory probe
    found = finder.find_batch(x, y)
    assert calls == []
    # no block runs outside the passes: the carried stream comes from the step's pass too
    L, rows = len(model.blocks), 4 * len(x)
    assert finder.stats.block_rows == len(x) * L + rows * (L + sum(L - t for t in range(1, L)) + 1 + L)
    want = _records(model, "kept", x, y)
    for a, b in zip(found.records, want.records, strict=True):
        assert a.path == b.path and a.score == pytest.approx(b.score, rel=1e-5)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*deprecated:FutureWarning")
def test_unknown_blocks_fall_back_to_forward_mode_ad(monkeypatch):
    model = _swiglu_vit()
    x, y = tiny_images(3), torch.tensor([0, 3, 1])
    calls = _fallbacks(monkeypatch)
    found = _records(model, "tangent", x, y)
    assert len(calls) == len(model.blocks) - 1  # one carried block per greedy step 1..L-1, one scope token
    want = _records(model, "recompute", x, y)
    for a, b in zip(found.records, want.records, strict=True):
        assert a.path == b.path and a.score == pytest.approx(b.score, rel=1e-5)


def test_auto_schedule_prices_the_fallback():
    depth = int(2 * TANGENT_COST) + 1
    assert depth <= 2 * FORWARD_AD_TANGENT_COST
    assert auto_schedule(depth, 1) == "tangent" and auto_schedule(depth, 1, written_out=False) == "kept"
    assert PathFinder(tiny_vit(depth=depth), DiscoverySettings()).engine.resolved_schedule() == "tangent"
    assert PathFinder(_swiglu_vit(), DiscoverySettings()).engine.resolved_schedule() == "kept"  # 5 blocks, forward-mode AD
