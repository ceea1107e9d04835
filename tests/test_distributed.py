"""Multi-process discovery (torchrun, CPU/gloo): merged records equal a 1-process run; shards resume."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from vitprune.discovery.run import shard_file
from vitprune.discovery.records import CONFIG, PATHS

pytestmark = pytest.mark.slow  # every test launches vitprune in subprocesses (torchrun)

from .helpers import save_tiny_fashion_model

ARGS = ["--data", "demo", "--per-class", "3", "--topk", "2", "--steps", "3", "--batch-size", "4", "--quiet", "--device", "cpu"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(cmd, threads="1"):
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion_dir):
    root = tmp_path_factory.mktemp("dist")
    model = str(save_tiny_fashion_model(root / "tiny"))
    _run([sys.executable, "-m", "vitprune", "discover", "--model", model, *ARGS, "--out", str(root / "one")])
    _run([*TORCHRUN, "-m", "vitprune", "discover", "--model", model, *ARGS, "--out", str(root / "two")])
    return root, model


def test_two_processes_equal_one(runs):
    root, _ = runs
    # same per-process thread count -> same reduction order -> byte-identical records
    assert (root / "two" / PATHS).read_text() == (root / "one" / PATHS).read_text()
    assert json.loads((root / "two" / CONFIG).read_text()) == json.loads((root / "one" / CONFIG).read_text())
    assert not list((root / "two").glob("paths.partial*"))


def test_interrupted_shard_resumes_to_the_same_result(runs, tmp_path):
    root, model = runs
    out = tmp_path / "two"
    out.mkdir()
    shutil.copy(root / "two" / CONFIG, out / CONFIG)
    lines = (root / "one" / PATHS).read_text().splitlines(keepends=True)
    batches = [lines[i : i + 4] for i in range(0, len(lines), 4)]
    for rank in (0, 1):
        mine = [ln for k, b in enumerate(batches) if k % 2 == rank for ln in b]
        if rank == 1:  # rank 1 was killed: two whole batches missing and a torn line
            mine = mine[:-8] + [mine[-8][:25]]
        (out / shard_file(rank, 2)).write_text("".join(mine))
    _run([*TORCHRUN, "-m", "vitprune", "discover", "--model", model, *ARGS, "--out", str(out), "--resume"])
    assert (out / PATHS).read_text() == (root / "one" / PATHS).read_text()


def test_resume_with_another_process_count_is_refused(runs, tmp_path, capsys):
    from vitprune.app.cli import main

    root, model = runs
    out = tmp_path / "x"
    out.mkdir()
    shutil.copy(root / "two" / CONFIG, out / CONFIG)
    (out / shard_file(0, 2)).write_text("")
    assert main(["discover", "--model", model, *ARGS, "--out", str(out), "--resume"]) == 2
    assert "different number of processes" in capsys.readouterr().err


def test_two_process_compress_counts_every_image_once(runs, tmp_path):
    root, model = runs
    common = ["compress", "--model", model, "--data", "demo", "--keep-topk", "2", "--per-class", "3", "--steps", "3",
              "--batch-size", "4", "--eval-per-class", "7", "--no-export", "--quiet", "--device", "cpu"]
    _run([sys.executable, "-m", "vitprune", *common, "--out", str(tmp_path / "one")])
    _run([*TORCHRUN, "-m", "vitprune", *common, "--out", str(tmp_path / "two")])
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["accuracy"]["dense"]["n"] == one["accuracy"]["dense"]["n"] == 70
    assert two["mask"] == one["mask"]
    for model_name in ("dense", "pruned"):
        assert two["accuracy"][model_name]["top1"] == one["accuracy"][model_name]["top1"]
        assert two["accuracy"][model_name]["mean_true_prob"] == pytest.approx(one["accuracy"][model_name]["mean_true_prob"], rel=1e-6)


def test_two_process_sweep_equals_one(runs, tmp_path):
    root, model = runs
    common = ["evaluate", "--model", model, "--data", "demo", "--sparsities", "0.5", "--criteria", "jas,magnitude,random",
              "--seeds", "0,1", "--compensate", "none,mean,lsq", "--per-class", "2", "--steps", "2", "--batch-size", "4",
              "--eval-per-class", "30", "--quiet", "--device", "cpu"]
    _run([sys.executable, "-m", "vitprune", *common, "--out", str(tmp_path / "one")])
    _run([*TORCHRUN, "-m", "vitprune", *common, "--out", str(tmp_path / "two")])
    one = json.loads((tmp_path / "one" / "results.json").read_text())["points"]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["points"]
    assert [(p["criterion"], p["compensate"], p["seed"], p["kept"]) for p in two] == [
        (p["criterion"], p["compensate"], p["seed"], p["kept"]) for p in one]
    assert [p["top1"] for p in two] == [p["top1"] for p in one]  # 300 images, each counted once
