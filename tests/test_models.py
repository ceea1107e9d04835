"""load_model: every checkpoint kind round-trips exactly; bad checkpoints are one-line user errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from vitprune.model.adapter import adapter_for
from vitprune.errors import UserError
from vitprune.model.load import load_model

from .helpers import save_tiny_fashion_model, tiny_images, tiny_vit, to_google_npz


def _same_logits(a, b, size):
    x = tiny_images(2, size=size)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_google_npz_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("test_vit", pretrained=False, num_classes=7).eval()
    to_google_npz(src, tmp_path / "ViT-test.npz")
    loaded = load_model(str(tmp_path / "ViT-test.npz"), arch="test_vit")
    assert loaded.num_classes == 7
    assert _same_logits(src, loaded, 160)


def test_npz_position_embedding_resampled_like_the_reference(tmp_path):
    """A 224-grid (14x14) checkpoint run at 160 (10x10): scipy.ndimage.zoom(order=1), as the reference."""
    from scipy.ndimage import zoom

    torch.manual_seed(0)
    src = timm.create_model("test_vit", pretrained=False, num_classes=7, img_size=224).eval()
    to_google_npz(src, tmp_path / "big.npz")
    loaded = load_model(str(tmp_path / "big.npz"), arch="test_vit")
    pos = src.pos_embed.detach().numpy()[0]
    grid = pos[1:].reshape(14, 14, -1)
    want = zoom(grid, (10 / 14, 10 / 14, 1), order=1).reshape(100, -1)
    got = loaded.pos_embed.detach().numpy()[0]
    np.testing.assert_allclose(got[0], pos[0], atol=1e-7)
    np.testing.assert_allclose(got[1:], want, atol=1e-5)


def test_state_dict_files_roundtrip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = timm.create_model("test_vit", pretrained=False, num_classes=4, global_pool="avg").eval()
    torch.save({"model": src.state_dict()}, tmp_path / "mae.pth")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("mae.pth", "w.safetensors"):
        with pytest.raises(UserError, match="global_pool=avg"):  # the architecture's token pooling does not fit: never guessed
            load_model(str(tmp_path / name), arch="test_vit")
        loaded = load_model(str(tmp_path / name), arch="test_vit", model_args={"global_pool": "avg"})
        assert adapter_for(loaded).layout.pool == "avg"
        assert _same_logits(src, loaded, 160)


def test_vitprune_folder_roundtrip(tmp_path):
    save_tiny_fashion_model(tmp_path / "ckpt")
    a, b = load_model(str(tmp_path / "ckpt")), load_model(str(tmp_path / "ckpt"))
    assert a.pretrained_cfg["mean"] == [0.286]
    x = tiny_images(2, size=28, chans=1)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_random_timm_name_needs_no_network():
    model = load_model("random:test_vit")
    assert model.vitprune_source["arch"] == "test_vit"


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda p: str(p / "missing.pth"), "does not exist"),
        (lambda p: (p / "bad.pth").write_bytes(b"not a checkpoint") and str(p / "bad.pth"), "corrupt"),
        (lambda p: (p / "bad.safetensors").write_bytes(b"\x00\x01garbage") and str(p / "bad.safetensors"), "corrupt"),
        (lambda p: "no_such_model_xyz", "neither a file"),
    ],
)
def test_bad_model_specs(tmp_path, make, fragment):
    with pytest.raises(UserError, match=fragment):
        load_model(make(tmp_path))


def test_architecture_mismatch(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("test_vit", pretrained=False, num_classes=4).eval()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    with pytest.raises(UserError, match="does not fit architecture 'vit_tiny_patch16_224'"):
        load_model(str(tmp_path / "w.pth"), arch="vit_tiny_patch16_224")
    with pytest.raises(UserError, match="pass --arch"):
        load_model(str(tmp_path / "w.pth"))  # non-standard width: cannot infer


def test_hub_name_without_network_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot fetch pretrained weights for 'test_vit'.*random:test_vit"):
        load_model("test_vit")


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(global_pool="avgmax"), "unsupported pooling"),
        (dict(mlp_layer="gated"), "no MLP layout handles"),
        (dict(num_classes=0), "no classification head"),
    ],
)
def test_adapter_refusals(kwargs, fragment):
    from timm.layers import GatedMlp

    if kwargs.get("mlp_layer") == "gated":  # timm's GatedMlp (a spatial gate): no layout maps it to units
        kwargs = dict(mlp_layer=GatedMlp)
    model = tiny_vit(**kwargs)
    with pytest.raises(UserError, match=fragment):
        adapter_for(model)


def test_adapter_refuses_non_vit():
    with pytest.raises(UserError, match="unsupported architecture"):
        adapter_for(torch.nn.Linear(2, 2))


def test_zoo_models_load_with_their_recipes():
    """Every bundled zoo model loads by name and is built as its committed recipe says (weights + training log)."""
    import json

    import yaml

    from vitprune.model.adapter import adapter_for
    from vitprune.model.load import ZOO_DIR, load_model, zoo_models

    names = zoo_models()
    assert len(names) >= 2
    recipes = {yaml.safe_load(p.read_text())["out"]: yaml.safe_load(p.read_text())
               for p in (Path(__file__).resolve().parents[1] / "recipes").glob("zoo_*.yaml")}
    for name in names:
        recipe = recipes[f"vitprune/assets/zoo/{name}"]
        model = load_model(f"zoo:{name}")
        kw = recipe["model_kwargs"]
        adapter = adapter_for(model)
        packed = adapter.sites()[0].layout.__name__ == "PackedGluMlp"  # fc1 holds value and gate halves
        units = int(kw["embed_dim"] * kw["mlp_ratio"]) // (2 if packed else 1)
        assert adapter.depth == kw["depth"] and adapter.hidden_widths == [units] * kw["depth"]
        assert adapter.layout.pool == kw["global_pool"]
        log = json.loads((ZOO_DIR / name / "train_log.json").read_text())
        assert log["epochs"] == recipe["train"]["epochs"] and 0.5 < log["test_top1"] <= 1
    with pytest.raises(UserError, match="unknown zoo model"):
        load_model("zoo:nope")
