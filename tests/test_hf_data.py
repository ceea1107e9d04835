"""Data in the Hugging Face ecosystem (``hf:DIR`` / ``hf:NAME``): folders written by ``datasets`` (save_to_disk, parquet
with a ClassLabel or with plain integer labels), the --split / --eval-split / --image-column / --label-column options,
the offline message; and seeded ``random:`` models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vitprune
from vitprune.app.cli import main

from .helpers import last_line

FAST = ["--per-class", "2", "--steps", "2", "--sparsity", "0.5", "--criterion", "magnitude", "--compensate", "none", "--no-export",
        "--quiet"]
NAMES = [f"c{i}" for i in range(10)]


def _split(n_per_class: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L") for _ in range(10 * n_per_class)]
    return {"picture": images, "y": [i % 10 for i in range(10 * n_per_class)]}


def _dataset_dict(labels: str):
    import datasets

    label = datasets.ClassLabel(names=NAMES) if labels == "classlabel" else datasets.Value("int64")
    features = datasets.Features(picture=datasets.Image(), y=label)
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(_split(3, 0), features=features),
                                 "holdout": datasets.Dataset.from_dict(_split(2, 1), features=features)})


@pytest.mark.parametrize("layout,labels", [("save_to_disk", "classlabel"), ("parquet", "classlabel"), ("parquet", "int")])
def test_hf_folders_with_split_and_column_options(model_dir, tmp_path, layout, labels):
    dsd = _dataset_dict(labels)
    folder = tmp_path / "ds"
    if layout == "save_to_disk":
        dsd.save_to_disk(str(folder))
    else:
        (folder / "data").mkdir(parents=True)
        for split, ds in dsd.items():
            ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    out = tmp_path / "o"
    assert main(["compress", "--model", model_dir, "--data", f"hf:{folder}", "--eval-split", "holdout", "--image-column", "picture",
                 "--label-column", "y", *FAST, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["evaluation_images"] == 20 and report["data"]["calibration_images"] == 20
    want = NAMES if labels == "classlabel" else [str(i) for i in range(10)]  # integer labels are named by their ids
    assert report["data"]["classes"] == want
    spec = json.loads((out / "vitprune.json").read_text())["data"]
    assert spec == f"hf:{folder}?eval_split=holdout&image_column=picture&label_column=y"  # the checkpoint names the data fully
    assert main(["export", "--model", str(out)]) == 0  # and export reads it back without the flags


def test_hf_option_refusals(model_dir, tmp_path, capsys):
    folder = tmp_path / "ds"
    _dataset_dict("classlabel").save_to_disk(str(folder))
    capsys.readouterr()  # datasets' own progress lines
    cases = [
        (["--data", f"hf:{folder}", "--eval-split", "nope"], "has no split 'nope' for evaluation"),
        (["--data", f"hf:{folder}", "--eval-split", "holdout", "--label-column", "zz"], "has no label column 'zz'"),
        (["--data", f"hf:{folder}", "--split", "holdout", "--eval-split", "holdout"], "both 'holdout'"),
        (["--data", "demo", "--split", "train"], "--split apply to hf: data only"),
    ]
    for argv, message in cases:
        assert main(["compress", "--model", model_dir, *argv, *FAST, "--out", str(tmp_path / "x")]) == 2, argv
        assert message in last_line(capsys.readouterr().err), argv


def test_an_unreachable_hub_dataset_names_the_folder_that_works(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["compress", "--model", model_dir, "--data", "hf:someone/no-such-dataset-xyz", *FAST, "--out", str(tmp_path / "x")]) == 2
    line = last_line(capsys.readouterr().err)
    assert "offline" in line and "save_to_disk('DIR')" in line and "--data hf:DIR" in line


def test_random_models_are_seeded():
    a = vitprune.load_model("random:vit_tiny_patch16_224", model_args={"num_classes": 3, "depth": 1}, seed=7)
    b = vitprune.load_model("random:vit_tiny_patch16_224", model_args={"num_classes": 3, "depth": 1}, seed=7)
    c = vitprune.load_model("random:vit_tiny_patch16_224", model_args={"num_classes": 3, "depth": 1}, seed=8)
    assert a.vitprune_fingerprint == b.vitprune_fingerprint != c.vitprune_fingerprint
    state = torch.random.get_rng_state()
    vitprune.load_model("random:vit_tiny_patch16_224", model_args={"num_classes": 3, "depth": 1})
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is untouched


def test_discover_then_compress_on_the_same_random_spec(tmp_path):
    """The same spec (and seed) is the same model: compress accepts the discover run's paths."""
    args = ["--model", "random:vit_tiny_patch16_224", "--model-args", "num_classes=10,img_size=28,patch_size=7,in_chans=1,depth=2",
            "--data", "demo", "--per-class", "1", "--steps", "2", "--quiet"]
    run = tmp_path / "run"
    assert main(["discover", *args, "--topk", "2", "--out", str(run)]) == 0
    assert main(["compress", *args, "--paths", str(run), "--keep-topk", "2", "--no-export", "--eval-per-class", "2",
                 "--out", str(tmp_path / "c")]) == 0
