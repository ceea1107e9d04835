"""`vitprune discover`: records, resume after kill -9, overwrite protection, one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vitprune.app.cli import main
from vitprune.discovery.records import CONFIG, PARTIAL, PATHS, RunHeader, load_run
from vitprune.files import read_jsonl

from .helpers import save_tiny_fashion_model, last_line

ARGS = ["--data", "demo", "--per-class", "2", "--topk", "2", "--steps", "3", "--batch-size", "4", "--quiet"]
FIELDS = {"id", "label", "pred", "target", "prob", "method", "steps", "token_scope", "topk", "objective", "path", "score", "base_path",
          "base_score"}


@pytest.fixture(scope="module")
def full_run(model_dir, tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("full") / "run"
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(out)]) == 0
    return out


def test_records_and_config(full_run):
    records = read_jsonl(full_run / PATHS)
    assert len(records) == 20 and len({r["id"] for r in records}) == 20
    assert all(set(r) == FIELDS for r in records)
    assert all(len(r["path"]) == 3 and all(len(u) == 2 for u in r["path"]) for r in records)
    assert [r["label"] for r in records] == [c for c in range(10) for _ in range(2)]
    header = RunHeader.from_json(json.loads((full_run / CONFIG).read_text()))
    assert header.discovery.token_scope == "cls" and header.data.num_images == 20 and header.model.widths == (64, 64, 64)
    assert header.format == "vitprune.discover-run/2" and header.discovery.topk == 2 and header.data.per_class == 2
    assert not (full_run / PARTIAL).exists()


def test_existing_run_is_not_overwritten(full_run, model_dir, capsys):
    before = (full_run / PATHS).read_bytes()
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(full_run)]) == 0  # the same run: up to date
    assert (full_run / PATHS).read_bytes() == before
    changed = [a if a != "3" else "4" for a in ARGS]  # --steps 4
    assert main(["discover", "--model", model_dir, *changed, "--out", str(full_run), "--resume"]) == 2
    assert "different settings (discovery.steps)" in capsys.readouterr().err
    assert (full_run / PATHS).read_bytes() == before
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(full_run), "--resume"]) == 0


def test_resume_from_torn_partial_file_equals_full_run(full_run, model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / CONFIG).write_bytes((full_run / CONFIG).read_bytes())
    lines = (full_run / PATHS).read_text().splitlines(keepends=True)
    (out / PARTIAL).write_text("".join(lines[:6]) + lines[6][:40])  # 6 records (1.5 batches) + a torn line
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(out), "--resume"]) == 0
    assert (out / PATHS).read_text() == (full_run / PATHS).read_text()


@pytest.mark.slow
def test_kill_9_then_resume_equals_full_run(full_run, model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vitprune", "discover", "--model", model_dir, *ARGS, "--batch-size", "2", "--out", str(out)]
    full_args = [*ARGS, "--batch-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / PARTIAL).exists() and len((out / PARTIAL).read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / PATHS).exists()
    assert main(["discover", "--model", model_dir, *full_args, "--out", str(out), "--resume"]) == 0
    reference = tmp_path / "uninterrupted"
    assert main(["discover", "--model", model_dir, *full_args, "--out", str(reference)]) == 0
    assert (out / PATHS).read_text() == (reference / PATHS).read_text()
    resumed, uninterrupted = load_run(out).importance, load_run(reference).importance  # the dense importance too
    assert resumed.count == uninterrupted.count
    assert all(torch.equal(a, b) for c in resumed.per_class for s in resumed.per_class[c]
               for a, b in zip(resumed.per_class[c][s], uninterrupted.per_class[c][s]))


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--model", "/no/such/model.pth"], "does not exist"),
        (["--topk", "0"], "--topk"),
        (["--topk", "65"], "--topk"),
        (["--steps", "0"], "--steps"),
        (["--data", "imagefolder:/no/such/folder"], "does not exist"),
        (["--classes", "12"], "out of range"),
        (["--classes", "x"], "--classes"),
    ],
)
def test_bad_input_one_line_exit_2_no_files(model_dir, tmp_path, capsys, extra, fragment, fashion_dir):
    out = tmp_path / "run"
    assert main(["discover", "--model", model_dir, *ARGS, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in last_line(err)
    assert not out.exists()


def test_model_data_class_mismatch(tmp_path, capsys, fashion_dir):
    five = save_tiny_fashion_model(tmp_path / "five", num_classes=5)
    assert main(["discover", "--model", str(five), *ARGS, "--out", str(tmp_path / "run")]) == 2
    assert "has 10 classes but the model head has 5" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_entry_point_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vitprune", "discover", "--model", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "does not exist" in last_line(proc.stderr)
