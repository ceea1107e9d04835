"""Beyond one-shot: recovery by distillation (``vitprune.recovery``), class-specialised models (``--specialize``) and
the paired top-1 differences with their intervals (``vitprune.accuracy.paired_difference``)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

import vitprune
from vitprune.accuracy import EvalResult, paired_difference
from vitprune.app.cli import main
from vitprune.data import TensorPool
from vitprune.recovery import STATE, RecoverySettings, recover

from .helpers import tiny_vit


# ---------------------------------------------------------------------------------- paired differences
def _result(hits: list[int], labels: list[int]) -> EvalResult:
    h = torch.tensor(hits, dtype=torch.bool)
    per_class = []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        per_class.append({"class": c, "name": f"c{c}", "n": len(idx), "top1": sum(hits[i] for i in idx) / len(idx),
                          "mean_true_prob": None})
    return EvalResult(len(hits), sum(hits) / len(hits), 0.0, per_class, h)


def test_paired_difference_on_a_toy_case():
    # 10 images, classes 0 (first 5) and 1 (last 5); dense right on 8, pruned loses images 0, 1 and gains image 9
    labels = [0] * 5 + [1] * 5
    dense = _result([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], labels)
    pruned = _result([0, 0, 1, 1, 1, 1, 1, 1, 0, 1], labels)
    d = paired_difference(dense, pruned)
    assert d["discordant"] == {"lost": 2, "gained": 1}
    assert d["top1_diff"] == pytest.approx(-0.1)
    se = math.sqrt(3 / 100 - 1 / 1000)  # (b + c) / n^2 - (c - b)^2 / n^3
    assert d["ci95"] == pytest.approx([-0.1 - 1.959964 * se, -0.1 + 1.959964 * se])
    assert [c["diff"] for c in d["per_class"]] == pytest.approx([-0.4, 0.2])
    assert d["worst_class"]["class"] == 0 and d["worst_class"]["before"] == 1.0 and d["worst_class"]["after"] == pytest.approx(0.6)


def test_identical_predictions_have_a_zero_width_interval():
    labels = [0, 1, 0, 1]
    a = _result([1, 0, 1, 1], labels)
    d = paired_difference(a, _result([1, 0, 1, 1], labels))
    assert d["top1_diff"] == 0 and d["ci95"] == [0.0, 0.0] and d["worst_class"]["diff"] == 0


# ---------------------------------------------------------------------------------- recovery
def _pool(n: int = 96, seed: int = 0) -> TensorPool:
    gen = torch.Generator().manual_seed(seed)
    return TensorPool(TensorDataset(torch.randn(n, 3, 32, 32, generator=gen), torch.arange(n) % 5), "train")


SETTINGS = RecoverySettings(epochs=1.5, lr=1e-3, batch_size=16, checks_per_epoch=2, seed=3)


def _selection():
    gen = torch.Generator().manual_seed(9)
    return torch.randn(20, 3, 32, 32, generator=gen), torch.arange(20) % 5


def test_recovery_resumes_after_a_kill_to_the_same_weights(tmp_path, monkeypatch):
    import vitprune.recovery as rec

    teacher = tiny_vit(seed=0)
    uninterrupted = tiny_vit(seed=1).train()
    recover(uninterrupted, teacher, _pool(), None, SETTINGS, selection=_selection(), state=tmp_path / "a")

    class Killed(BaseException):
        pass

    real_save = rec._save_state
    saves = []

    def save_then_die(folder, identity, step, *rest):
        real_save(folder, identity, step, *rest)
        saves.append(step)
        if len(saves) == 2:
            raise Killed  # as kill -9 right after the second check's state is on disk

    student = tiny_vit(seed=1).train()
    monkeypatch.setattr(rec, "_save_state", save_then_die)
    with pytest.raises(Killed):
        recover(student, teacher, _pool(), None, SETTINGS, selection=_selection(), state=tmp_path / "b")
    monkeypatch.setattr(rec, "_save_state", real_save)
    assert (tmp_path / "b" / STATE).is_file()
    resumed = tiny_vit(seed=1).train()  # a new process: the starting weights again, then the state on disk
    result = recover(resumed, teacher, _pool(), None, SETTINGS, selection=_selection(), state=tmp_path / "b")
    assert result.resumed_at_step == saves[1] > 0
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("features", [0.0, 1.0])
def test_recovery_keeps_its_best_check_and_never_trains_on_selection_images(features):
    from dataclasses import replace

    teacher = tiny_vit(seed=0)
    student = tiny_vit(seed=1)
    # with block-output distillation, the checks between epochs (20 selection images, batches of 16) must not leave
    # their block outputs in the feature loss of the next step
    result = recover(student, teacher, _pool(), None, replace(SETTINGS, features=features), selection=_selection())
    assert len(result.history) == 3 and result.steps == 9  # 96 images / 16 = 6 steps per epoch, checks at 3, 6, 9
    best = max(h["top1_selection"] for h in result.history)
    assert result.best["top1_selection"] == best
    images, labels = _selection()
    with torch.no_grad():
        top1 = float((student(images).argmax(-1) == labels).float().mean())
    assert top1 == pytest.approx(best)  # the weights returned are the best check's


def test_a_changed_start_does_not_resume_another_recovery(tmp_path):
    teacher = tiny_vit(seed=0)
    recover(tiny_vit(seed=1), teacher, _pool(), None, SETTINGS, state=tmp_path)
    other = recover(tiny_vit(seed=2), teacher, _pool(), None, SETTINGS, state=tmp_path)
    assert other.resumed_at_step == 0


# ---------------------------------------------------------------------------------- the stage, as users run it
FAST = ["--data", "demo", "--per-class", "2", "--steps", "2", "--eval-per-class", "20", "--quiet"]


def test_compress_recovers_and_reports_one_shot_and_recovered(model_dir, tmp_path):
    out = tmp_path / "o"
    assert main(["compress", "--model", model_dir, "--sparsity", "0.5", *FAST, "--finetune-epochs", "0.01",
                 "--finetune-selection-per-class", "5", "--no-export", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    ft = report["finetune"]
    assert ft["before"]["top1"] is not None and ft["after"]["top1"] == report["accuracy"]["pruned"]["top1"]
    assert ft["history"] and ft["best"] in ft["history"]
    assert ft["images"] == 60_000 - 10 * 5  # the training split less the held-out selection images
    md = (out / "report.md").read_text()
    assert "one-shot" in md and "recovered" in md
    assert not (out / "recovery").exists()  # the resumable state goes once the result is published
    assert "recovery" not in json.loads((out / ".vitprune" / "manifest.json").read_text())["files"]


# ---------------------------------------------------------------------------------- specialisation
@pytest.mark.slow
def test_specialize_makes_a_k_class_model_that_exports_and_reloads(model_dir, tmp_path):
    out = tmp_path / "s"
    assert main(["compress", "--model", model_dir, "--specialize", "6,0,2", "--sparsity", "0.5", *FAST, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    names = ["T-shirt/top", "Pullover", "Shirt"]  # class-id order, whatever order they were given in
    assert [c["name"] for c in report["accuracy"]["dense"]["per_class"]] == names
    assert report["accuracy"]["dense"]["n"] == 60  # 20 evaluation images of each of the 3 classes
    assert report["onnx"]["parity_max_abs"] <= 1e-4
    meta = json.loads((out / "vitprune.json").read_text())
    assert meta["class_names"] == names
    back = vitprune.load_model(str(out))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert back(x).shape == (2, 3)
    import onnx

    model = onnx.load(str(out / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["vitprune.class_names"]) == names
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3


def test_specialize_compares_with_the_dense_model_on_the_same_logits(model_dir):
    """Before pruning (sparsity 0) the specialised model is the dense model's rows: the same top-1, per class too."""
    dense = vitprune.load_model(model_dir)
    result = vitprune.compress(dense, "demo", specialize=(1, 7), sparsity=0.0, criterion="magnitude", per_class=2,
                               eval_per_class=30, quiet=True)
    acc = result.report.accuracy
    assert acc["dense"].n == 60 and acc["pruned"].top1 == acc["dense"].top1
    assert result.model(torch.randn(1, 1, 28, 28)).shape == (1, 2)
    assert result.report.comparison["ci95"] == [0.0, 0.0]


@pytest.mark.parametrize("argv,message", [
    (["--specialize", "3"], "two or more different class ids"),
    (["--specialize", "3,3"], "two or more different class ids"),
    (["--specialize", "0,12"], "class 12"),
    (["--specialize", "0,1", "--classes", "0,2"], "drop --classes"),
    (["--finetune-epochs", "-1"], "--finetune-epochs"),
    (["--finetune-features", "nan"], "--finetune-features"),
])
def test_specialize_and_recovery_refusals(model_dir, tmp_path, capsys, argv, message):
    from .helpers import last_line

    code = main(["compress", "--model", model_dir, "--sparsity", "0.5", *FAST, *argv, "--out", str(tmp_path / "x")])
    assert code == 2
    assert message in last_line(capsys.readouterr().err)


def test_evaluate_sweeps_a_specialist_with_recovery(model_dir, tmp_path):
    out = tmp_path / "e"
    assert main(["evaluate", "--model", model_dir, "--specialize", "0,2,6", "--sparsity", "0.5", "--criterion", "magnitude",
                 "--compensate", "lsq", *FAST, "--finetune-epochs", "0.02", "--finetune-selection-per-class", "5",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    points = results["points"]
    assert results["settings"]["specialize"] == [0, 2, 6]
    dense = next(p for p in points if p["criterion"] == "dense")
    pruned = next(p for p in points if p["criterion"] == "magnitude")
    for p in (dense, pruned):  # scored on the 60 evaluation images of the 3 classes
        assert (p["top1"] * 60) == pytest.approx(round(p["top1"] * 60))
    assert pruned["top1_oneshot"] is not None and pruned["finetune_epochs"] == 0.02
    lo, hi = pruned["top1_diff_ci95"]
    assert lo <= pruned["top1"] - dense["top1"] <= hi and pruned["worst_class_drop"] is not None


@pytest.mark.slow
def test_a_killed_compress_recovery_resumes_to_the_weights_of_an_uninterrupted_one(model_dir, tmp_path):
    """kill -9 once the recovery's state is on disk (its first check, half an epoch in), rerun: the same weights as a
    run never killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    argv = ["compress", "--model", model_dir, "--sparsity", "0.5", *FAST, "--finetune-epochs", "0.6",
            "--finetune-selection-per-class", "5", "--no-export"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # every run alike: the thread count may move a sum's last bit
    command = [sys.executable, "-m", "vitprune", *argv, "--out"]
    assert subprocess.run([*command, str(whole)], env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen([*command, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "recovery" / STATE
    while not state.exists():  # events, not the clock
        assert proc.poll() is None, "the run ended before its recovery saved a state"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()
    assert subprocess.run([*command, str(killed)], env=env, capture_output=True).returncode == 0
    resumed = json.loads((killed / "report.json").read_text())["finetune"]["resumed_at_step"]
    assert resumed > 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
