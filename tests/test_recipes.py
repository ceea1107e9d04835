"""Every compression recipe in recipes/ parses and runs end to end, its model swapped for a tiny random model
of the same family (same checkpoint format and loader) and its data for a tiny image folder in ImageNet layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from vitprune.app.cli import main

from .helpers import to_google_npz

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
COMPRESS = sorted(p for p in RECIPES.glob("*.yaml") if "train" not in yaml.safe_load(p.read_text()))
FAST = ["--per-class", "1", "--eval-per-class", "1", "--steps", "2", "--batch-size", "2", "--latency-rounds", "1", "--keep-slower-int8",
        "--max-int8-drop", "100", "--quiet"]


def test_every_yaml_is_a_training_or_a_compression_recipe():
    names = {p.name for p in COMPRESS}
    assert {"vit_b16_imagenet.yaml", "vit_b32_imagenet.yaml", "vit_l32_imagenet.yaml", "mae_b16_imagenet.yaml",
            "deit_small_imagenet.yaml", "demo_compress.yaml"} <= names
    for path in RECIPES.glob("*.yaml"):
        recipe = yaml.safe_load(path.read_text())
        assert ("train" in recipe) != (path.name in names), path.name


@pytest.fixture(scope="module")
def imagenet_layout(tmp_path_factory) -> Path:
    """DIR/train/<class>/ and DIR/val/<class>/, 2 classes x 2 RGB JPEGs each."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("n01440764", "n01443537"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(root / split / c / f"{i}.JPEG")
    return root


def stand_in(model_spec: str, folder: Path) -> list[str]:
    """--model/--arch of a tiny random model loaded through the same path as ``model_spec``."""
    torch.manual_seed(0)
    if model_spec == "demo":
        return []
    if model_spec.endswith(".npz"):  # Google ViT checkpoints
        path = folder / "tiny.npz"
        to_google_npz(timm.create_model("test_vit", pretrained=False, num_classes=2).eval(), path)
    elif model_spec.endswith((".pth", ".pt")):  # MAE fine-tuned {'model': state dict}, average-pooled with fc_norm
        path = folder / "tiny_mae.pth"
        mae = timm.create_model("test_vit2", pretrained=False, num_classes=2)
        torch.save({"model": {k: v for k, v in mae.state_dict().items() if not k.startswith("norm.")}}, path)
    else:  # a timm hub name: the same weights as a local state dict (no network in tests)
        path = folder / "tiny.pth"
        torch.save(timm.create_model("test_vit", pretrained=False, num_classes=2).state_dict(), path)
    arch = "test_vit2" if model_spec.endswith((".pth", ".pt")) else "test_vit"
    return ["--model", str(path), "--arch", arch]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", COMPRESS, ids=[p.stem for p in COMPRESS])
def test_recipe_runs_end_to_end_on_a_tiny_stand_in(recipe, imagenet_layout, tmp_path, fashion_dir):
    spec = yaml.safe_load(recipe.read_text())
    assert spec.get("model") and spec.get("data")
    swap = stand_in(spec["model"], tmp_path)
    data = [] if spec["data"] == "demo" else ["--data", f"imagefolder:{imagenet_layout}"]
    out = tmp_path / "out"
    assert main(["compress", "--config", str(recipe), *swap, *data, *FAST, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("criterion", "compensate", "sparsity", "target_macs", "keep_topk"):  # the recipe's choices reached the run
        if key.replace("_", "-") in spec:
            assert report["options"][key] == spec[key.replace("_", "-")], key
    assert (out / "model.onnx").is_file() and (out / "config.yaml").is_file()
    if spec.get("quantize") == "int8":
        assert report["int8"]["written"] and (out / "model.int8.onnx").is_file()
