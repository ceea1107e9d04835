"""Trust: vitprune never destroys what it did not write, refuses records of another model, data, settings or images,
builds models from timm's configuration (never a guess), and never overrides an option silently."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vitprune.app.cli import main
from vitprune.discovery.records import CONFIG, PARTIAL, PATHS
from vitprune.errors import UserError
from vitprune.model.load import load_model

from .helpers import FASHION_DATA_CONFIG, save_tiny_fashion_model, tiny_images, last_line

DISCOVER = ["--per-class", "2", "--topk", "2", "--steps", "2", "--batch-size", "4", "--quiet"]
CHEAP = ["--per-class", "2", "--eval-per-class", "2", "--quiet"]


def _err(capsys) -> str:
    err = capsys.readouterr().err
    return last_line(err)


def _command(command: str, model: str, out) -> list[str]:
    """A cheap run of every command that writes a folder or a file."""
    return {
        "discover": ["discover", "--model", model, "--data", "demo", *DISCOVER, "--out", str(out)],
        "compress": ["compress", "--model", model, "--data", "demo", *CHEAP, "--sparsity", "0.5", "--criterion", "magnitude",
                     "--compensate", "none", "--no-export", "--out", str(out)],
        "evaluate": ["evaluate", "--model", model, "--data", "demo", *CHEAP, "--criteria", "magnitude", "--compensate", "none",
                     "--sparsities", "0.5", "--out", str(out)],
    }[command]


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["discover", "--model", model_dir, "--data", "demo", *DISCOVER, "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------------------- ownership
@pytest.mark.parametrize("command", ["discover", "compress", "evaluate", "convert", "analyze"])
def test_force_never_removes_a_file_vitprune_did_not_write(command, model_dir, run, tmp_path, capsys, fashion_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")
    if command == "convert":
        argv = ["convert", str(run), str(out), "--force"]
    elif command == "analyze":
        argv = ["analyze", "scores", "--paths", str(run), "--out", str(out), "--force"]
    else:
        argv = [*_command(command, model_dir, out), "--force"]
    assert main(argv) == 2
    assert "did not write (thesis.txt)" in _err(capsys)
    assert (out / "thesis.txt").read_text() == "three years of work" and sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


@pytest.mark.slow
def test_export_never_replaces_a_foreign_file_or_its_own_input(model_dir, tmp_path, capsys, fashion_dir):
    ckpt = tmp_path / "c"
    assert main(_command("compress", model_dir, ckpt)) == 0
    weights = (ckpt / "model.safetensors").read_bytes()
    assert main(["export", str(ckpt), "--out", str(ckpt / "model.safetensors"), "--force"]) == 2
    assert "must name an .onnx" in _err(capsys) and (ckpt / "model.safetensors").read_bytes() == weights
    foreign = tmp_path / "mine.onnx"
    foreign.write_bytes(b"a model I made by hand")
    assert main(["export", str(ckpt), "--out", str(foreign), "--force"]) == 2
    assert "not an ONNX model vitprune wrote" in _err(capsys) and foreign.read_bytes() == b"a model I made by hand"
    assert main(["export", str(ckpt)]) == 0 and main(["export", str(ckpt), "--force"]) == 0  # its own file: replaced
    assert "model.onnx" in json.loads((ckpt / ".vitprune" / "manifest.json").read_text())["files"]


@pytest.mark.parametrize("where", ["model", "data", "inside-data"])
def test_an_output_that_overlaps_an_input_is_refused(where, model_dir, tmp_path, capsys, fashion_dir):
    root = tmp_path / "images"
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(root / f"c{c}" / "0.png")
        Image.fromarray(np.ones((28, 28), dtype=np.uint8)).save(root / f"c{c}" / "1.png")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = {"model": model_dir, "data": root, "inside-data": root / "c0"}[where]
    argv = ["compress", "--model", model_dir, "--data", f"imagefolder:{root}", "--per-class", "1", "--sparsity", "0.5",
            "--criterion", "magnitude", "--compensate", "none", "--no-export", "--quiet", "--out", str(out), "--force"]
    assert main(argv) == 2
    assert "overlaps the input" in _err(capsys)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# -------------------------------------------------------------------------------------- transactions
@pytest.mark.slow
@pytest.mark.parametrize("command", ["compress", "evaluate"])
def test_a_late_failure_then_the_corrected_run_equals_a_clean_run(command, model_dir, tmp_path, monkeypatch, fashion_dir):
    """A run that fails after its expensive work leaves the folder as it was (but its resumable discovery), and the
    corrected rerun needs no --force and gives the clean run's result."""
    import sys

    import vitprune.api

    sweep_api = sys.modules['vitprune.api._evaluate']
    from vitprune.reports import CompressReport

    common = ["--model", model_dir, "--data", "demo", *CHEAP, "--steps", "2", "--criterion", "jas-freq", "--compensate", "none",
              *(["--no-export"] if command == "compress" else ["--seed", "0"])]
    budget = ["--sparsity", "0.5"]
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert main([command, *common, *budget, "--out", str(clean)]) == 0
    owner, name = (CompressReport, "markdown") if command == "compress" else (sweep_api, "write_sweep_outputs")
    real = getattr(owner, name)

    def late(*a, **k):
        raise RuntimeError("disk trouble while writing the report")

    monkeypatch.setattr(owner, name, late)
    with pytest.raises(RuntimeError):
        main([command, *common, *budget, "--out", str(out)])
    assert not (out / ("report.json" if command == "compress" else "results.json")).exists()
    monkeypatch.setattr(owner, name, real)
    assert main([command, *common, *budget, "--out", str(out)]) == 0  # no --force: the folder holds only vitprune's state
    if command == "compress":
        assert (out / "mask.json").read_text() == (clean / "mask.json").read_text()
    else:
        untimed = [[{k: v for k, v in p.items() if k != "compensation_s"} for p in json.loads((f / "results.json").read_text())["points"]]
                   for f in (out, clean)]
        assert untimed[0] == untimed[1]


@pytest.mark.parametrize("extra,fragment", [
    (["--sparsity", "0.5", "--compensate", "lsq", "--per-class", "1", "--classes", "3"], "at least 2 calibration images"),
    (["--keep-topk", "1000"], "--keep-topk 1000"),
    (["--target-macs", "0.05"], "below what the model can reach"),
    (["--sparsity", "0.5", "--min-keep", "1000"], "0.00% sparsity"),
    (["--sparsity", "0.5", "--round-to", "1000"], "--round-to 1000"),
])
def test_bad_combinations_are_refused_before_any_work(extra, fragment, model_dir, tmp_path, capsys, fashion_dir):
    out = tmp_path / "o"
    assert main(["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", *extra, "--quiet", "--out", str(out)]) == 2
    assert fragment in _err(capsys)
    assert not out.exists()


# ---------------------------------------------------------------------------------------- provenance
def _compress_paths(model, paths, out, *extra):
    return main(["compress", "--model", str(model), "--data", "demo", "--per-class", "2", "--keep-topk", "2", "--criterion",
                 "jas-freq", "--compensate", "none", "--paths", str(paths), "--no-export", "--quiet", *extra, "--out", str(out)])


def test_path_head_scores_need_the_path_of_every_calibration_image(model_dir, run, tmp_path, capsys, fashion_dir):
    heads = ["--target-macs", "0.6", "--prune", "mlp,heads", "--head-criterion", "path", "--criterion", "jas-freq",
             "--compensate", "none", "--paths", str(run), "--eval-per-class", "2", "--no-export", "--quiet"]
    common = ["compress", "--model", model_dir, "--data", "demo", *heads]
    assert main([*common, "--per-class", "3", "--out", str(tmp_path / "more")]) == 2  # the run has 2 images per class
    assert "lacks 10 of them" in _err(capsys)
    assert main([*common, "--per-class", "2", "--out", str(tmp_path / "same")]) == 0
    report = json.loads((tmp_path / "same" / "report.json").read_text())
    assert report["mask"]["head_criterion"] == "path" and report["discovery"]["run"] == str(run)


def test_records_of_another_model_with_the_same_shapes(run, tmp_path, capsys, fashion_dir):
    twin = save_tiny_fashion_model(tmp_path / "twin", seed=5)  # same architecture, other weights
    assert _compress_paths(twin, run, tmp_path / "c") == 2
    assert "another model" in _err(capsys)


@pytest.mark.slow
def test_records_of_the_pruned_model_on_the_dense_model(model_dir, run, tmp_path, capsys, fashion_dir):
    pruned = tmp_path / "pruned"
    assert main(["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", "--keep-topk", "2", "--paths", str(run),
                 "--compensate", "none", "--no-export", "--quiet", "--out", str(pruned)]) == 0
    on_pruned = tmp_path / "run-pruned"
    assert main(["discover", "--model", str(pruned), "--data", "demo", *DISCOVER, "--out", str(on_pruned)]) == 0
    records = [json.loads(line) for line in (on_pruned / PATHS).read_text().splitlines()]
    kept = json.loads((pruned / "mask.json").read_text())["kept"]
    assert all(d == [[kept[b][u] for u in units] for b, units in enumerate(r["path"])]
               for r in records for d in [r["dense_path"]])  # the dense model's index of every path unit
    assert _compress_paths(model_dir, on_pruned, tmp_path / "c") == 2
    assert "pruned model's records on the dense model" in _err(capsys) or "beyond this model" in capsys.readouterr().err


def test_records_of_the_evaluation_images_or_too_few_classes(model_dir, tmp_path, capsys, fashion_dir):
    evaluation = tmp_path / "on-eval"
    assert main(["discover", "--model", model_dir, "--data", "demo", *DISCOVER, "--pool", "evaluation", "--out", str(evaluation)]) == 0
    assert _compress_paths(model_dir, evaluation, tmp_path / "c") == 2
    assert "images of the evaluation pool" in _err(capsys)
    few = tmp_path / "few"
    assert main(["discover", "--model", model_dir, "--data", "demo", *DISCOVER, "--classes", "0-2", "--out", str(few)]) == 0
    assert _compress_paths(model_dir, few, tmp_path / "c") == 2
    assert "cover no image of class(es) 3, 4" in _err(capsys)


def test_discovery_options_given_with_paths_must_match_the_run(model_dir, run, tmp_path, capsys, fashion_dir):
    assert _compress_paths(model_dir, run, tmp_path / "c", "--steps", "20") == 2
    assert "steps=2, not the --steps 20" in _err(capsys)
    assert _compress_paths(model_dir, run, tmp_path / "c") == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["discovery"]["steps"] == 2 and report["discovery"]["run"] == str(run) and report["data"]["overlap"] == 0


def test_resume_after_the_weights_changed_or_with_foreign_records(model_dir, tmp_path, capsys, fashion_dir):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"  # influence pattern: no dense importance, whose uncommitted records a resume redoes anyway
    args = ["discover", "--model", model_dir, "--data", "demo", *DISCOVER, "--method", "influence-pattern", "--out", str(out)]
    assert main(args) == 0
    lines = (out / PATHS).read_text().splitlines(keepends=True)
    (out / PATHS).unlink()
    (out / PARTIAL).write_text("".join(lines[:4]).replace('"topk": 2', '"topk": 1'))
    assert main([*args, "--resume"]) == 2
    assert "other settings (topk=1)" in _err(capsys)
    changed = tmp_path / "changed"
    import shutil

    shutil.copytree(model_dir, changed)
    weights = load_file(str(changed / "model.safetensors"))
    weights["head.bias"] += 1.0
    save_file(weights, str(changed / "model.safetensors"))
    (out / PARTIAL).write_text("".join(lines[:4]))
    again = ["discover", "--model", str(changed), "--data", "demo", *DISCOVER, "--method", "influence-pattern", "--out",
             str(out), "--resume"]
    assert main(again) == 2
    assert "other weights than" in _err(capsys)  # the checkpoint's own configuration knows its weights
    config = json.loads((changed / "vitprune.json").read_text())
    del config["weights_fingerprint"]  # a checkpoint of vitprune 0.1: the run's header still tells
    (changed / "vitprune.json").write_text(json.dumps(config))
    assert main(again) == 2
    assert "model.fingerprint" in _err(capsys)


# ------------------------------------------------------------------------------------------- loading
def _state_dict(tmp_path, name="w.pth", arch="vit_tiny_patch16_224", **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    torch.save(model.state_dict(), tmp_path / name)
    return model, str(tmp_path / name)


def _same(a, b, size, chans=3):
    x = tiny_images(2, size=size, chans=chans)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


TINY = dict(embed_dim=32, depth=2, num_heads=2, num_classes=5)


def test_pooling_normalisation_and_resolution_come_from_the_configuration(tmp_path):
    src, path = _state_dict(tmp_path, global_pool="avg", fc_norm=False, img_size=96, patch_size=8, **TINY)
    with pytest.raises(UserError, match="img_size=96"):  # the arch's 224 px grid does not fit: never run at 224
        load_model(path, arch="vit_tiny_patch16_224", model_args={**TINY, "patch_size": 8})
    with pytest.raises(UserError, match="patch_size=8"):
        load_model(path, arch="vit_tiny_patch16_224", model_args={**TINY, "img_size": 96})
    same_keys = load_model(path, arch="vit_tiny_patch16_224", model_args={**TINY, "img_size": 96, "patch_size": 8})
    assert same_keys.global_pool == "token"  # an avg-pooled model without fc_norm has a token model's keys: what you say wins
    model = load_model(path, arch="vit_tiny_patch16_224",
                       model_args={**TINY, "img_size": 96, "patch_size": 8, "global_pool": "avg", "fc_norm": False})
    assert _same(src, model, 96)
    gap, gap_path = _state_dict(tmp_path, "gap.pth", "vit_base_patch16_gap_224", **TINY, img_size=32)
    assert _same(gap, load_model(gap_path, arch="vit_base_patch16_gap_224", model_args={**TINY, "img_size": 32}), 32)


def test_mae_statistics_come_from_the_architectures_pretrained_config(tmp_path):
    src, path = _state_dict(tmp_path, global_pool="avg", img_size=32, patch_size=8, **TINY)
    with pytest.raises(UserError, match="global_pool=avg"):
        load_model(path, arch="vit_tiny_patch16_224", model_args={**TINY, "img_size": 32, "patch_size": 8})
    plain = load_model(path, arch="vit_tiny_patch16_224", model_args={**TINY, "img_size": 32, "patch_size": 8, "global_pool": "avg"})
    assert tuple(plain.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)  # augreg ViTs: no ImageNet statistics forced on them
    mae = load_model(path, arch="vit_base_patch16_224.mae", model_args={**TINY, "img_size": 32, "patch_size": 8, "global_pool": "avg"})
    assert tuple(mae.pretrained_cfg["mean"]) == pytest.approx((0.485, 0.456, 0.406)) and _same(src, mae, 32)


def test_depth_and_classes_and_non_finite_weights(tmp_path):
    src, path = _state_dict(tmp_path, img_size=32, patch_size=8, **{**TINY, "depth": 4})
    with pytest.raises(UserError, match="depth=4"):
        load_model(path, arch="vit_tiny_patch16_224", model_args={**TINY, "img_size": 32, "patch_size": 8})
    model = load_model(path, arch="vit_tiny_patch16_224", model_args={**TINY, "img_size": 32, "patch_size": 8, "depth": 4})
    assert _same(src, model, 32)
    sd = src.state_dict()
    sd["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(UserError, match="non-finite weights"):
        load_model(str(tmp_path / "nan.pth"), arch="vit_tiny_patch16_224", model_args={**TINY, "img_size": 32, "patch_size": 8, "depth": 4})


def test_a_timm_hugging_face_folder_loads_as_timm_loads_it(tmp_path):
    from timm.models import save_for_hf

    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, **TINY).eval()
    save_for_hf(src, str(tmp_path / "hf"), safe_serialization=True)
    model = load_model(str(tmp_path / "hf"))
    assert _same(src, model, 32) and model.vitprune_source["arch"] == "vit_tiny_patch16_224"


def test_vitprune_json_is_the_folders_configuration(tmp_path, capsys):
    ckpt = save_tiny_fashion_model(tmp_path / "m")
    meta = json.loads((ckpt / "vitprune.json").read_text())
    (ckpt / "vitprune.json").write_text(json.dumps({**meta, "data_config": {**FASHION_DATA_CONFIG, "mean": [0.5]}}))
    assert load_model(str(ckpt)).pretrained_cfg["mean"] == [0.5]  # an edit takes effect
    for bad, fragment in (("{not json", "cannot read"), (json.dumps({**meta, "model_kwargs": [1, 2]}), "must be a mapping"),
                          (json.dumps({**meta, "model_kwargs": {**meta["model_kwargs"], "nope": 1}}), "cannot build")):
        (ckpt / "vitprune.json").write_text(bad)
        with pytest.raises(UserError, match=fragment):
            load_model(str(ckpt))


@pytest.mark.slow
def test_hybrid_vits_compress_and_export(tmp_path, capsys, fashion_dir):
    out = tmp_path / "h"
    rc = main(["compress", "--model", "random:vit_tiny_r_s16_p8_224", "--model-args",
               "img_size=32,num_classes=10,in_chans=1", "--data", "demo", *CHEAP, "--sparsity", "0.5", "--criterion", "magnitude",
               "--compensate", "lsq", "--latency-rounds", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["macs"]["pruned"] < report["macs"]["dense"] and report["onnx"]["parity_max_abs"] <= 1e-4


# ------------------------------------------------------------------------------------- options, OS
def test_recipes_with_duplicate_keys_nulls_folders_and_two_budgets(model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    for text, fragment in (("sparsity: 0.5\nsparsity: 0.7\n", "sets 'sparsity' twice"), ("batch-size: null\n", "is null"),
                           ("keep-topk: 5\n", "sets keep-topk and --sparsity is given too")):
        recipe.write_text(text)
        assert main(["compress", "--config", str(recipe), "--model", model_dir, "--sparsity", "0.5", "--out", str(tmp_path / "o")]) == 2
        assert fragment in _err(capsys)
    assert main(["compress", "--config", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder" in _err(capsys)


def test_os_errors_are_one_line_naming_the_path(model_dir, tmp_path, capsys, monkeypatch, fashion_dir):
    import errno

    import vitprune.files as files

    real = files.atomic_write_text

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(files, "atomic_write_text", full)
    assert main(_command("discover", model_dir, tmp_path / "o")) == 2
    err = _err(capsys)
    assert "No space left" in err and str(tmp_path / "o") in err
    monkeypatch.setattr(files, "atomic_write_text", real)
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone")
    assert main(_command("compress", model_dir, dangling)) == 2
    assert "dangling" in _err(capsys)


@pytest.mark.slow
def test_an_unwritable_data_cache_falls_back_to_memory(tmp_path, monkeypatch, fashion_dir):
    from vitprune.data import load_data

    monkeypatch.setenv("VITPRUNE_CACHE", "/proc/vitprune-cache")  # mkdir there fails even for root
    pools = load_data("demo")
    assert len(pools.calibration) == 60000 and pools.evaluation.ids()[0] == "test/0"


@pytest.mark.slow
def test_sigterm_is_reported_like_sigint(model_dir, tmp_path, fashion_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vitprune", *_command("discover", model_dir, out)[:-2], "--steps", "20",
                             "--max-rows", "1", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / PARTIAL).exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated" in last_line(err, "vitprune: terminated")
    assert (out / CONFIG).is_file() and not (out / PATHS).exists()


# ------------------------------------------------------------------------------------------- export
def test_export_checks_the_data_and_writes_the_preprocessing(model_dir, tmp_path, capsys, fashion_dir):
    from vitprune.export.onnx import read_metadata

    ckpt = tmp_path / "c"
    assert main(_command("compress", model_dir, ckpt)) == 0
    root = tmp_path / "three"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    assert main(["export", str(ckpt), "--data", f"imagefolder:{root}", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "has 3 classes but the model head has 10" in _err(capsys)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    meta = read_metadata(tmp_path / "m.onnx")
    assert json.loads(meta["vitprune.mean"]) == [0.286] and json.loads(meta["vitprune.std"]) == [0.353]
    assert json.loads(meta["vitprune.input_size"]) == [1, 28, 28] and json.loads(meta["vitprune.class_names"])[9] == "Ankle boot"
