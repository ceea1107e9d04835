"""Reference .rlt.jsonl import/export and crash-safe JSONL appends."""
from __future__ import annotations

import json
import os
import stat

import pytest

from vitprune.records import JsonlAppender, read_reference, write_reference


def _records(topk):
    return [{"id": f"x{i}", "label": i % 2, "path": [[i + j for j in range(topk)], [5] * topk], "score": 0.1 * i,
             "base_path": [[9] * topk, [8] * topk], "base_score": -0.5} for i in range(4)]


@pytest.mark.parametrize("topk", [1, 3])
def test_reference_roundtrip(tmp_path, topk):
    write_reference(_records(topk), tmp_path, prefix="imgnet_all", args={"ig_total_step": 7})
    assert sorted(p.name for p in tmp_path.glob("*.rlt.jsonl")) == ["imgnet_all-0.rlt.jsonl", "imgnet_all-1.rlt.jsonl"]
    back = read_reference(tmp_path)
    by_label = sorted(_records(topk), key=lambda r: r["label"])
    assert [r["path"] for r in back] == [r["path"] for r in by_label]
    assert [r["score"] for r in back] == pytest.approx([r["score"] for r in by_label])
    assert [r["id"] for r in back] == ["0/0", "0/1", "1/0", "1/1"]
    assert all(r["steps"] == 7 and r["topk"] == topk for r in back)


def test_reads_the_reference_producers_formats(tmp_path):
    batch = [{"ja": [[1, 2, 3]], "ja_score": [[0.5]], "base": [[4, 5, 6]], "base_score": [[0.1]]}] * 2
    (tmp_path / "p-3.rlt.jsonl").write_text(json.dumps(batch) + "\n")
    (tmp_path / "p-4.rlt.jsonl").write_text(json.dumps({"ja": [[1, 2], [3, 4], [5, 6]], "ja_score": [[0.2]],
                                                        "base": [[0, 0], [1, 1], [2, 2]], "base_score": [[0.0]]}) + "\n")
    recs = read_reference(tmp_path)
    assert [r["path"] for r in recs] == [[[1], [2], [3]]] * 2 + [[[1, 2], [3, 4], [5, 6]]]
    assert [r["label"] for r in recs] == [3, 3, 4]
    ip = tmp_path / "ip"
    ip.mkdir()
    (ip / "q-0.rlt.jsonl").write_text(json.dumps({"path": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]}) + "\n")
    assert [r["path"] for r in read_reference(ip)] == [[[1], [2], [3]]] * 2
    assert read_reference(ip)[0]["method"] == "influence-pattern"


def test_appender_keeps_whole_batches_only(tmp_path):
    path = tmp_path / "x.jsonl"
    with JsonlAppender(path, batch=2) as sink:
        sink.append({"id": str(i)} for i in range(5))
    with open(path, "a") as f:
        f.write('{"id": "torn')
    with JsonlAppender(path, batch=2) as sink:
        assert [r["id"] for r in sink.records] == ["0", "1", "2", "3"]
        sink.append([{"id": "4"}])
    assert path.read_text().splitlines() == [json.dumps({"id": str(i)}) for i in range(5)]


def test_output_dir_check(tmp_path):
    from vitprune.errors import UserError
    from vitprune.records import atomic_write_json, check_output_dir

    out = tmp_path / "run"
    settings = {"steps": 20, "topk": 5, "device": "cpu"}
    assert check_output_dir(out, "config.json", settings, what="discover run", force=False) is False  # nothing there
    out.mkdir()
    atomic_write_json(out / "config.json", settings)
    assert check_output_dir(out, "config.json", settings, what="discover run", force=False) is True
    assert check_output_dir(out, "config.json", {**settings, "device": "cuda"}, what="discover run", force=False,
                            ignore=("device",)) is True
    with pytest.raises(UserError, match=r"different settings \(device, topk\); pass --force"):
        check_output_dir(out, "config.json", {**settings, "topk": 3, "device": "cuda"}, what="discover run", force=False)
    assert check_output_dir(out, "config.json", {"other": 1}, what="discover run", force=True) is False
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="is not a vitprune sweep; pass --force"):
        check_output_dir(foreign, "sweep.json", settings, what="sweep", force=False)


def test_safetensors_files_get_the_permissions_of_a_new_file(tmp_path):
    """safetensors creates its files 0600; checkpoints and importance files are shared like any output."""
    import timm

    from vitprune.importance import ImportanceSums
    from vitprune.models import save_checkpoint

    mask = os.umask(0o022)
    try:
        model = timm.create_model("test_vit", pretrained=False, num_classes=2)
        weights = save_checkpoint(model, tmp_path / "ckpt", {"arch": "test_vit", "model_kwargs": {"num_classes": 2}})
        sums = ImportanceSums((4, 4))
        sums.save(tmp_path / "importance.safetensors", {})
    finally:
        os.umask(mask)
    for path in (weights, tmp_path / "importance.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
