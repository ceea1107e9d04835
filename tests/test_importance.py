"""Dense path importance: per-class sums of the greedy scores of every unit, equal to a literal
per-image recomputation, batch-invariant, resumable with the run, refused where it is missing."""
from __future__ import annotations


import pytest
import torch

from vitprune.discovery.finder import PathFinder
from vitprune.discovery.settings import DiscoverySettings
from vitprune.app.cli import main
from vitprune.discovery.importance import IMPORTANCE, ImportanceLog, ImportanceSums
from vitprune.discovery.records import PARTIAL, PATHS, load_run
from vitprune.files import read_jsonl

from .helpers import tiny_images, tiny_vit, last_line
from .literal_jas import literal_jas

ARGS = ["--data", "demo", "--per-class", "2", "--topk", "2", "--steps", "3", "--batch-size", "4", "--quiet"]


def _sums(model, x, y, batch, **cfg) -> ImportanceSums:
    finder = PathFinder(model, DiscoverySettings(**cfg))
    sums = ImportanceSums(tuple(b.mlp.fc2.in_features for b in model.blocks))
    for s in range(0, len(x), batch):
        found = finder.find_batch(x[s : s + batch], y[s : s + batch])
        sums.add([r.target for r in found.records], found.step_scores, found.step_own)
    return sums


def _assert_sums_close(a: ImportanceSums, b: ImportanceSums, rel=1e-9):
    assert a.count == b.count and sorted(a.per_class) == sorted(b.per_class)
    for c in a.per_class:
        for stat in ("sum", "abs", "norm", "ig"):
            for u, v in zip(a.per_class[c][stat], b.per_class[c][stat]):
                assert torch.allclose(u, v, rtol=rel, atol=1e-14), (c, stat)


@pytest.mark.parametrize("objective", ["prob", "kl"])
def test_sums_equal_literal_per_image_recomputation(objective):
    model = tiny_vit(dtype=torch.float64)
    x, y = tiny_images(5, dtype=torch.float64), torch.tensor([0, 1, 0, 2, 1])
    fast = _sums(model, x, y, batch=5, topk=2, steps=3, objective=objective)
    slow = literal_jas(model, x, y, topk=2, steps=3, tokens=slice(0, 1), objective=objective)
    want = ImportanceSums(fast.widths)
    for c, rec in zip(y.tolist(), slow):
        acc = want._class(c)
        for b, s in enumerate(rec["step_scores"]):
            acc["sum"][b] += s
            acc["abs"][b] += s.abs()
            acc["norm"][b] += s / s.abs().sum()
            acc["ig"][b] += rec["step_own"][b].abs()
        want.count[c] += 1
    _assert_sums_close(fast, want, rel=1e-6)
    balanced = fast.class_balanced("abs")
    for b in range(3):
        per_class = [want.per_class[c]["abs"][b] / want.count[c] for c in (0, 1, 2)]
        assert torch.allclose(balanced[b], torch.stack(per_class).mean(0), rtol=1e-6)


def test_batch_1_and_batch_7_agree():
    model = tiny_vit(dtype=torch.float64)
    x, y = tiny_images(7, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    _assert_sums_close(_sums(model, x, y, batch=7, topk=2, steps=4, token_scope="all"),
                       _sums(model, x, y, batch=1, topk=2, steps=4, token_scope="all"))


def test_class_topk_ranks_by_class_mean():
    sums = ImportanceSums((4, 3))
    scores = [torch.tensor([[1.0, 3, 2, 0], [1, 3, 2, 0], [5, 0, 0, 1]]), torch.tensor([[0.0, 1, 2]] * 3)]
    sums.add([0, 0, 1], scores, [-s for s in scores])
    assert sums.class_topk(1, "ig") == {0: [[1], [2]], 1: [[0], [2]]}
    assert sums.class_topk(2, "mean") == {0: [[1, 2], [1, 2]], 1: [[0, 3], [1, 2]]}


def test_log_commit_survives_uncommitted_files(tmp_path):
    log = ImportanceLog(tmp_path / "imp", (3, 2))
    touched = log.sums.add([1], [torch.ones(1, 3), torch.ones(1, 2)], [torch.ones(1, 3), torch.ones(1, 2)])
    log.commit(touched, 4)
    (tmp_path / "imp" / "class-1-r8.safetensors").write_bytes(b"torn")  # a kill before the next manifest
    again = ImportanceLog(tmp_path / "imp", (3, 2))
    assert again.records == 4 and again.sums.count == {1: 1}
    assert sorted(p.name for p in (tmp_path / "imp").iterdir()) == ["class-1-r4.safetensors", "state.json"]


def test_discover_writes_importance_next_to_paths(model_dir, tmp_path, fashion_dir):
    out = tmp_path / "run"
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(out)]) == 0
    sums, meta = ImportanceSums.load(out / IMPORTANCE)
    records = read_jsonl(out / PATHS)
    assert sums.images == len(records) == 20 and sums.count == {c: 2 for c in range(10)}
    assert meta["objective"] == "prob" and meta["token_scope"] == "cls" and meta["num_images"] == 20
    assert not list(out.glob("importance.partial*"))
    ip = tmp_path / "ip"
    assert main(["discover", "--model", model_dir, *ARGS, "--method", "influence-pattern", "--out", str(ip)]) == 0
    assert load_run(ip).importance is None and not (ip / IMPORTANCE).exists()


def test_crash_between_records_and_commit_resumes_to_the_same_sums(model_dir, tmp_path, fashion_dir, monkeypatch):
    reference = tmp_path / "ref"
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(reference)]) == 0
    calls = {"n": 0}
    real = ImportanceLog.commit

    def flaky(self, touched, records):
        calls["n"] += 1
        if calls["n"] == 3:  # batch 3's records are on disk, its importance is not
            raise KeyboardInterrupt
        real(self, touched, records)

    monkeypatch.setattr(ImportanceLog, "commit", flaky)
    out = tmp_path / "run"
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(out)]) == 130
    assert len(read_jsonl(out / PARTIAL)) == 12
    monkeypatch.setattr(ImportanceLog, "commit", real)
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(out), "--resume"]) == 0
    assert (out / PATHS).read_text() == (reference / PATHS).read_text()
    _assert_sums_close(load_run(out).importance, load_run(reference).importance, rel=0)


def test_criterion_jas_needs_a_run_with_importance(model_dir, tmp_path, capsys, fashion_dir):
    ip = tmp_path / "ip"
    assert main(["discover", "--model", model_dir, *ARGS, "--method", "influence-pattern", "--out", str(ip)]) == 0
    capsys.readouterr()
    rc = main(["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", "--sparsity", "0.5", "--criterion", "jas",
               "--compensate", "none", "--paths", str(ip), "--no-export", "--quiet", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    err = last_line(err)
    assert rc == 2 and "dense path importance" in err and "vitprune discover" in err
