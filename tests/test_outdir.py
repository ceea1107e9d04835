"""Output folders: vitprune deletes or overwrites only what it wrote, publishes results whole, and never writes over its inputs."""
from __future__ import annotations

import json

import pytest

from vitprune.errors import UserError
from vitprune.files import atomic_write_json
from vitprune.outdir import META, OutputFolder, check_inputs

SETTINGS = {"steps": 20, "topk": 5, "device": "cpu"}


def _result(out, settings=SETTINGS, files=("a.txt",)):
    """A published result: settings file + files, as a run would leave it."""
    with OutputFolder(out, "compress") as folder:
        folder.claim("compress.json", settings, what="compress result", force=True)
        for name in files:
            (folder.staging / name).write_text(name)
        atomic_write_json(folder.staging / "compress.json", settings)
        folder.publish()


def test_claims_same_other_and_forced_results(tmp_path):
    out = tmp_path / "run"
    _result(out)
    with OutputFolder(out, "compress") as folder:
        assert folder.claim("compress.json", SETTINGS, what="compress result", force=False) is True
        assert folder.claim("compress.json", {**SETTINGS, "device": "cuda"}, what="x", force=False, ignore=("device",)) is True
        with pytest.raises(UserError, match=r"different settings \(device, topk\); pass --force"):
            folder.claim("compress.json", {**SETTINGS, "topk": 3, "device": "cuda"}, what="compress result", force=False)
        assert (out / "a.txt").read_text() == "a.txt"
        assert folder.claim("compress.json", {"other": 1}, what="compress result", force=True) is False
        # force replaces, never destroys first: the old result stays until the new one is published
        assert (out / "a.txt").exists() and json.loads((out / "compress.json").read_text()) == SETTINGS
        (folder.staging / "b.txt").write_text("new")
        atomic_write_json(folder.staging / "compress.json", {"other": 1})
        folder.publish()
    assert not (out / "a.txt").exists() and (out / "b.txt").read_text() == "new"  # what the old result had alone is gone
    assert json.loads((out / "compress.json").read_text()) == {"other": 1} and not (out / META / "next").exists()


def test_foreign_entries_are_never_removed_even_with_force(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")
    (out / "figures").mkdir()
    for force in (False, True):
        with pytest.raises(UserError, match=r"entries vitprune did not write \(figures, thesis.txt\)"):
            with OutputFolder(out, "compress") as folder:
                folder.claim("compress.json", SETTINGS, what="compress result", force=force)
    assert (out / "thesis.txt").read_text() == "three years of work" and (out / "figures").is_dir()
    assert not (out / META).exists()  # a refused run leaves the folder as it was


def test_a_foreign_file_next_to_a_result_blocks_force_and_survives(tmp_path):
    out = tmp_path / "run"
    _result(out)
    (out / "notes.md").write_text("mine")
    with pytest.raises(UserError, match="notes.md"):
        with OutputFolder(out, "compress") as folder:
            folder.claim("compress.json", {"other": 1}, what="compress result", force=True)
    assert (out / "notes.md").read_text() == "mine" and (out / "a.txt").exists()


def test_a_failed_run_leaves_the_folder_as_it_was(tmp_path):
    fresh = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError):
        with OutputFolder(fresh, "compress") as folder:
            folder.claim("compress.json", SETTINGS, what="compress result", force=False)
            (folder.staging / "model.onnx").write_text("half")
            raise RuntimeError("late failure")
    assert not (tmp_path / "new").exists()  # created by the run, nothing kept: removed again
    out = tmp_path / "run"
    _result(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RuntimeError):
        with OutputFolder(out, "compress") as folder:
            folder.claim("compress.json", SETTINGS, what="compress result", force=False)
            (folder.staging / "a.txt").write_text("new")
            raise RuntimeError("late failure")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list((out / META).glob("staging-*"))


def test_resumable_state_survives_a_failed_run(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with OutputFolder(out, "compress") as folder:
            folder.claim("compress.json", SETTINGS, what="compress result", force=False)
            folder.own("paths")
            (out / "paths").mkdir()
            (out / "paths" / "config.json").write_text("{}")
            raise RuntimeError("infeasible budget found after discovery")
    assert (out / "paths" / "config.json").exists() and not (out / "compress.json").exists()
    with OutputFolder(out, "compress") as folder:  # the corrected rerun: no --force needed, the state is vitprune's
        assert folder.claim("compress.json", {"other": 1}, what="compress result", force=False) is False
        assert folder.foreign() == []


def test_a_kill_during_publish_leaves_only_owned_entries(tmp_path):
    out = tmp_path / "run"
    _result(out)
    manifest = json.loads((out / META / "manifest.json").read_text())
    manifest["pending"] = ["model.onnx"]  # a kill after the manifest listed it, before or after the rename
    (out / META / "manifest.json").write_text(json.dumps(manifest))
    (out / "model.onnx").write_text("published")
    with OutputFolder(out, "compress") as folder:
        assert folder.foreign() == [] and "model.onnx" in folder.owned_names()


def test_folders_of_vitprune_0_1_are_adopted_by_their_whole_set_of_files(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    every = ("compress.json", "mask.json", "model.safetensors", "vitprune.json", "report.json", "report.md")
    for name in every[:3]:
        (out / name).write_text("{}")
    with OutputFolder(out, "compress") as folder:  # one common name (or three) does not make a folder vitprune's
        assert folder.owned_names() == [] and folder.foreign() == sorted(every[:3])
    for name in every[3:]:
        (out / name).write_text("{}")
    (out / "paths").mkdir()
    (out / "mine.txt").write_text("x")
    with OutputFolder(out, "compress") as folder:
        assert folder.foreign() == ["mine.txt"]
        assert set(folder.owned_names()) == {*every, "paths"}


@pytest.mark.parametrize("kind", ["file", "dangling-link"])
def test_outputs_that_cannot_be_folders(tmp_path, kind):
    out = tmp_path / "x"
    if kind == "file":
        out.write_text("data")
    else:
        out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is a file" if kind == "file" else "dangling"):
        with OutputFolder(out, "compress"):
            pass
    assert out.is_symlink() or out.read_text() == "data"


def test_outputs_never_overlap_inputs(tmp_path):
    data = tmp_path / "images"
    (data / "cat").mkdir(parents=True)
    for out in (data, data / "out", tmp_path):
        with pytest.raises(UserError, match="overlaps the input"):
            check_inputs(out, [data])
    check_inputs(tmp_path / "elsewhere", [data])
    check_inputs(data / "analysis" / "lens", [data], inside_ok=[data / "analysis"])
