"""Reference .rlt.jsonl import/export and crash-safe JSONL appends."""
from __future__ import annotations

import json
import os
import stat

import pytest

from vitprune.discovery.records import PathRecord, RunHeader, read_reference, write_reference
from vitprune.files import JsonlAppender


def _records(topk):
    return [PathRecord(id=f"x{i}", label=i % 2, target=i % 2, path=[[i + j for j in range(topk)], [5] * topk], score=0.1 * i,
                       base_path=[[9] * topk, [8] * topk], base_score=-0.5) for i in range(4)]


@pytest.mark.parametrize("topk", [1, 3])
def test_reference_roundtrip(tmp_path, topk):
    write_reference(_records(topk), tmp_path, prefix="imgnet_all", args={"ig_total_step": 7})
    assert sorted(p.name for p in tmp_path.glob("*.rlt.jsonl")) == ["imgnet_all-0.rlt.jsonl", "imgnet_all-1.rlt.jsonl"]
    back = read_reference(tmp_path)
    by_label = sorted(_records(topk), key=lambda r: r.label)
    assert [r.path for r in back] == [r.path for r in by_label]
    assert [r.score for r in back] == pytest.approx([r.score for r in by_label])
    assert [r.id for r in back] == ["0/0", "0/1", "1/0", "1/1"]
    assert all(r.steps == 7 and r.topk == topk for r in back)


def test_reads_the_reference_producers_formats(tmp_path):
    batch = [{"ja": [[1, 2, 3]], "ja_score": [[0.5]], "base": [[4, 5, 6]], "base_score": [[0.1]]}] * 2
    (tmp_path / "p-3.rlt.jsonl").write_text(json.dumps(batch) + "\n")
    (tmp_path / "p-4.rlt.jsonl").write_text(json.dumps({"ja": [[1, 2], [3, 4], [5, 6]], "ja_score": [[0.2]],
                                                        "base": [[0, 0], [1, 1], [2, 2]], "base_score": [[0.0]]}) + "\n")
    recs = read_reference(tmp_path)
    assert [r.path for r in recs] == [[[1], [2], [3]]] * 2 + [[[1, 2], [3, 4], [5, 6]]]
    assert [r.label for r in recs] == [3, 3, 4]
    ip = tmp_path / "ip"
    ip.mkdir()
    (ip / "q-0.rlt.jsonl").write_text(json.dumps({"path": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]}) + "\n")
    assert [r.path for r in read_reference(ip)] == [[[1], [2], [3]]] * 2
    assert read_reference(ip)[0].method == "influence-pattern"


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


def test_safetensors_files_get_the_permissions_of_a_new_file(tmp_path):
    """safetensors creates its files 0600; checkpoints and importance files are shared like any output."""
    import timm

    from vitprune.discovery.importance import ImportanceSums
    from vitprune.model.load import save_checkpoint

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


def test_path_record_json_round_trip_and_damaged_lines():
    from vitprune.errors import UserError

    rec = _records(2)[1]
    assert PathRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    old = {"id": "a", "label": 3, "path": [[1]], "score": 0.5}  # a reference import: no target, pred or prob
    assert PathRecord.from_json(old).target == 3
    for bad in ([1, 2], {"id": "a", "path": [[1]]}, {"id": "a", "label": 1, "path": [[1.5]]}, {"id": "a", "label": 1, "path": 3}):
        with pytest.raises(UserError, match="not a vitprune path record"):
            PathRecord.from_json(bad)


def test_run_header_round_trip_and_version_1_configs():
    v1 = {"model": "demo", "arch": None, "data": "demo", "device": "auto", "precision": "fp32", "per_class": 8, "classes": [0, 2],
          "steps": 20, "batch_size": 16, "max_rows": None, "pool": "calibration", "topk": 1, "method": "jas", "token_scope": "cls",
          "label": "truth", "objective": "prob", "model_source": {"spec": "demo", "arch": "vit_tiny_patch16_224"}, "depth": 2,
          "mlp_hidden": [8, 8], "class_names": ["a", "b", "c"], "num_images": 16, "vitprune_version": "0.1.0", "command": "discover"}
    header = RunHeader.from_json(v1)
    assert header.format == "vitprune.discover-run/1" and header.discovery.token_scope == "cls"
    assert header.model.widths == (8, 8) and header.data.classes == (0, 2) and header.data.num_images == 16
    again = RunHeader.from_json(header.to_json())
    assert again.discovery == header.discovery and again.model == header.model and again.data == header.data
